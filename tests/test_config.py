"""Presets, precedence (defaults < preset < flags) and validation messages."""

import json
import re

import pytest

from slowfast_cli.config import (
    FLAG_KEYS,
    SLOW_POOLS,
    AggregatorCfg,
    Config,
    EncoderCfg,
    ProjectorCfg,
    RuntimeCfg,
    VideoCfg,
    config_from_dict,
    list_presets,
    parse_hw,
    resolve_config,
    validate,
)
from slowfast_cli.errors import ConfigError


def test_shipped_presets_load():
    presets = list_presets()
    assert {"default", "tiny"} <= set(presets)
    for name in presets:
        cfg = resolve_config(name)
        assert cfg.name == name and cfg.description


def test_default_is_the_seed_design():
    cfg = resolve_config("default")
    assert cfg.encoder.model == "ViT-B-16" and cfg.encoder.layer == -2
    assert (cfg.video.frames, cfg.aggregator.slow_frames, cfg.aggregator.slow_pool) == (64, 32, "1d_max")
    assert cfg.aggregator.fast_size == (4, 4)


def test_tiny_is_random_and_small():
    cfg = resolve_config("tiny")
    assert cfg.encoder.pretrained == "none" and cfg.encoder.model == "slowfast-tiny-vit"


def test_precedence_defaults_preset_flags(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('[video]\nframes = 8\n[aggregator]\nslow_pool = "2x2_avg"\n')
    cfg = resolve_config(str(p))
    assert cfg.video.frames == 8  # preset beats default
    assert cfg.aggregator.slow_frames == Config().aggregator.slow_frames  # default stays
    cfg = resolve_config(str(p), {"frames": 12, "slow_pool": None})
    assert cfg.video.frames == 12  # flag beats preset
    assert cfg.aggregator.slow_pool == "2x2_avg"  # None = not given, never overrides


def test_round_trip_through_dict():
    cfg = resolve_config("tiny", {"fast_size": (2, 3)})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "text,key,pattern",
    [
        ("[video]\nframez = 3\n", None, r"unknown key video.'framez'.*valid keys: frames"),
        ("[vidoe]\nframes = 3\n", None, r"unknown key 'vidoe'.*video, encoder"),
        ('[aggregator]\nslow_pool = "3x3"\n', None, r"unknown slow pool '3x3'; valid: none, 1d_max"),
        ("[video]\nframes = 0\n", None, r"frames.*must be a positive integer, got 0"),
        ('[video]\nframes = "many"\n', None, r"video.frames: 'many' \(expected an integer\)"),
        ("[aggregator]\nfast_size = [0, 4]\n", None, r"both sides must be positive"),
        ('[projector]\nkind = "mlp3x"\n', None, r"unknown projector 'mlp3x'; valid: identity, linear, mlp2x_gelu"),
        ('[runtime]\ndtype = "int8"\n', None, r"unknown dtype 'int8'; valid: auto, fp32, bf16, fp16"),
        ('[runtime]\ndevice = "tpu"\n', None, r"unknown device 'tpu'"),
        ("this is = not toml [", None, r"not valid TOML"),
    ],
)
def test_bad_preset_values_name_the_problem(tmp_path, text, key, pattern):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        resolve_config(str(p))


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'; valid: .*tiny"):
        resolve_config("nope")


