"""The aggregator against a written-out reference of the architecture page's definition, and against budget."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slowfast_cli.aggregate import SlowFastAggregator, slow_fast, slow_indices
from slowfast_cli.budget import token_budget
from slowfast_cli.config import SLOW_POOLS
from slowfast_cli.errors import ConfigError


# --- an independent reference: loops over frames, windows and tokens, sums in row-major order ------------------
def ref_slow_indices(t, s):
    s = min(t, s)
    if s == 1:
        return [0]
    return [int((t - 1) * i / (s - 1) + 1e-9) if i < s - 1 else t - 1 for i in range(s)]


def ref_pool_frame(frame, gh, gw, mode):
    """frame: (N, D) row-major -> list of (D,) tokens."""
    if mode == "none":
        return [frame[i] for i in range(gh * gw)]
    if mode.startswith("1d"):
        out = []
        for i in range(0, gh * gw, 2):
            a, b = frame[i], frame[i + 1]
            out.append(torch.maximum(a, b) if mode == "1d_max" else (a + b) / 2)
        return out
    out = []
    for r in range(gh // 2):
        for c in range(gw // 2):
            cells = [frame[(2 * r + dr) * gw + 2 * c + dc] for dr in (0, 1) for dc in (0, 1)]
            if mode == "2x2_max":
                m = cells[0]
                for cell in cells[1:]:
                    m = torch.maximum(m, cell)
                out.append(m)
            else:
                out.append((cells[0] + cells[1] + cells[2] + cells[3]) / 4)
    return out


def ref_fast_frame(frame, gh, gw, h, w):
    out = []
    for i in range(h):
        r0, r1 = (i * gh) // h, -((-(i + 1) * gh) // h)
        for j in range(w):
            c0, c1 = (j * gw) // w, -((-(j + 1) * gw) // w)
            acc = torch.zeros_like(frame[0])
            for r in range(r0, r1):
                for c in range(c0, c1):
                    acc = acc + frame[r * gw + c]
            out.append(acc / ((r1 - r0) * (c1 - c0)))
    return out


def reference(x, grid, slow_frames, pool, fast):
    t = x.shape[0]
    tokens = []
    for i in ref_slow_indices(t, slow_frames):
        tokens += ref_pool_frame(x[i], *grid, pool)
    for i in range(t):
        tokens += ref_fast_frame(x[i], *grid, *fast)
    return torch.stack(tokens).unsqueeze(0)


CASES = [
    # (T, grid, slow_frames, fast)
    (64, (14, 14), 32, (4, 4)),  # the seed design
    (12, (6, 6), 4, (4, 4)),  # 6 -> 4 adaptive windows overlap
    (5, (4, 6), 3, (2, 3)),  # non-square grid
    (7, (5, 6), 3, (2, 2)),  # odd side: 2x2 floors
    (3, (4, 4), 8, (2, 2)),  # T smaller than the slow frame count
    (1, (2, 2), 1, (1, 1)),  # a single frame
]


class TestSlowIndices:
    def test_seed_example(self):
        idx = slow_indices(64, 32).tolist()
        assert idx[:4] == [0, 2, 4, 6] and idx[-2:] == [60, 63]

    @pytest.mark.parametrize("t,s", [(64, 32), (10, 3), (7, 7), (3, 8), (1, 1), (100, 13), (37, 36)])
    def test_matches_reference(self, t, s):
        assert slow_indices(t, s).tolist() == ref_slow_indices(t, s)


class TestAgainstReference:
    @pytest.mark.parametrize("pool", SLOW_POOLS)
    @pytest.mark.parametrize("t,grid,slow,fast", CASES)
    def test_bit_exact_fp32(self, pool, t, grid, slow, fast):
        if pool.startswith("1d") and grid[0] * grid[1] % 2:
            pytest.skip("1d pools need an even token count")
        torch.manual_seed(t * 100 + grid[1])
        x = torch.randn(t, grid[0] * grid[1], 8)
        out = slow_fast(x, grid, slow, pool, fast)
        assert torch.equal(out.tokens, reference(x, grid, slow, pool, fast))
        assert out.slow_indices == ref_slow_indices(t, slow)

    def test_slow_first_then_fast(self):
        x = torch.randn(4, 16, 3)
        out = slow_fast(x, (4, 4), 2, "none", (2, 2)).tokens
        assert torch.equal(out[0, :16], x[0]) and torch.equal(out[0, 16:32], x[3])
        assert torch.allclose(out[0, 32], x[0].reshape(4, 4, 3)[:2, :2].mean((0, 1)))

    def test_seed_demo_counts(self):
        x = torch.zeros(64, 196, 4)
        assert slow_fast(x, (14, 14), 32, "none", (4, 4)).tokens.shape == (1, 7296, 4)
        assert slow_fast(x, (14, 14), 32, "1d_max", (4, 4)).tokens.shape == (1, 4160, 4)


class TestDtypeDevice:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
    @pytest.mark.parametrize("pool", SLOW_POOLS)
    def test_dtype_preserved_and_close(self, dtype, pool):
        x = torch.randn(6, 36, 5)
        out = slow_fast(x.to(dtype), (6, 6), 3, pool, (3, 3)).tokens
        assert out.dtype == dtype
        ref = slow_fast(x, (6, 6), 3, pool, (3, 3)).tokens
        tol = {torch.bfloat16: 3e-2, torch.float16: 3e-3}.get(dtype, 1e-6)
        torch.testing.assert_close(out.float(), ref, atol=tol * 4, rtol=tol)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda(self):
        x = torch.randn(8, 196, 16, device="cuda", dtype=torch.bfloat16)
        out = slow_fast(x, (14, 14), 4, "2x2_max", (4, 4)).tokens
        assert out.device == x.device and out.dtype == torch.bfloat16

    def test_module_wraps_function(self):
        x = torch.randn(9, 64, 4)
        mod = SlowFastAggregator(4, "2x2_avg", (2, 2))
        assert torch.equal(mod(x, (8, 8)), slow_fast(x, (8, 8), 4, "2x2_avg", (2, 2)).tokens)
        assert "2x2_avg" in repr(mod) and not list(mod.parameters())


class TestBudgetAgreement:
    @settings(max_examples=150, deadline=None)
    @given(
        t=st.integers(1, 40),
        gh=st.integers(1, 12),
        gw=st.integers(1, 12),
        s=st.integers(1, 48),
        pool=st.sampled_from(SLOW_POOLS),
        fh=st.integers(1, 6),
        fw=st.integers(1, 6),
    )
    def test_counts_match_tensor_output(self, t, gh, gw, s, pool, fh, fw):
        x = torch.randn(t, gh * gw, 2)
        try:
            b = token_budget(t, (gh, gw), s, pool, (fh, fw))
        except ConfigError:
            with pytest.raises(ConfigError):
                slow_fast(x, (gh, gw), s, pool, (fh, fw))
            return
        out = slow_fast(x, (gh, gw), s, pool, (fh, fw))
        assert out.tokens.shape == (1, b.output_tokens, 2)
        assert out.budget == b
        assert b.slow_tokens + b.fast_tokens == b.output_tokens
        assert len(out.slow_indices) == b.slow_frames
        assert b.ratio == b.output_tokens / (t * gh * gw)


class TestErrors:
    def test_odd_count_1d(self):
        with pytest.raises(ConfigError, match="odd"):
            slow_fast(torch.randn(2, 9, 2), (3, 3), 1, "1d_max", (1, 1))

    def test_fast_larger_than_grid(self):
        with pytest.raises(ConfigError, match="larger than the 3x3"):
            slow_fast(torch.randn(2, 9, 2), (3, 3), 1, "none", (4, 4))

    def test_grid_mismatch(self):
        with pytest.raises(ConfigError, match="N=10"):
            slow_fast(torch.randn(2, 10, 2), (3, 3), 1, "none", (1, 1))

    def test_rank(self):
        with pytest.raises(ConfigError, match=r"\(T, N, D\)"):
            slow_fast(torch.randn(2, 9), (3, 3), 1, "none", (1, 1))

    def test_unknown_pool_lists_valid(self):
        with pytest.raises(ConfigError, match="2x2_avg"):
            slow_fast(torch.randn(2, 4, 2), (2, 2), 1, "3x3", (1, 1))
