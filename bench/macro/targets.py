"""Every target of PERFORMANCE.md, judged from the rows of one suite run."""

from __future__ import annotations

from dataclasses import dataclass

from bench.macro.common import Row


@dataclass
class Verdict:
    number: int
    target: str
    ours: str
    baseline: str
    ratio: str
    goal: str
    met: bool | None  # None: not measured in this run

    def cells(self) -> list[str]:
        met = "not measured" if self.met is None else ("**met**" if self.met else "**missed**")
        return [str(self.number), self.target, self.ours, self.baseline, self.ratio, self.goal, met]


class Results:
    def __init__(self, rows: list[Row], floors: dict[str, float]) -> None:
        self.rows = rows
        self.floors = floors

    def get(self, scenario: str, target: str, case_prefix: str = "") -> Row | None:
        # a cell whose every repetition failed does not count
        return next(
            (
                r
                for r in self.rows
                if (r.scenario, r.target) == (scenario, target)
                and r.case.startswith(case_prefix)
                and r.runs
            ),
            None,
        )

    def med(self, scenario: str, target: str, metric: str, case: str = "") -> float | None:
        row = self.get(scenario, target, case)
        return row.median(metric) if row is not None else None


def _f(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def judge(res: Results) -> list[Verdict]:
    out: list[Verdict] = []
    tp = "64 KiB segments, 8 uploaders"

    # 1. ingest throughput
    ft = res.med("throughput", "ftserver", "MBps", tp)
    mq = res.med("throughput", "mosquitto", "MBps", tp)
    nv = res.med("throughput", "naive", "MBps", tp)
    r_mq, r_nv = _ratio(ft, mq), _ratio(ft, nv)
    out.append(Verdict(1, "ingest, 64 KiB × 8 uploaders, whole-file SHA-256: vs Mosquitto ingest",
                       _f(ft, " MB/s"), f"Mosquitto {_f(mq, ' MB/s')}", _f(r_mq), "≥ 0.5",
                       None if r_mq is None else r_mq >= 0.5))  # fmt: skip
    out.append(Verdict(1, "… and vs the naive broker + subscriber", _f(ft, " MB/s"),
                       f"naive {_f(nv, ' MB/s')}", _f(r_nv), "≥ 3",
                       None if r_nv is None else r_nv >= 3))  # fmt: skip

    # 2. CPU per GiB
    cpu = res.med("throughput", "ftserver", "server_cpu_s_per_GiB", tp)
    sha = res.floors.get("sha256_cpu_s_per_GiB")
    page = res.floors.get("pagecache_write_cpu_s_per_GiB")
    r_cpu = _ratio(cpu, sha)
    out.append(Verdict(2, "server CPU (user+sys) per GiB ingested, vs one SHA-256 pass",
                       _f(cpu, " s/GiB"), f"SHA-256 {_f(sha, ' s/GiB')} (page-cache write on "
                       f"this machine: {_f(page, ' s/GiB')})", _f(r_cpu), "≤ 1.5",
                       None if r_cpu is None else r_cpu <= 1.5))  # fmt: skip

    # 3. fin latency
    fin = res.med("fin", "ftserver", "fin_ms", "1 GiB")
    cat = res.med("fin", "concat-at-fin", "fin_ms", "1 GiB")
    case = "1 GiB"
    if fin is None:  # quick mode: the largest file measured
        sizes = [r.case for r in res.rows if r.scenario == "fin" and r.target == "ftserver"]
        case = sizes[-1] if sizes else ""
        fin = res.med("fin", "ftserver", "fin_ms", case) if case else None
        cat = res.med("fin", "concat-at-fin", "fin_ms", case) if case else None
    r_fin = _ratio(cat, fin)
    out.append(Verdict(3, f"fin latency, {case or '1 GiB file'} in order", _f(fin, " ms"),
                       "—", "—", "< 50 ms", None if fin is None else fin < 50))  # fmt: skip
    out.append(Verdict(3, "… vs concatenate-at-fin of the same file", _f(fin, " ms"),
                       f"concat {_f(cat, ' ms')}", f"{_f(r_fin)}× faster", "≥ 10× faster",
                       None if r_fin is None else r_fin >= 10))  # fmt: skip

    # 4. small segments
    sm = "4 KiB segments, 8 uploaders"
    ft4 = res.med("throughput", "ftserver", "msg_per_s", sm)
    mq4 = res.med("throughput", "mosquitto", "msg_per_s", sm)
    r4 = _ratio(ft4, mq4)
    out.append(Verdict(4, "4 KiB segments, 8 uploaders: message rate vs Mosquitto",
                       _f(ft4, " msg/s"), f"Mosquitto {_f(mq4, ' msg/s')}", _f(r4), "≥ 0.5",
                       None if r4 is None else r4 >= 0.5))  # fmt: skip

    # 5. scale
    row = res.get("scale", "ftserver")
    mq_row = res.get("scale", "mosquitto")
    if row is not None:
        conns = row.median("connections") or 0
        errs = max(r.get("errors", 0) for r in row.runs) + len(row.errors)
        rss = row.metric("server_rss_peak_MB").get("max", 0.0)
        idle = row.median("idle_conn_KiB")
        mq_idle = mq_row.median("idle_conn_KiB") if mq_row is not None else None
        out.append(Verdict(5, f"{conns:.0f} concurrent connections: errors, peak RSS (all "
                           "processes)", f"{errs:.0f} errors, {rss:.0f} MB", "—", "—",
                           "0 errors, < 1 GiB", errs == 0 and rss < 1024**3 / 1e6))  # fmt: skip
        out.append(Verdict(5, "memory per idle connection", _f(idle, " KiB"),
                           f"Mosquitto {_f(mq_idle, ' KiB')}", _f(_ratio(idle, mq_idle)),
                           "< 16 KiB", None if idle is None else idle < 16))  # fmt: skip
    else:
        out.append(Verdict(5, "scale", "—", "—", "—", "0 errors, < 1 GiB, < 16 KiB", None))
    row4 = res.get("scale", "ftserver, 4 workers")
    if row4 is not None:
        errs4 = max(r.get("errors", 0) for r in row4.runs) + len(row4.errors)
        rss4 = row4.metric("server_rss_peak_MB").get("max", 0.0)
        idle4 = row4.median("idle_conn_KiB")
        out.append(Verdict(5, "… the same with 4 worker processes (a descriptor budget each)",
                           f"{errs4:.0f} errors, {rss4:.0f} MB, {_f(idle4, ' KiB')}/idle conn",
                           "—", "—", "0 errors, < 1 GiB, < 16 KiB",
                           errs4 == 0 and rss4 < 1024**3 / 1e6 and (idle4 or 99) < 16))  # fmt: skip

    # 6. restart
    big = next((r for r in res.rows if r.scenario == "restart" and r.target == "ftserver"
                and r.case.startswith("one") and r.runs), None)  # fmt: skip
    many = next((r for r in res.rows if r.scenario == "restart" and r.target == "ftserver"
                 and not r.case.startswith("one") and r.runs), None)  # fmt: skip
    http_big = next((r for r in res.rows if r.scenario == "restart" and r.target == "http"
                     and r.case.startswith("one") and r.runs), None)  # fmt: skip
    http_many = next((r for r in res.rows if r.scenario == "restart" and r.target == "http"
                      and not r.case.startswith("one") and r.runs), None)  # fmt: skip
    if big is not None:
        reread = big.median("reread_MiB")
        got = big.median("received_before_kill_MiB")
        hb = http_big.median("reread_MiB") if http_big is not None else None
        out.append(Verdict(6, f"resume after kill -9: bytes re-read ({big.case})",
                           f"{_f(reread, ' MiB')} of {_f(got, ' MiB')}",
                           f"HTTP server {_f(hb, ' MiB')}", "—", "no re-read",
                           None if reread is None else reread < 1))  # fmt: skip
    if many is not None:
        rec = many.median("recovery_s")
        hm = http_many.median("recovery_s") if http_many is not None else None
        out.append(Verdict(6, f"recovery of {many.case} (listening → all resumed)",
                           _f(rec, " s"), f"HTTP server {_f(hm, ' s')}", _f(_ratio(rec, hm)),
                           "< 2 s", None if rec is None else rec < 2))  # fmt: skip
    return out
