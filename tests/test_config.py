"""Presets, precedence (defaults < preset < flags) and validation messages."""

import pytest

from slowfast_cli.config import SLOW_POOLS, Config, config_from_dict, list_presets, parse_hw, resolve_config
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


def test_missing_preset_file():
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("no/such/file.toml")


def test_unknown_flag():
    with pytest.raises(ConfigError, match="unknown setting 'framez'"):
        resolve_config("default", {"framez": 3})


@pytest.mark.parametrize("pool", SLOW_POOLS)
def test_every_pool_accepted(pool):
    assert resolve_config("default", {"slow_pool": pool}).aggregator.slow_pool == pool


@pytest.mark.parametrize(
    "text,expected", [("4x4", (4, 4)), ("2X3", (2, 3)), ("5", (5, 5)), (3, (3, 3)), ([1, 2], (1, 2))]
)
def test_parse_hw(text, expected):
    assert parse_hw(text) == expected


@pytest.mark.parametrize("text", ["4x", "axb", "0x4", "-1x2", "1x2x3", ""])
def test_parse_hw_bad(text):
    with pytest.raises(ConfigError, match="HxW|positive"):
        parse_hw(text)