def test_a_preset_name_is_the_preset_beside_a_folder_or_file_of_that_name(tmp_path, monkeypatch):
    """A folder named ``tiny`` in the working folder (a run's outputs, say) does not hide the preset; ``./tiny``
    names the path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert resolve_config("tiny").encoder.model == "slowfast-tiny-vit"
    with pytest.raises(ConfigError, match="config file ./tiny .*folder"):
        resolve_config("./tiny")
    (tmp_path / "mine").write_text("[video]\nframes = 7\n")  # not a preset name: still the file
    assert resolve_config("mine").video.frames == 7


def test_missing_preset_file():
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("no/such/file.toml")


def test_unknown_flag():
    with pytest.raises(ConfigError, match="unknown setting 'framez'"):
        resolve_config("default", {"framez": 3})


@pytest.mark.parametrize("pool", SLOW_POOLS)
def test_every_pool_accepted(pool):
    assert resolve_config("default", {"slow_pool": pool}).aggregator.slow_pool == pool


class TestPolicies:
    """Sampling, slow-index and resize policies: the seed's behaviour by default, the others by name."""

    def test_defaults_keep_todays_behaviour(self):
        cfg = resolve_config("default")
        v, a, e = cfg.video, cfg.aggregator, cfg.encoder
        assert (v.sampling, a.slow_index, e.resize) == ("centers", "linspace", "shortest")
        assert "2x2_bilinear" in SLOW_POOLS

    @pytest.mark.parametrize(
        "flag,section,values",
        [
            ("sampling", "video", ("centers", "sf_llava", "linspace")),
            ("slow_index", "aggregator", ("linspace", "segment_start")),
            ("resize", "encoder", ("shortest", "squash")),
        ],
    )
    def test_every_choice_by_flag_and_preset(self, tmp_path, flag, section, values):
        assert FLAG_KEYS[flag] == (section, flag)
        for value in values:
            assert getattr(getattr(resolve_config("default", {flag: value}), section), flag) == value
            p = tmp_path / f"{value}.toml"
            p.write_text(f'[{section}]\n{flag} = "{value}"\n')
            assert getattr(getattr(resolve_config(str(p)), section), flag) == value

    @pytest.mark.parametrize(
        "flag,value,pattern",
        [
            (
                "sampling",
                "uniform",
                r"^unknown frame sampling 'uniform' \(video.sampling, --sampling\); valid: centers, sf_llava, linspa",
            ),
            (
                "slow_index",
                "middle",
                r"^unknown slow index 'middle' \(aggregator.slow_index, --slow-index\); valid: linspace, segment_st",
            ),
            ("resize", "crop", r"^unknown resize 'crop' \(encoder.resize, --resize\); valid: shortest, squash$"),
            ("sampling", 3, r"^--sampling: bad value for video.sampling: 3 \(expected a string\)$"),
        ],
    )
    def test_unknown_choice_lists_the_valid_ones(self, flag, value, pattern):
        with pytest.raises(ConfigError, match=pattern):
            resolve_config("default", {flag: value})

    @pytest.mark.parametrize("sampling", ["sf_llava", "linspace"])
    def test_sample_fps_only_with_centers(self, tmp_path, sampling):
        with pytest.raises(
            ConfigError,
            match=rf"sample_fps \(--sample-fps\) works only with sampling centers, llava_next or qwen, "
            rf"not '{sampling}'",
        ):
            resolve_config("default", {"sampling": sampling, "sample_fps": 2.0})
        p = tmp_path / "fps.toml"
        p.write_text(f'[video]\nsampling = "{sampling}"\nsample_fps = 1.0\n')
        with pytest.raises(ConfigError, match=r"fps.toml: video.sample_fps"):
            resolve_config(str(p))
        assert resolve_config("default", {"sample_fps": 2.0}).video.sampling == "centers"


@pytest.mark.parametrize(
    "text,expected", [("4x4", (4, 4)), ("2X3", (2, 3)), ("5", (5, 5)), (3, (3, 3)), ([1, 2], (1, 2))]
)
def test_parse_hw(text, expected):
    assert parse_hw(text) == expected


@pytest.mark.parametrize("text", ["4x", "axb", "0x4", "-1x2", "1x2x3", ""])
def test_parse_hw_bad(text):
    with pytest.raises(ConfigError, match="HxW|positive"):
        parse_hw(text)


def write_preset(tmp_path, text, name="mine.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


class TestNonFiniteNumbers:
    @pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf"])
    def test_in_a_preset(self, tmp_path, value):
        p = write_preset(tmp_path, f"[video]\nsample_fps = {value}\n")
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: bad value for video.sample_fps: .*finite"):
            resolve_config(str(p))

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400])
    def test_as_a_flag(self, value):
        with pytest.raises(ConfigError, match=r"^--sample-fps: bad value for video.sample_fps: .* \(expected a finite"):
            resolve_config("default", {"sample_fps": value})

    def test_in_a_config_built_in_code(self):
        cfg = Config(video=VideoCfg(sample_fps=float("nan")))
        with pytest.raises(ConfigError, match="finite"):
            validate(cfg)

    def test_finite_rates_still_work(self, tmp_path):
        p = write_preset(tmp_path, "[video]\nsample_fps = 2\n")
        assert resolve_config(str(p)).video.sample_fps == 2.0
        assert resolve_config("default", {"sample_fps": 0.5}).video.sample_fps == 0.5


