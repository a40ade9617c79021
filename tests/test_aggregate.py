"""The aggregator against a written-out reference of the architecture page's definition, and against budget."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sf_llava_reference import get_2d_pool_bilinear, prepare_slowfast, slowpath_indices

from slowfast_cli.aggregate import SlowFastAggregator, pool_slow, slow_fast, slow_indices
from slowfast_cli.budget import token_budget
from slowfast_cli.config import SLOW_INDICES, SLOW_POOLS
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
            out.append(acc / (r1 - r0) / (c1 - c0))  # as nn.AdaptiveAvgPool2d divides (by rows, then columns)
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


class TestSegmentStart:
    """``slow_index="segment_start"``: SlowFast-LLaVA's slow frames (llava_arch.py:208-210), unclamped."""

    def test_sf_llava_example(self):
        assert slow_indices(50, 10, "segment_start").tolist() == list(range(0, 50, 5))

    def test_fewer_frames_than_slow_frames_repeats(self):
        assert slow_indices(6, 10, "segment_start").tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]

    def test_matches_upstream(self):
        """Every (t, s) for t in 1..200 and s in (1, 4, 10, 32, 64): one test (1,000 cases run in milliseconds; as
        separate tests their collection and reporting took seconds); a failure names each case that differs."""
        wrong = []
        for s in [1, 4, 10, 32, 64]:
            for t in range(1, 201):
                ours, upstream = slow_indices(t, s, "segment_start").tolist(), slowpath_indices(t, s)
                if ours != upstream:
                    wrong.append(f"t={t}, s={s}: {ours} != upstream {upstream}")
        assert not wrong, f"{len(wrong)} of 1000 cases differ; first: " + "; ".join(wrong[:5])

    def test_unknown_policy_lists_valid(self):
        with pytest.raises(ConfigError, match="valid: linspace, segment_start"):
            slow_indices(10, 4, "middle")


class TestSfLlava:
    """slow_fast with segment_start, 1d_max and 4x4 is prepare_slowfast, bit for bit (tests/sf_llava_reference.py)."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("side,d", [(24, 32), (4, 5)])  # ViT-L/14-336's grid, and a small one
    @pytest.mark.parametrize("t,s", [(50, 10), (37, 10), (7, 10), (1, 10), (5, 8), (50, 64), (7, 3)])
    def test_bit_exact(self, t, s, side, d, dtype):
        torch.manual_seed(1000 * t + 10 * s + side)
        x = torch.randn(t, side * side, d).to(dtype)
        out = slow_fast(x, (side, side), s, "1d_max", (4, 4), slow_index="segment_start")
        ref = prepare_slowfast(x, f"slowfast-slow_{s}frms_spatial_1d_max_pool-fast_4x4")
        assert out.tokens.dtype == ref.dtype == dtype
        assert out.tokens.shape == ref.shape and torch.equal(out.tokens, ref)
        assert out.slow_indices == slowpath_indices(t, s)
        assert out.budget.output_tokens == s * side * side // 2 + t * 16  # S slow frames even when T < S

    def test_seven_b_counts(self):
        out = slow_fast(torch.randn(50, 576, 4), (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start")
        assert out.tokens.shape == (1, 3680, 4)
        short = slow_fast(torch.randn(6, 576, 4), (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start")
        assert short.tokens.shape == (1, 2976, 4)  # 10 * 288 + 6 * 16: upstream repeats frames, unclamped

    def test_default_is_the_seed_linspace(self):
        x = torch.randn(50, 576, 4)
        assert torch.equal(slow_fast(x, (24, 24), 10).tokens, slow_fast(x, (24, 24), 10, slow_index="linspace").tokens)
        assert slow_fast(x, (24, 24), 10).slow_indices == ref_slow_indices(50, 10)

    def test_module_passes_slow_index(self):
        x = torch.randn(6, 16, 3)
        mod = SlowFastAggregator(10, "1d_max", (2, 2), slow_index="segment_start")
        assert torch.equal(mod(x, (4, 4)), slow_fast(x, (4, 4), 10, "1d_max", (2, 2), "segment_start").tokens)
        assert "slow_index=segment_start" in repr(mod)


class TestBilinear:
    """``2x2_bilinear``: LLaVA-NeXT's get_2dPool, bilinear mode (tests/sf_llava_reference.py)."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("side", [27, 24, 7, 3, 2, 1])  # SigLIP-384's 27x27, CLIP-336's 24x24, odd and tiny
    def test_equals_get_2dpool(self, side, dtype):
        torch.manual_seed(side)
        x = torch.randn(3, side * side, 16).to(dtype)
        got = pool_slow(x, (side, side), "2x2_bilinear")
        ref = get_2d_pool_bilinear(x, side)
        assert got.dtype == dtype and torch.equal(got, ref)

    def test_siglip_grid_keeps_196(self):
        out = slow_fast(torch.randn(8, 729, 4), (27, 27), 4, "2x2_bilinear", (4, 4))
        assert out.budget.slow_tokens_per_frame == 196 and out.tokens.shape == (1, 4 * 196 + 8 * 16, 4)

    def test_non_square_grid_halves_each_side_up(self):
        x = torch.randn(2, 5 * 8, 3)
        got = pool_slow(x, (5, 8), "2x2_bilinear")  # 5x8 -> 3x4
        img = x.reshape(2, 5, 8, 3).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(img, size=(3, 4), mode="bilinear").permute(0, 2, 3, 1).reshape(2, 12, 3)
        assert torch.equal(got, ref)

    def test_constant_grid_stays_constant(self):
        x = torch.full((1, 27 * 27, 2), 0.25)
        torch.testing.assert_close(pool_slow(x, (27, 27), "2x2_bilinear"), torch.full((1, 196, 2), 0.25))


class TestAgainstReference:
    @pytest.mark.parametrize("pool", [p for p in SLOW_POOLS if p != "2x2_bilinear"])  # bilinear: TestBilinear
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
        policy=st.sampled_from(SLOW_INDICES),
    )
    def test_counts_match_tensor_output(self, t, gh, gw, s, pool, fh, fw, policy):
        x = torch.randn(t, gh * gw, 2)
        try:
            b = token_budget(t, (gh, gw), s, pool, (fh, fw), policy)
        except ConfigError:
            with pytest.raises(ConfigError):
                slow_fast(x, (gh, gw), s, pool, (fh, fw), policy)
            return
        out = slow_fast(x, (gh, gw), s, pool, (fh, fw), policy)
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
