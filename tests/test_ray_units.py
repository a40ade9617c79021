"""The Ray engine's parts that need no cluster: the plan table and its blocks, and the stall line (issue 20). The
blocks' parts are in ``test_parts.py``, the runs themselves in ``test_ray.py``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")


def test_blocks_spread_small_runs_and_cap_large_ones():
    from slowfast_cli.batch.engines.ray_plan import BLOCK_MAX, block_rows

    assert block_rows(6, 2) == 1  # 6 videos on 2 encoders: every encoder gets work
    assert block_rows(1000, 1) == 250  # at least 4 blocks an encoder
    assert block_rows(100_000, 2) == block_rows(10**6, 8) == BLOCK_MAX


def test_the_plan_table_keeps_names_flags_identity_and_rows(tmp_path):
    """Any file name survives as bytes; the driver's size and time travel with the row, or -1 when it saw no file."""
    from slowfast_cli.batch.engines.ray_plan import plan_table, planned

    odd = Path(os.fsdecode(b"caf\xe9 [x].mp4"))
    (tmp_path / odd).write_bytes(b"12345")
    todo = [(odd, odd.with_suffix(".pt")), (Path("gone.mp4"), Path("k1.pt"))]
    table = plan_table(tmp_path, todo, {odd}, {Path("gone.mp4"): {"caption": "a cat", "n": 3}})
    a, b = planned(table.to_pydict())
    st = (tmp_path / odd).stat()
    assert (a.source, a.output, a.unverified, a.expect, a.columns) == (
        b"caf\xe9 [x].mp4",
        b"caf\xe9 [x].pt",
        True,
        (5, st.st_mtime_ns),
        None,
    )
    assert (b.source, b.unverified, b.expect, b.columns) == (b"gone.mp4", False, None, {"caption": "a cat", "n": 3})


def test_the_stall_line_names_the_demand_and_the_nodes():
    from slowfast_cli.batch.engines.ray_watch import stall_line

    line = stall_line(
        61.4,
        [({"CPU": 1.0, "node:127.0.0.1": 0.001}, 2), ({"CPU": 4.0, "GPU": 1.0}, 1)],
        [("hostA/1a2b3c4d", {"CPU": (2.0, 2.0), "memory": (1.0, 8.0), "GPU": (0.0, 1.0)})],
    )
    assert "no video finished for 61 s" in line
    assert "2 x {CPU: 1}; 1 x {CPU: 4, GPU: 1}" in line and "node:" not in line
    assert "alive nodes: hostA/1a2b3c4d (CPU 2/2 used, GPU 0/1 used)" in line