class TestFastSizeTypes:
    """Sides are integers; 4.0 is refused like ``frames = 4.0`` is, so a typo never rounds silently."""

    @pytest.mark.parametrize("value", ["[4.5, 4]", "[true, 4]", "[4, false]", "[4.0, 4]", '["4", "4"]', "4.0", "true"])
    def test_non_integer_sides_are_refused(self, tmp_path, value):
        p = write_preset(tmp_path, f"[aggregator]\nfast_size = {value}\n")
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: bad aggregator.fast_size .*HxW"):
            resolve_config(str(p))

    @pytest.mark.parametrize(
        "value,expected", [("[2, 3]", (2, 3)), ("4", (4, 4)), ('"2x3"', (2, 3)), ('"3"', (3, 3)), ('"2*1"', (2, 1))]
    )
    def test_integers_and_the_string_forms(self, tmp_path, value, expected):
        p = write_preset(tmp_path, f"[aggregator]\nfast_size = {value}\n")
        assert resolve_config(str(p)).aggregator.fast_size == expected

    @pytest.mark.parametrize("value", [(4.5, 4), (True, 4), [4.0, 4.0], "1_6x4", "４x4", "+4"])
    def test_parse_hw_is_strict(self, value):
        with pytest.raises(ConfigError, match="HxW"):
            parse_hw(value)


class TestPresetErrorsNameTheFile:
    @pytest.mark.parametrize(
        "text,pattern",
        [
            ("[video]\nframes = 1.5\n", r"bad value for video.frames: 1.5 \(expected an integer\)"),
            ('[video]\nframes = "x"\n', r"bad value for video.frames: 'x' \(expected an integer\)"),
            ("[video]\nframes = {a = 1}\n", r"bad value for video.frames: \{'a': 1\} \(expected an integer\)"),
            ("[video]\ndecode_resize = 1\n", r"bad value for video.decode_resize: 1 \(expected true or false\)"),
            ("[encoder]\nlayer = true\n", r"bad value for encoder.layer: True \(expected an integer\)"),
            ("[encoder]\nmodel = 16\n", r"bad value for encoder.model: 16 \(expected a string\)"),
            ("[projector]\nweights = 5\n", r"bad value for projector.weights: 5 \(expected a string\)"),
            ('[projector]\nrandom_init = "yes"\n', r"bad value for projector.random_init: 'yes' \(expected true"),
            ("[video]\nframez = 3\n", r"unknown key video.'framez'; valid keys: frames, sample_fps"),
            ("[video.sub]\nx = 1\n", r"unknown key video.'sub'; valid keys: frames"),
            ("video = 5\n", r"\[video\] must be a table of settings \(frames, sample_fps, .*\), got 5"),
            ("[[video]]\nframes = 8\n", r"\[video\] must be a table of settings .*got \[\{'frames': 8\}\]"),
            ("name = 5\n", r"bad value for name: 5 \(expected a string\)"),
            ('description = ["a"]\n', r"bad value for description: \['a'\] \(expected a string\)"),
        ],
    )
    def test_type_errors(self, tmp_path, text, pattern):
        p = write_preset(tmp_path, text)
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: {pattern}") as info:
            resolve_config(str(p))
        assert "\n" not in str(info.value)

    def test_long_values_are_cut(self, tmp_path):
        p = write_preset(tmp_path, f"[video]\nframes = {list(range(200))}\n")
        with pytest.raises(ConfigError) as info:
            resolve_config(str(p))
        assert len(str(info.value)) < len(str(p)) + 120

    def test_unreadable_file(self, tmp_path, monkeypatch):
        p = write_preset(tmp_path, "[video]\nframes = 8\n")

        import slowfast_cli.reading

        def refuse(path, *args, **kwargs):  # presets are read through reading.read_bounded
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(slowfast_cli.reading, "open", refuse, raising=False)
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: cannot be read \(Permission denied\)"):
            resolve_config(str(p))

    def test_a_string_name_is_kept(self, tmp_path):
        p = write_preset(tmp_path, 'name = "other"\ndescription = "d"\n')
        cfg = resolve_config(str(p))
        assert (cfg.name, cfg.description) == ("other", "d")


