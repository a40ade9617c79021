"""What a bucket costs a batch: ``slowfast batch`` from and to a loopback S3 server, against local folders.

moto's S3 server (``moto.server.ThreadedMotoServer``, in this process, on loopback) holds N generated videos; each
case is a fresh ``slowfast batch`` process (``--config tiny --workers 1``), timed from start to exit, all in one run
so the ratios compare like with like:

- local -> local, s3 -> local, local -> s3, s3 -> s3 (every video encoded);
- the same s3 -> s3 and local -> local again (resume: every video already done, nothing encoded);
- an endpoint where nothing listens: ``slowfast batch`` until its one-line error, and a bare s3fs ``info`` with
  s3fs's and botocore's default retries against ``remote.FAST_S3``'s.

Loopback has no latency and moto is slower per request than S3, so this measures slowfast's own cost per object
(listing, one download per video, one upload per token file, the staging copy), not a real network's.

Example:
    python benchmarks/bench_remote.py --videos 12
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = common.parser(__doc__, "bench_remote", torch_options=False)
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--seconds", type=float, default=2.0, help="length of each 640x360 30 fps video")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every case, alternating; the median is shown")
    args = p.parse_args()
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    info = common.machine_info(with_torch=False)
    common.header("slowfast batch from and to a loopback S3 server", info)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    os.environ.update(env)
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    src = work / "in"
    src.mkdir()
    for i in range(args.videos):
        video = common.cached_video(common.OUT_DIR / "videos", args.seconds, seed=i)
        shutil.copy(video, src / f"v{i:03d}.mp4")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    for f in sorted(src.iterdir()):
        s3.upload_file(str(f), "bench", f"in/{f.name}")
    total_mb = sum(f.stat().st_size for f in src.iterdir()) / 2**20

    def batch(inp: str, out: str, extra: dict | None = None) -> dict:
        cmd = [sys.executable, "-m", "slowfast_cli", "batch", inp, "-o", out, "--config", "tiny", "--workers", "1"]
        r = common.run_measured(cmd, env={**os.environ, **(extra or {})})
        assert r["rc"] in (0, 1), r["stderr"]
        return r

    cases = [  # (name, IN_DIR, OUT_DIR of round r); the resume cases rerun round 0's folders
        ("local -> local", str(src), lambda r: str(work / f"out{r}")),
        ("s3 -> local", "s3://bench/in", lambda r: str(work / f"from-s3-{r}")),
        ("local -> s3", str(src), lambda r: f"s3://bench/from-local-{r}"),
        ("s3 -> s3", "s3://bench/in", lambda r: f"s3://bench/out{r}"),
        ("s3 -> s3, resume (all done)", "s3://bench/in", lambda r: "s3://bench/out0"),
        ("local -> local, resume (all done)", str(src), lambda r: str(work / "out0")),
    ]
    times: dict[str, list] = {name: [] for name, _, _ in cases}
    for r in range(1 if args.quick else args.repeats):
        for name, inp, out in cases:
            result = batch(inp, out(r))
            times[name].append((result["seconds"], result["maxrss_mb"]))
            print(f"round {r}: {name}: {result['seconds']:.2f} s", flush=True)
    rows = [{"case": name, "seconds": statistics.median(t for t, _ in runs), "maxrss_mb": max(m for _, m in runs),
             "runs": len(runs)} for name, runs in times.items()]  # fmt: skip
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio"] = row["seconds"] / base
    print(f"\n{args.videos} videos of {args.seconds:g} s at 640x360 ({total_mb:.1f} MiB in all)\n")
    print(common.table(rows, [("case", "case", ""), ("seconds", "median wall s", ".2f"), ("ratio", "vs local", ".2f"),
                              ("maxrss_mb", "peak RSS MiB", ".0f")]))  # fmt: skip

    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    r = batch("s3://bench/in", str(work / "never"), {"AWS_ENDPOINT_URL": dead})
    errors = [{"what": "slowfast batch, dead endpoint: exit with one line", "seconds": time.perf_counter() - t0,
               "line": r["stderr"].strip().splitlines()[-1][:90]}]  # fmt: skip
    import fsspec

    from slowfast_cli import remote

    os.environ["AWS_ENDPOINT_URL"] = dead
    for what, options, retries in (("s3fs and botocore defaults", {}, None), ("remote.FAST_S3", remote.FAST_S3, 2)):
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
        if retries is not None:
            fs.retries = retries
        t0 = time.perf_counter()
        try:
            fs.info("bench/in/v000.mp4")
        except Exception as exc:
            line = f"{type(exc).__name__}"
        errors.append({"what": f"s3fs info, dead endpoint, {what}", "seconds": time.perf_counter() - t0, "line": line})
    print()
    print(common.table(errors, [("what", "call", ""), ("seconds", "s until the error", ".2f"), ("line", "error", "")]))
    server.stop()
    shutil.rmtree(work, ignore_errors=True)
    common.write_json(args.out, {"machine": info, "cases": rows, "errors": errors})


if __name__ == "__main__":
    main()
