"""Token arithmetic and the planner (tensor-free; agreement with real tensors is in test_aggregate.py)."""

import pytest

from slowfast_cli.budget import check_grid, model_grid, plan, token_budget
from slowfast_cli.errors import ConfigError


def test_seed_demo():
    b = token_budget(64, (14, 14), 32, "none", (4, 4))
    assert (b.input_tokens, b.slow_tokens, b.fast_tokens, b.output_tokens) == (12544, 6272, 1024, 7296)
    assert round(b.ratio, 2) == 0.58
    b = token_budget(64, (14, 14), 32, "1d_max", (4, 4))
    assert (b.slow_tokens, b.output_tokens, round(b.ratio, 2)) == (3136, 4160, 0.33)


@pytest.mark.parametrize(
    "pool,per_frame",
    [("none", 35), ("2x2_max", 6), ("2x2_avg", 6)],  # 5x7 grid: floor(5/2)*floor(7/2)
)
def test_non_square_odd_grid(pool, per_frame):
    assert token_budget(4, (5, 7), 2, pool, (2, 2)).slow_tokens_per_frame == per_frame


def test_fewer_frames_than_slow_frames():
    b = token_budget(4, (14, 14), 32, "none", (4, 4))
    assert b.slow_frames == 4 and b.ratio > 1


@pytest.mark.parametrize(
    "grid,pool,fast,match",
    [
        ((3, 3), "1d_max", (1, 1), "odd count"),
        ((1, 4), "2x2_max", (1, 1), "at least 2x2"),
        ((4, 4), "none", (5, 4), "larger than the 4x4"),
        ((4, 4), "bogus", (1, 1), "valid: none, 1d_max, 1d_avg, 2x2_max, 2x2_avg"),
    ],
)
def test_impossible_settings(grid, pool, fast, match):
    with pytest.raises(ConfigError, match=match):
        check_grid(grid, pool, fast)


def test_model_grid_from_open_clip_configs():
    assert model_grid("ViT-B-16") == (14, 14)
    assert model_grid("ViT-B-32") == (7, 7)
    assert model_grid("ViT-L-14-336") == (24, 24)
    assert model_grid("slowfast-tiny-vit") == (8, 8)


def test_model_grid_unknown_model():
    with pytest.raises(ConfigError, match="--grid HxW"):
        model_grid("ViT-Q-99")


class TestPlan:
    def test_everything_fits_and_front_is_non_dominated(self):
        entries = plan(8192, (24, 24), 8, 128)
        assert entries
        keys = [e.key for e in entries]
        for e in entries:
            assert e.budget.output_tokens <= 8192 and e.spare == 8192 - e.budget.output_tokens
            assert 8 <= e.budget.frames <= 128
        for a in keys:
            for b in keys:
                assert not (all(x >= y for x, y in zip(a, b)) and a != b), (a, b)

    def test_ranked_by_frames_then_detail(self):
        keys = [e.key for e in plan(4096, (14, 14), 1, 64)]
        assert keys == sorted(keys, reverse=True)

    def test_reserve_is_respected(self):
        entries = plan(5000, (14, 14), 8, 64, reserve=1000)
        assert all(e.budget.output_tokens <= 4000 for e in entries)

    def test_a_bigger_context_never_loses_options(self):
        small = {e.key for e in plan(2000, (14, 14), 8, 64)}
        big = plan(8000, (14, 14), 8, 64)
        for k in small:
            assert any(all(x >= y for x, y in zip(e.key, k)) for e in big)

    def test_seed_design_is_dominated_or_listed(self):
        # the seed config (64 frames, 32 slow 1d_max, 4x4 = 4160 tokens) fits 4160: something at least as good is listed
        seed = (64, 32 * 98, 16)
        assert any(all(x >= y for x, y in zip(e.key, seed)) for e in plan(4160, (14, 14), 8, 64))

    def test_nothing_fits(self):
        assert plan(10, (14, 14), 8, 64) == []

    @pytest.mark.parametrize("kw", [{"context": 0}, {"context": 100, "reserve": 100}])
    def test_bad_arguments(self, kw):
        with pytest.raises(ConfigError):
            plan(grid=(14, 14), **kw)
