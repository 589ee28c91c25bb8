"""The targets the suite judges, from the rows of one run: issue 13's ("Fleet scale"), then
the project's other goals. Each compares ftserver with a baseline or a floor measured in the
same run, or with a fixed figure; a target whose rows are absent is "not measured"."""

from __future__ import annotations

from dataclasses import dataclass

from bench.macro.common import Row
from bench.macro.relay import INGEST, NAME, TELEMETRY


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
    if value is None:
        return "—"
    if abs(value) >= 10**digits:  # no exponent for thousands of files/s or MB
        return f"{value:.0f}{unit}"
    return f"{value:.{digits}g}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _worst(row: Row, metric: str) -> float:
    """The worst repetition's figure (errors, RSS, missing files): one bad run is a miss."""
    return row.metric(metric).get("max", 0.0)


GIB_MB = 1024**3 / 1e6
#: re-read below this is not data: modules imported late, /proc files (one segment)
REREAD_NOISE_MiB = 1 / 16
TP = "64 KiB segments, 8 uploaders"
SMALL = "4 KiB segments, 8 uploaders"


def judge(res: Results) -> list[Verdict]:
    """Issue 13's targets ("Fleet scale"), in its order."""
    out: list[Verdict] = []

    # 1-3. 10 000 devices, one small file each, default workers
    row = res.get("scale", "ftserver")
    http_row = res.get("scale", "http")
    mq_row = res.get("scale", "mosquitto")
    if row is not None:
        conns = row.median("connections") or 0
        errs = _worst(row, "errors") + len(row.errors)
        missing = _worst(row, "missing")
        rss = _worst(row, "server_rss_peak_MB")
        kinds = sorted({k[7:-1] for r in row.runs for k in r if k.startswith("errors[")})
        why = f" ({', '.join(kinds)})" if kinds else ""
        out.append(Verdict(1, f"{conns:.0f} devices, one small file each, default workers: "
                           "errors, files exported, peak RSS (all processes)",
                           f"{errs:.0f} errors{why}, {conns - missing:.0f} exported, "
                           f"{rss:.0f} MB", "—", "—", "0 errors, all exported, < 1 GiB",
                           errs == 0 and missing == 0 and rss < GIB_MB))  # fmt: skip
    else:
        out.append(Verdict(1, "10 000 devices, one small file each", "—", "—", "—",
                           "0 errors, all exported, < 1 GiB", None))  # fmt: skip
    fps = res.med("scale", "ftserver", "files_per_s")
    http_fps = http_row.median("files_per_s") if http_row is not None else None
    r_fps = _ratio(fps, http_fps)
    out.append(Verdict(2, "… files stored per second vs the HTTP upload server",
                       _f(fps, " files/s"), f"HTTP {_f(http_fps, ' files/s')}", _f(r_fps),
                       "≥ 2", None if r_fps is None else r_fps >= 2))  # fmt: skip
    idle = res.med("scale", "ftserver", "idle_conn_KiB")
    mq_idle = mq_row.median("idle_conn_KiB") if mq_row is not None else None
    out.append(Verdict(3, "memory per idle connection (RSS idle − before, / connections)",
                       _f(idle, " KiB"), f"Mosquitto {_f(mq_idle, ' KiB')}",
                       _f(_ratio(idle, mq_idle)), "≤ 8 KiB",
                       None if idle is None else idle <= 8))  # fmt: skip

    # 4. stalled connections
    st = res.get("stalled", "ftserver")
    st_mq = res.get("stalled", "mosquitto")
    if st is not None:
        growth = _worst(st, "growth_MB")
        honest = min(r.get("honest_ok", 0.0) for r in st.runs) == 1.0
        honest_s = st.median("honest_s")
        stalled = min(r.get("stalled", 0.0) for r in st.runs)
        conns = st.median("connections") or 0
        mq_growth = st_mq.median("growth_MB") if st_mq is not None else None
        out.append(Verdict(4, f"RSS growth, {conns:.0f} connections stalled half-way through "
                           "15 MiB segments; an honest 32 MiB upload meanwhile",
                           f"{growth:.0f} MB ({stalled:.0f} stalled), honest upload "
                           f"{'done in ' + _f(honest_s, ' s') if honest else 'FAILED'}",
                           f"Mosquitto {_f(mq_growth, ' MB')}", _f(_ratio(growth, mq_growth)),
                           "≤ 512 MB, honest upload done",
                           growth <= 512 and honest and stalled == conns))  # fmt: skip
    else:
        out.append(Verdict(4, "RSS growth, 200 connections stalled in 15 MiB segments", "—",
                           "—", "—", "≤ 512 MB, honest upload done", None))  # fmt: skip

    # 5. small segments
    ft4 = res.med("throughput", "ftserver", "msg_per_s", SMALL)
    mq4 = res.med("throughput", "mosquitto", "msg_per_s", SMALL)
    r4 = _ratio(ft4, mq4)
    out.append(Verdict(5, "4 KiB segments × 8 uploaders: message rate vs Mosquitto",
                       _f(ft4, " msg/s"), f"Mosquitto {_f(mq4, ' msg/s')}", _f(r4), "≥ 0.8",
                       None if r4 is None else r4 >= 0.8))  # fmt: skip

    # 6. CPU per GiB
    cpu = res.med("throughput", "ftserver", "server_cpu_s_per_GiB", TP)
    fl = res.floors
    floor = fl.get("floor_cpu_s_per_GiB")
    parts = (f"SHA-256 {_f(fl.get('sha256_cpu_s_per_GiB'))} + recycled write "
             f"{_f(fl.get('recycled_write_cpu_s_per_GiB'))} + receive "
             f"{_f(fl.get('receive_cpu_s_per_GiB'))}")  # fmt: skip
    r_cpu = _ratio(cpu, floor)
    out.append(Verdict(6, "64 KiB × 8: server CPU (user + sys) per GiB vs the floor",
                       _f(cpu, " s/GiB"), f"floor {_f(floor, ' s/GiB')} ({parts})",
                       _f(r_cpu), "≤ 1.5", None if r_cpu is None else r_cpu <= 1.5))  # fmt: skip

    # 7. throughput vs HTTP
    ft = res.med("throughput", "ftserver", "MBps", TP)
    http = res.med("throughput", "http", "MBps", TP)
    r_http = _ratio(ft, http)
    out.append(Verdict(7, "64 KiB × 8: throughput vs the HTTP upload server", _f(ft, " MB/s"),
                       f"HTTP {_f(http, ' MB/s')}", _f(r_http), "≥ 2.5",
                       None if r_http is None else r_http >= 2.5))  # fmt: skip

    # 8. restart
    big = _restart_row(res, "ftserver", large=True)
    http_big = _restart_row(res, "http", large=True)
    if big is not None:
        reread = big.metric("reread_MiB").get("max")
        got = big.median("received_before_kill_MiB")
        hb = http_big.median("reread_MiB") if http_big is not None else None
        out.append(Verdict(8, f"bytes re-read after kill -9 ({big.case})",
                           f"{_f(reread, ' MiB')} of {_f(got, ' MiB')}",
                           f"HTTP server {_f(hb, ' MiB')}", "—", "0 (< 64 KiB of noise)",
                           None if reread is None else reread < REREAD_NOISE_MiB))  # fmt: skip
    else:
        out.append(Verdict(8, "bytes re-read after kill -9, one transfer at 55 %", "—", "—",
                           "—", "0 (< 64 KiB of noise)", None))  # fmt: skip
    return out


