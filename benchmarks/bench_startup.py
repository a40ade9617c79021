"""CLI start-up: wall time of light ``slowfast`` commands in fresh processes, against importing typer and rich.

Each command runs ``--runs`` times (after one untimed run) in a fresh subprocess; the median is compared with
``python -c "import typer, rich"`` (the goal: within 2x of it) and ``python -c "pass"``. Then ``--help`` and
``budget`` are run once more under ``python -X importtime`` with a check of ``sys.modules`` at exit: neither may
import torch, open_clip or decord. ``report`` reads a token file, so it needs torch (but neither open_clip nor
decord); it is listed for scale.

Example:
    python benchmarks/bench_startup.py --quick
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

HEAVY = ("torch", "open_clip", "decord", "numpy", "av", "torchvision", "einops", "safetensors")
PROBE = """
import atexit, json, sys
def _dump():
    with open({out!r}, "w") as f:
        json.dump(sorted(m for m in {heavy!r} if m in sys.modules), f)
atexit.register(_dump)
sys.argv = ["slowfast", *{argv!r}]
from slowfast_cli.cli.app import main
main()
"""


def token_file(folder: Path) -> Path:
    """A small real token file, from ``slowfast encode`` on a short video with the tiny preset (cached)."""
    out = folder / "tiny.tokens.pt"
    if not out.exists():
        sys.path.insert(0, str(common.ROOT / "tests"))
        import media

        folder.mkdir(parents=True, exist_ok=True)
        clip = media.make_video(folder / "tiny.mp4", frames=16, size=(96, 64), fps=10)
        exe = str(Path(sys.executable).with_name("slowfast"))
        subprocess.run([exe, "encode", str(clip), "--config", "tiny", "-o", str(out)], check=True, capture_output=True)
    return out


def imports(argv: list[str]) -> tuple[list[str], list[tuple[float, str]]]:
    """(heavy modules in sys.modules at exit, the 5 slowest imports by cumulative time) for ``slowfast ARGV``."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as f:
        code = PROBE.format(out=f.name, heavy=HEAVY, argv=argv)
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
        loaded = json.load(open(f.name))  # noqa: SIM115 - the temporary file closes it
    top = []
    for line in r.stderr.splitlines():  # "import time: self [us] | cumulative | <indent>name"
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            if cumulative.strip().isdigit() and len(name) - len(name.lstrip()) == 1:  # top level: one space
                top.append((int(cumulative) / 1e6, name.strip()))
    return loaded, sorted(top, reverse=True)[:5]


def main() -> None:
    p = common.parser(__doc__, "startup", torch_options=False)
    p.add_argument("--runs", type=int, default=None, help="timed runs per command (default 10; --quick 3)")
    args = p.parse_args()
    runs = args.runs or (3 if args.quick else 10)
    info = common.machine_info(with_torch=False)
    common.header("CLI start-up", info)
    exe = str(Path(sys.executable).with_name("slowfast"))
    tok = token_file(common.OUT_DIR / "startup")
    commands = {
        'python -c "pass"': [sys.executable, "-c", "pass"],
        'python -c "import typer, rich"': [sys.executable, "-c", "import typer, rich"],
        "slowfast --help": [exe, "--help"],
        "slowfast budget": [exe, "budget"],
        "slowfast budget --json": [exe, "budget", "--json"],
        "slowfast report TOKENS.pt": [exe, "report", str(tok)],
    }
    times = {}
    for name, cmd in commands.items():
        first = common.run_measured(cmd)
        assert first["rc"] == 0, (name, first["stderr"])
        times[name] = [common.run_measured(cmd)["seconds"] for _ in range(runs)]
        print(f"  {name}: {statistics.median(times[name]) * 1e3:.0f} ms", flush=True)
    base = statistics.median(times['python -c "import typer, rich"'])
    rows = [
        {
            "command": n,
            "ms": 1e3 * statistics.median(t),
            "min_ms": 1e3 * min(t),
            "vs_typer_rich": statistics.median(t) / base,
        }
        for n, t in times.items()
    ]
    cols = [
        ("command", "command", ""),
        ("ms", "median ms", ".0f"),
        ("min_ms", "min ms", ".0f"),
        ("vs_typer_rich", "vs import typer, rich", ".2f"),
    ]
    time_table = common.table(rows, cols)

    checks = []
    light, model = {"torch", "open_clip", "decord"}, {"open_clip", "decord"}  # report may load torch, no more
    cases = [(["--help"], light), (["budget"], light), (["budget", "--json"], light), (["report", str(tok)], model)]
    for argv, forbidden in cases:
        loaded, top = imports(argv)
        checks.append(
            {
                "command": "slowfast " + " ".join(argv).replace(str(tok), "TOKENS.pt"),
                "heavy": ", ".join(loaded) or "none",
                "forbidden": ", ".join(sorted(forbidden)),
                "ok": not forbidden & set(loaded),
                "slowest": ", ".join(f"{n} {s * 1e3:.0f} ms" for s, n in top),
            }
        )
    check_table = common.table(
        checks,
        [
            ("command", "command", ""),
            ("heavy", f"loaded of {', '.join(HEAVY)}", ""),
            ("forbidden", "must not load", ""),
            ("ok", "ok", ""),
            ("slowest", "slowest top-level imports (-X importtime)", ""),
        ],
    )
    print(f"\nmedian of {runs} fresh processes each:\n\n{time_table}\n\n{check_table}")
    common.write_json(
        args.out,
        {
            "machine": info,
            "runs": runs,
            "times_s": times,
            "rows": rows,
            "imports": checks,
            "tables": [time_table, check_table],
        },
    )
    if not all(c["ok"] for c in checks):
        sys.exit("a command imported a module it must not (see the table)")


if __name__ == "__main__":
    main()