def all_changed() -> Config:
    """A Config with every field away from its default (and a few edge values); sampling: see sf_llava_like."""
    return Config(
        name="x y",
        description='ünïcode, "quotes"',
        video=VideoCfg(frames=7, sample_fps=2.5, max_frames=9, decode_resize=False),
        encoder=EncoderCfg(
            model="ViT-L-14-336", pretrained="/w/vit.safetensors", layer=0, batch_frames=3, resize="squash"
        ),
        projector=ProjectorCfg(kind="mlp2x_gelu", llm_dim=4096, weights="mm.bin", random_init=True, seed=-5),
        aggregator=AggregatorCfg(slow_frames=1, slow_pool="2x2_avg", fast_size=(1, 3), slow_index="segment_start"),
        runtime=RuntimeCfg(device="cuda:1", dtype="bf16"),
    )


class TestConfigFromDict:
    @pytest.mark.parametrize(
        "make",
        [
            Config,
            all_changed,
            lambda: resolve_config("tiny", {"fast_size": (2, 3)}),
            lambda: resolve_config("llava-l14-336"),
            lambda: Config(video=VideoCfg(sample_fps=3)),  # an int rate in code becomes the float it means
            lambda: Config(aggregator=AggregatorCfg(fast_size=[2, 3])),  # a list in code becomes the tuple
            lambda: Config(
                video=VideoCfg(frames=50, sampling="sf_llava"), aggregator=AggregatorCfg(10, "2x2_bilinear")
            ),
        ],
    )
    def test_round_trip_is_exact(self, make):
        cfg = validate(make())
        d = cfg.to_dict()
        again = config_from_dict(json.loads(json.dumps(d)))  # as stored in a file's meta
        assert again == cfg and again.to_dict() == d
        assert json.dumps(again.to_dict()) == json.dumps(d)  # types too (2.0, not 2; lists, not tuples)
        assert config_from_dict(d) is not cfg and config_from_dict(d) == cfg

    def test_missing_keys_keep_defaults(self):
        assert config_from_dict({}) == Config()
        assert config_from_dict({"video": {"frames": 8}}).video == VideoCfg(frames=8)

    @pytest.mark.parametrize(
        "d,pattern",
        [
            ({"video": 5}, r"\[video\] must be a table of settings \(frames, .*\), got 5"),
            ({"video": [1, 2]}, r"\[video\] must be a table .*got \[1, 2\]"),
            ({"aggregator": None}, r"\[aggregator\] must be a table .*got None"),
            ([("video", {})], r"expected a table of settings, got \[\('video', \{\}\)\]"),
            ("tiny", r"expected a table of settings, got 'tiny'"),
            (None, r"expected a table of settings, got None"),
            ({"vidoe": {}}, r"unknown key 'vidoe'; valid top-level keys: name, description, video"),
            ({"video": {"framez": 1}}, r"unknown key video.'framez'; valid keys: frames"),
            ({"name": 5}, r"bad value for name: 5 \(expected a string\)"),
            ({"description": None}, r"bad value for description: None \(expected a string\)"),
            ({"video": {"frames": "8"}}, r"bad value for video.frames: '8' \(expected an integer\)"),
            ({"video": {"sample_fps": float("nan")}}, r"video.sample_fps: nan \(expected a finite number\)"),
            ({"aggregator": {"fast_size": [4.5, 4]}}, r"bad aggregator.fast_size \[4.5, 4\]"),
            ({"aggregator": {"fast_size": {"h": 4}}}, r"bad aggregator.fast_size"),
            ({"encoder": {"layer": None}}, r"bad value for encoder.layer: None \(expected an integer\)"),
        ],
    )
    def test_malformed_input_is_a_config_error(self, d, pattern):
        with pytest.raises(ConfigError, match=pattern):
            config_from_dict(d)


class TestValidateConfigsBuiltInCode:
    @pytest.mark.parametrize(
        "cfg,pattern",
        [
            (Config(video=VideoCfg(frames="8")), r"bad value for video.frames: '8' \(expected an integer\)"),
            (Config(video={"frames": 8}), r"bad value for video: \{'frames': 8\} \(expected a VideoCfg\)"),
            (Config(name=None), r"bad value for name: None \(expected a string\)"),
            (Config(aggregator=AggregatorCfg(fast_size=(4.5, 4))), r"bad aggregator.fast_size"),
            (Config(encoder=EncoderCfg(pretrained="")), r"encoder.pretrained \(--pretrained\) must not be empty"),
        ],
    )
    def test_bad_types_are_config_errors(self, cfg, pattern):
        with pytest.raises(ConfigError, match=pattern):
            validate(cfg)
