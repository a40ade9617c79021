"""Token arithmetic and the planner (tensor-free; agreement with real tensors is in test_aggregate.py)."""

import subprocess
import sys

import pytest

from slowfast_cli.budget import token_budget
from slowfast_cli.config import load_preset, resolve_config
from slowfast_cli.errors import ConfigError
from slowfast_cli.models import looks_like_path, model_grid
from slowfast_cli.planner import plan
from slowfast_cli.policies import check_grid, slow_frame_count, slow_tokens_per_frame
from slowfast_cli.preflight import preflight


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


class TestSfLlava:
    """SlowFast-LLaVA: 50 frames of CLIP-L/14-336's 24x24 grid, 10 slow frames at segment starts, 1d_max, 4x4."""

    def test_fifty_frames(self):
        b = token_budget(50, (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start")
        assert (b.slow_frames, b.slow_tokens, b.fast_tokens, b.output_tokens) == (10, 2880, 800, 3680)
        assert b.slow_index == "segment_start" and b.to_dict()["slow_index"] == "segment_start"

    def test_fewer_frames_than_slow_frames_keeps_s(self):
        b = token_budget(6, (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start")
        assert (b.slow_frames, b.output_tokens) == (10, 2976)  # 10 * 288 + 6 * 16: upstream does not clamp
        assert token_budget(6, (24, 24), 10, "1d_max", (4, 4)).output_tokens == 1824  # linspace: min(T, S) = 6

    @pytest.mark.parametrize("t,s", [(1, 1), (6, 10), (10, 10), (50, 10), (7, 64)])
    def test_slow_frame_count(self, t, s):
        assert slow_frame_count(t, s) == min(t, s) and slow_frame_count(t, s, "segment_start") == s

    def test_default_and_json_keys(self):
        d = token_budget(64, (14, 14), 32, "1d_max", (4, 4)).to_dict()
        assert d["slow_index"] == "linspace"
        for key in ("frames", "grid", "tokens_per_frame", "input_tokens", "slow_frames", "slow_tokens",
                    "fast_tokens", "output_tokens", "ratio"):  # fmt: skip
            assert key in d

    def test_unknown_slow_index(self):
        pattern = r"unknown slow index 'middle' \(aggregator.slow_index, --slow-index\); valid: linspace, segment_st"
        with pytest.raises(ConfigError, match=pattern):
            token_budget(6, (24, 24), 10, "1d_max", (4, 4), slow_index="middle")


@pytest.mark.parametrize(
    "grid,per_frame",
    [((27, 27), 196), ((24, 24), 144), ((5, 8), 12), ((1, 1), 1), ((1, 5), 3)],  # ceil(Gh/2) * ceil(Gw/2)
)
def test_bilinear_tokens_per_frame(grid, per_frame):
    assert slow_tokens_per_frame(grid, "2x2_bilinear") == per_frame
    assert token_budget(4, grid, 2, "2x2_bilinear", (1, 1)).slow_tokens == 2 * per_frame


@pytest.mark.parametrize(
    "grid,pool,fast,match",
    [
        (
            (27, 27),
            "1d_max",
            (4, 4),
            r"pairs consecutive tokens and needs an even token count, but the 27x27 grid has an odd count \(729\): "
            r"its last token has no partner .*; use --slow-pool 2x2_bilinear, 2x2_max, 2x2_avg or none$",
        ),
        ((3, 3), "1d_max", (1, 1), r"odd count \(9\).*; use --slow-pool 2x2_bilinear, 2x2_max, 2x2_avg or none$"),
        ((1, 3), "1d_avg", (1, 1), r"odd count \(3\).*; use --slow-pool 2x2_bilinear or none$"),  # 2x2_max needs 2x2
        ((1, 4), "2x2_max", (1, 1), r"at least 2x2, got 1x4; use --slow-pool 2x2_bilinear, none, 1d_max or 1d_avg$"),
        ((1, 3), "2x2_avg", (1, 1), r"at least 2x2, got 1x3; use --slow-pool 2x2_bilinear or none$"),
        ((4, 4), "none", (5, 4), r"fast size 5x4 \(--fast-size\) is larger than the 4x4"),
        ((4, 4), "bogus", (1, 1), "valid: none, 1d_max, 1d_avg, 2x2_max, 2x2_avg, 2x2_bilinear"),
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

    def test_siglip_grid_gets_bilinear_not_1d(self):
        entries = plan(16384, (27, 27), 8, 64)
        pools = {e.budget.slow_pool for e in entries}
        assert "2x2_bilinear" in pools and not pools & {"1d_max", "1d_avg"}
        assert all(e.budget.slow_tokens % 196 == 0 for e in entries if e.budget.slow_pool == "2x2_bilinear")

    def test_even_grid_lists_2x2_max_for_the_same_cost(self):
        assert "2x2_bilinear" not in {e.budget.slow_pool for e in plan(16384, (24, 24), 8, 64)}

    def test_slow_index_is_carried(self):
        entries = plan(8192, (24, 24), 8, 64, slow_index="segment_start")
        assert entries and all(e.budget.slow_index == "segment_start" for e in entries)
        assert [e.key for e in entries] == [e.key for e in plan(8192, (24, 24), 8, 64)]  # S <= T: same counts
        with pytest.raises(ConfigError, match="unknown slow index"):
            plan(10, (24, 24), slow_index="middle")

    @pytest.mark.parametrize("kw", [{"context": 0}, {"context": 100, "reserve": 100}])
    def test_bad_arguments(self, kw):
        with pytest.raises(ConfigError):
            plan(grid=(14, 14), **kw)


def preset(tmp_path, text):
    """A config from a real preset file (the way users write them), not yet preflighted."""
    p = tmp_path / "run.toml"
    p.write_text(text)
    return resolve_config(str(p))


class TestPreflight:
    """``preflight``: everything about an encode/batch run that is knowable without torch, checked up front."""

    @pytest.mark.parametrize("name,grid", [("default", (14, 14)), ("tiny", (8, 8))])
    def test_shipped_presets_pass(self, name, grid):
        assert preflight(load_preset(name)) == grid

    def test_llava_needs_its_projector_weights(self, tmp_path):
        cfg = load_preset("llava-l14-336")  # valid as a preset: the weights come by flag
        with pytest.raises(ConfigError, match=r"projector.kind \(--projector\) mlp2x_gelu needs weights: pass "):
            preflight(cfg)
        weights = tmp_path / "mm_projector.bin"
        weights.write_bytes(b"not read by preflight")
        assert preflight(resolve_config("llava-l14-336", {"projector_weights": str(weights)})) == (24, 24)
        missing = resolve_config("llava-l14-336", {"projector_weights": str(tmp_path / "nope.bin")})
        with pytest.raises(
            ConfigError,
            match=r"projector weights file .*nope.bin does not exist \(projector.weights, --projector-weights\)",
        ):
            preflight(missing)

    def test_odd_grid_with_a_pair_pool_fails_before_any_video(self, tmp_path):
        # the case of issue 8: ViT-B-32 (7x7 = 49 tokens) with the default 1d_max
        cfg = preset(tmp_path, '[encoder]\nmodel = "ViT-B-32"\npretrained = "none"\n')
        with pytest.raises(ConfigError, match=r"^ViT-B-32: slow pool 1d_max \(--slow-pool\) .*odd count \(49\)"):
            preflight(cfg)
        assert preflight(resolve_config(None, {"model": "ViT-B-32", "slow_pool": "2x2_max"})) == (7, 7)

    @pytest.mark.parametrize(
        "text,pattern",
        [
            ("[aggregator]\nfast_size = [9, 8]\n", r"^slowfast-tiny-vit: fast size 9x8 \(--fast-size\) .*8x8"),
            (
                '[encoder]\nmodel = "ViT-Q-99"\n',
                r"unknown model 'ViT-Q-99': .*open_clip knows .*ViT-B-16.* \(encoder.model, --model;",
            ),
            ('[encoder]\nmodel = "ViT-B-61"\n', r"unknown model 'ViT-B-61': did you mean ViT-B-16"),
            ('[encoder]\nmodel = "RN50"\n', r"'RN50' \(encoder.model, --model\) has a ResNet tower, not .* ViT"),
            ('[encoder]\nmodel = "convnext_base"\n', r"has a timm tower \(convnext_base\)"),
            ('[encoder]\nmodel = "hf-hub:org/model"\n', r"hf-hub: and local-dir: names are not supported"),
            ('[encoder]\nmodel = "../model_configs/slowfast-tiny-vit"\n', r"unknown model '../model_configs/"),
            (
                "[encoder]\nlayer = 3\n",
                r"layer 3 is out of range for slowfast-tiny-vit, which has 3 blocks: use -3..-1 .*0..2",
            ),
            ("[encoder]\nlayer = -4\n", r"layer -4 is out of range .*\(encoder.layer, --layer\)$"),
            (
                '[encoder]\npretrained = "w/vit.bin"\n',
                r"weights file w/vit.bin does not exist \(encoder.pretrained, --pretrained\)",
            ),
            (
                '[encoder]\npretrained = "vit.safetensors"\n',
                r"vit.safetensors does not exist .*: pass an existing file or checkpoint folder, an open_clip tag",
            ),
            ('[encoder]\npretrained = "vit.pth"\n', r"weights file vit.pth does not exist"),
            ('[encoder]\npretrained = "none.pt"\n', r"weights file none.pt does not exist"),
            ('[projector]\nkind = "linear"\n', r"linear needs weights: .*--random-projector with --llm-dim N"),
            ('[projector]\nkind = "linear"\nllm_dim = 32\n', r"linear needs weights: .*random 32-wide weights"),
            ('[projector]\nkind = "mlp2x_gelu"\nrandom_init = true\n', r"needs projector.llm_dim \(--llm-dim N\)"),
            ("[projector]\nllm_dim = 4096\n", r"llm_dim \(--llm-dim\) is 4096 but .*identity keeps .* width 64"),
            ('[projector]\nweights = "mm.bin"\n', r"identity, which takes no weights; pass --projector linear"),
        ],
    )
    def test_rejects_what_the_run_would_reject_later(self, tmp_path, text, pattern):
        (tmp_path / "mm.bin").write_bytes(b"x")  # identity refuses weights even when the file exists
        text = text.replace('"mm.bin"', f'"{tmp_path / "mm.bin"}"')
        if "[encoder]" not in text:
            text += "[encoder]\n"
        for key, value in (("model", "slowfast-tiny-vit"), ("pretrained", "none")):  # the tiny ViT unless set
            if f"{key} =" not in text:
                text = text.replace("[encoder]\n", f'[encoder]\n{key} = "{value}"\n')
        cfg = preset(tmp_path, text)  # a valid preset: load_preset, budget and configs accept it
        with pytest.raises(ConfigError, match=pattern) as info:
            preflight(cfg)
        assert "\n" not in str(info.value)

    @pytest.mark.parametrize(
        "overrides",
        [
            {"layer": -3},  # the first block, counted from the end
            {"layer": 2},  # the last block, counted from the start
            {"layer": 0},
            {"pretrained": "None"},  # as the encoder reads it: any case
            {"pretrained": "openai"},  # a tag: the encoder checks it with open_clip
            {"pretrained": "no-such-tag"},  # not a path either: left to the encoder's list of tags
            {"projector": "linear", "random_projector": True, "llm_dim": 32},
            {"projector": "mlp2x_gelu", "random_projector": True, "llm_dim": 32, "projector_seed": 3},
            {"llm_dim": 64},  # identity with llm_dim equal to the vision width is what build_projector allows
            {"random_projector": True},  # ignored by identity
            {"fast_size": (8, 8), "slow_pool": "2x2_avg"},
            {"fast_size": (1, 8)},
        ],
    )
    def test_accepts_what_the_run_accepts(self, overrides):
        assert preflight(resolve_config("tiny", overrides)) == (8, 8)

    def test_existing_weights_files_pass(self, tmp_path):
        vision, proj = tmp_path / "vit.safetensors", tmp_path / "sub" / "proj.bin"
        proj.parent.mkdir()
        vision.write_bytes(b"x")
        proj.write_bytes(b"x")
        text = f'[encoder]\npretrained = "{vision}"\n[projector]\nkind = "linear"\nweights = "{proj}"\n'
        cfg = preset(tmp_path, text)
        assert preflight(cfg) == (14, 14)

    def test_a_directory_is_taken_as_a_checkpoint_folder(self, tmp_path):
        """A Hugging Face / LLaVA checkpoint is a folder; whether it holds one is the loader's check
        (tests/test_checkpoints.py), not preflight's."""
        assert preflight(resolve_config("tiny", {"pretrained": str(tmp_path)})) == (8, 8)
        with pytest.raises(ConfigError, match="does not exist"):
            preflight(resolve_config("tiny", {"pretrained": str(tmp_path / "gone")}))

    def test_validates_configs_built_in_code(self):
        cfg = load_preset("tiny")
        cfg.video.sample_fps = float("nan")
        with pytest.raises(ConfigError, match="finite"):
            preflight(cfg)

    @pytest.mark.parametrize(
        "value,is_path",
        [("openai", False), ("laion2b_s34b_b79k", False), ("none", False), ("a/b", True), ("w.bin", True),
         ("w.pt", True), ("w.pth", True), ("w.safetensors", True), ("w.ckpt", False)],
    )  # fmt: skip
    def test_looks_like_path(self, value, is_path):
        assert looks_like_path(value) is is_path

    def test_imports_neither_torch_nor_open_clip(self):
        code = (
            "import sys; from slowfast_cli.preflight import preflight; from slowfast_cli.config import load_preset; "
            "preflight(load_preset('default')); preflight(load_preset('tiny')); "
            "assert not {'torch', 'open_clip'} & set(sys.modules), sorted(sys.modules)"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