def _restart_row(res: Results, target: str, *, large: bool) -> Row | None:
    return next((r for r in res.rows if r.scenario == "restart" and r.target == target
                 and r.case.startswith("one") == large and r.runs), None)  # fmt: skip


def others(res: Results) -> list[Verdict]:
    """The other goals of the project, measured by the same suite (not issue 13's)."""
    out: list[Verdict] = []
    ft = res.med("throughput", "ftserver", "MBps", TP)
    mq = res.med("throughput", "mosquitto", "MBps", TP)
    nv = res.med("throughput", "naive", "MBps", TP)
    r_mq, r_nv = _ratio(ft, mq), _ratio(ft, nv)
    out.append(Verdict(1, "ingest, 64 KiB × 8 uploaders, whole-file SHA-256: vs Mosquitto",
                       _f(ft, " MB/s"), f"Mosquitto {_f(mq, ' MB/s')}", _f(r_mq), "≥ 0.5",
                       None if r_mq is None else r_mq >= 0.5))  # fmt: skip
    out.append(Verdict(1, "… and vs the naive broker + subscriber", _f(ft, " MB/s"),
                       f"naive {_f(nv, ' MB/s')}", _f(r_nv), "≥ 3",
                       None if r_nv is None else r_nv >= 3))  # fmt: skip

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

    row4 = res.get("scale", "ftserver, 4 workers")
    if row4 is not None:
        errs4 = _worst(row4, "errors") + len(row4.errors)
        rss4 = _worst(row4, "server_rss_peak_MB")
        idle4 = row4.median("idle_conn_KiB")
        out.append(Verdict(5, "scale with 4 worker processes (a descriptor budget each)",
                           f"{errs4:.0f} errors, {rss4:.0f} MB, {_f(idle4, ' KiB')}/idle conn",
                           "—", "—", "0 errors, < 1 GiB, ≤ 8 KiB",
                           errs4 == 0 and rss4 < GIB_MB and (idle4 or 99) <= 8))  # fmt: skip

    many = _restart_row(res, "ftserver", large=False)
    http_many = _restart_row(res, "http", large=False)
    if many is not None:
        rec = many.median("recovery_s")
        hm = http_many.median("recovery_s") if http_many is not None else None
        out.append(Verdict(6, f"recovery of {many.case} (listening → all resumed)",
                           _f(rec, " s"), f"HTTP server {_f(hm, ' s')}", _f(_ratio(rec, hm)),
                           "< 2 s", None if rec is None else rec < 2))  # fmt: skip
    return out + relay(res)


def relay(res: Results) -> list[Verdict]:
    """Issue 14's bench: relay mode against the broker alone and against standalone ftserver
    (rows of :mod:`bench.macro.relay`; a relay that delivers nothing has no rows, so "not
    measured")."""
    out: list[Verdict] = []
    rel = res.med(NAME, "ftserver-relay", "msg_per_s", TELEMETRY)
    mq = res.med(NAME, "mosquitto", "msg_per_s", TELEMETRY)
    r_tel = _ratio(rel, mq)
    out.append(Verdict(14, "relay: QoS 1 telemetry, 100 B × 8 devices, through ftserver to "
                       "Mosquitto vs straight to Mosquitto", _f(rel, " msg/s"),
                       f"Mosquitto {_f(mq, ' msg/s')}", _f(r_tel), "≥ 0.5",
                       None if r_tel is None else r_tel >= 0.5))  # fmt: skip
    ing = res.med(NAME, "ftserver-relay", "MBps", INGEST)
    alone = res.med(NAME, "ftserver", "MBps", INGEST)
    r_ing = _ratio(ing, alone)
    out.append(Verdict(14, "relay: ingest, 64 KiB × 8 uploaders, relay mode vs standalone",
                       _f(ing, " MB/s"), f"standalone {_f(alone, ' MB/s')}", _f(r_ing),
                       "≥ 0.9", None if r_ing is None else r_ing >= 0.9))  # fmt: skip
    return out
