"""Writing a suite's results: ``macro.json``, ``macro.md`` (the targets, then every
scenario's table) and ``macro.png`` (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.macro.common import Row
from bench.macro.targets import Results, Verdict, judge, others

#: the metrics shown per scenario (all are in the JSON)
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "throughput": [
        ("MBps", "MB/s"),
        ("msg_per_s", "segments/s"),
        ("server_cpu_s_per_GiB", "server CPU s/GiB"),
        ("server_rss_peak_MB", "server RSS MB"),
        ("loadgen_cpu_s", "loadgen CPU s"),
    ],
    "fin": [("fin_ms", "fin ms"), ("upload_MBps", "upload MB/s")],
    "scale": [
        ("errors", "errors"),
        ("exported", "exported"),
        ("listed", "listed by API"),
        ("reconnects", "reconnects"),
        ("ramp_s", "ramp s"),
        ("files_per_s", "files/s"),
        ("rss_before_MB", "RSS before MB"),
        ("rss_idle_MB", "RSS idle MB"),
        ("idle_conn_KiB", "KiB/idle conn"),
        ("server_rss_peak_MB", "RSS peak MB"),
        ("server_cpu_s", "server CPU s"),
    ],
    "stalled": [
        ("stalled", "stalled"),
        ("rss_before_MB", "RSS before MB"),
        ("growth_MB", "RSS growth MB"),
        ("per_stalled_MiB", "MiB/stalled conn"),
        ("growth_peak_MB", "peak growth MB"),
        ("unread_MB", "unread in sockets MB"),
        ("closed_by_server", "closed by server"),
        ("honest_ok", "honest upload ok"),
        ("honest_s", "honest upload s"),
    ],
    "churn": [
        ("MBps", "MB/s"),
        ("drops", "drops"),
        ("resent", "resent segs"),
        ("resume_ms", "drop→ack ms"),
        ("errors", "errors"),
        ("server_cpu_s_per_GiB", "server CPU s/GiB"),
    ],
    "restart": [
        ("restart_s", "restart s"),
        ("reread_MiB", "re-read MiB"),
        ("fin_ms", "fin ms"),
        ("recovery_s", "recovery s"),
        ("kill_to_all_resumed_s", "kill→all resumed s"),
        ("resume_ms_p99", "resume p99 ms"),
    ],
    "relay": [
        ("msg_per_s", "messages (or segments)/s"),
        ("MBps", "MB/s"),
        ("delivered", "delivered"),
        ("server_cpu_us_per_msg", "server CPU µs/msg"),
        ("server_cpu_s_per_GiB", "server CPU s/GiB"),
        ("server_rss_peak_MB", "server RSS MB"),
    ],
}
HEADLINE = {
    "throughput": "MBps",
    "fin": "fin_ms",
    "scale": "idle_conn_KiB",
    "stalled": "growth_MB",
    "churn": "MBps",
    "restart": "kill_to_all_resumed_s",
    "relay": "msg_per_s",
}


def _cell(row: Row, metric: str) -> str:
    s = row.metric(metric)
    if not s:
        return "—"
    return f"{_num(s['median'], 4)} ({_num(s['min'], 3)}–{_num(s['max'], 3)})"


def _num(value: float, digits: int) -> str:
    return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def scenario_table(scenario: str, rows: list[Row]) -> str:
    cols = COLUMNS[scenario]
    header = ["case", "target", *[c[1] for c in cols], "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        if r.scenario != scenario:
            continue
        runs = f"{len(r.runs)}" + (f" ({len(r.errors)} failed)" if r.errors else "")
        cells = [r.case, r.target, *[_cell(r, m) for m, _ in cols], runs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def process_table(rows: list[Row], case: str = "64 KiB segments, 8 uploaders") -> str:
    """CPU seconds and peak RSS of each server process (medians over the repetitions)."""
    lines = ["| target | process | CPU s | peak RSS MB |", "| --- | --- | --- | --- |"]
    for r in rows:
        if r.scenario != "throughput" or r.case != case or not r.runs:
            continue
        roles = sorted({k.rsplit(".", 1)[0] for k in r.runs[0] if k.endswith(".cpu_s")})
        for role in roles:
            cpu = r.median(f"{role}.cpu_s")
            rss = r.median(f"{role}.rss_peak_MB")
            lines.append(f"| {r.target} | {role} | {cpu or 0:.3g} | {rss or 0:.4g} |")
    return "\n".join(lines) + "\n"


def quick_line(rows: list[Row]) -> str:
    """``ftserver X MB/s, mosquitto Y MB/s, naive Z MB/s, ratios X/Y X/Z`` (64 KiB × 8)."""
    res = Results(rows, {})
    case = "64 KiB segments, 8 uploaders"
    x = res.med("throughput", "ftserver", "MBps", case) or 0.0
    y = res.med("throughput", "mosquitto", "MBps", case) or 0.0
    z = res.med("throughput", "naive", "MBps", case) or 0.0
    rx = f"{x / y:.2f}" if y else "n/a"
    rz = f"{x / z:.2f}" if z else "n/a"
    return f"ftserver {x:.0f} MB/s, mosquitto {y:.0f} MB/s, naive {z:.0f} MB/s, ratios {rx} {rz}"


def verdict_table(verdicts: list[Verdict], *, numbered: bool = True) -> list[str]:
    header = ["#"] * numbered + ["target", "ftserver", "baseline", "ratio", "goal", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for v in verdicts:
        cells = v.cells() if numbered else v.cells()[1:]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(rows: list[Row], floors: dict[str, float], meta: dict[str, Any]) -> str:
    out = ["# ftserver macro benchmarks", ""]
    out.append(
        f"{meta['when']} · {'quick' if meta['quick'] else 'full'} · {meta['repeat']} "
        f"repetitions (scale, stalled: {meta.get('heavy_repeat', meta['repeat'])}), "
        f"interleaved · ftserver workers: {meta['workers'] or 'one per core'} · "
        f"window {meta['window']} · {meta['cpus']} CPUs · open files {meta.get('nofile', '?')} · "
        f"load average before "
        f"{meta['load_before']}, after {meta.get('load_after', '?')}"
    )
    out.append("")
    out.append("Medians, spread (min–max) in parentheses. Server CPU and RSS: every process of "
               "the server (ftserver: supervisor and workers; naive: Mosquitto and the "
               "subscriber), user + system, over the upload phase only.")  # fmt: skip
    out.append("")
    res = Results(rows, floors)
    out += ["## Targets (issue 13: fleet scale)", "", *verdict_table(judge(res)), ""]
    out += ["## Other goals", "", *verdict_table(others(res), numbered=False), ""]
    out.append("Floors measured in this run (CPU s/GiB over 512 MiB; SHA-256 and the writes "
               "in the bench process, receive in the discard server): "
               + ", ".join(f"{k} {v:.3g}" for k, v in floors.items()))  # fmt: skip
    out.append("")
    for scenario in COLUMNS:
        if any(r.scenario == scenario for r in rows):
            out += [f"## {scenario}", "", scenario_table(scenario, rows)]
            errors = [f"- {r.target}, {r.case}: {e}" for r in rows if r.scenario == scenario
                      for e in r.errors]  # fmt: skip
            if errors:
                out += ["Failures:", "", *errors, ""]
            notes = [f"- {r.target}: {n}" for r in rows if r.scenario == scenario
                     for n in r.notes[:3]]  # fmt: skip
            notes += reasons(scenario, rows)
            if notes:
                out += ["Errors counted:", "", *notes, ""]
    if any(r.scenario == "throughput" for r in rows):
        out += ["## Per process, throughput at 64 KiB × 8", "", process_table(rows), ""]
        out += ["## Scenario 1, 64 KiB × 8", "", quick_line(rows), ""]
    return "\n".join(out)


def reasons(scenario: str, rows: list[Row]) -> list[str]:
    """Errors by reason (``errors[<reason>]`` metrics), summed over the repetitions."""
    out = []
    for r in rows:
        if r.scenario != scenario:
            continue
        total: dict[str, float] = {}
        for run in r.runs:
            for k, v in run.items():
                if k.startswith("errors[") and v:
                    total[k[7:-1]] = total.get(k[7:-1], 0.0) + v
        if total:
            by = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(total.items()))
            out.append(f"- {r.target}: by reason over {len(r.runs)} run(s): {by}")
    return out


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in COLUMNS if any(r.scenario == s and r.runs for r in rows)]
    if not scenarios:
        return
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(11, 3.6 * len(scenarios)))
    if len(scenarios) == 1:
        axes = [axes]
    for ax, scenario in zip(axes, scenarios, strict=True):
        metric = HEADLINE[scenario]
        sel = [r for r in rows if r.scenario == scenario and r.metric(metric)]
        labels = [f"{r.case}\n{r.target}" for r in sel]
        med = [r.metric(metric)["median"] for r in sel]
        lo = [m - r.metric(metric)["min"] for m, r in zip(med, sel, strict=True)]
        hi = [r.metric(metric)["max"] - m for m, r in zip(med, sel, strict=True)]
        colors = ["tab:blue" if r.target.startswith("ftserver") else "tab:gray" for r in sel]
        ax.bar(range(len(sel)), med, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
        ax.set_title(f"{scenario}: {dict(COLUMNS[scenario]).get(metric, metric)} "
                     "(median, min–max)", fontsize=9)  # fmt: skip
        if med and min(med) > 0 and max(med) / min(med) > 50:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, rows: list[Row], floors: dict[str, float], meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta,
        "floors": floors,
        "targets": [v.__dict__ for v in judge(Results(rows, floors))],
        "other_goals": [v.__dict__ for v in others(Results(rows, floors))],
        "rows": [r.to_json() for r in rows],
        "quick_line": quick_line(rows),
    }
    (out / "macro.json").write_text(json.dumps(doc, indent=2))
    md = out / "macro.md"
    md.write_text(markdown(rows, floors, meta))
    chart(rows, out / "macro.png")
    return md
