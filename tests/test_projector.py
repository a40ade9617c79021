"""Projectors: LLaVA checkpoints load under their real key names and compute what LLaVA computes."""

from __future__ import annotations

import fractions
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from slowfast_cli.checkpoints import read_weights
from slowfast_cli.config import ProjectorCfg
from slowfast_cli.errors import ConfigError, SlowfastError
from slowfast_cli.projector import build_projector, load_projector_state, make_projector, project

CPU = torch.device("cpu")
D_VISION, D_LLM = 64, 96


def mlp_weights(d_in: int = D_VISION, d_out: int = D_LLM, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "0.weight": torch.randn(d_out, d_in, generator=g) / d_in**0.5,
        "0.bias": torch.randn(d_out, generator=g),
        "2.weight": torch.randn(d_out, d_out, generator=g) / d_out**0.5,
        "2.bias": torch.randn(d_out, generator=g),
    }


def linear_weights(d_in: int = D_VISION, d_out: int = D_LLM) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"weight": torch.randn(d_out, d_in, generator=g), "bias": torch.randn(d_out, generator=g)}


def save(tmp_path, name: str, state: dict[str, torch.Tensor]) -> str:
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return str(path)


def build(kind: str = "mlp2x_gelu", vision_width: int = D_VISION, dtype: torch.dtype = torch.float32, **cfg):
    return build_projector(ProjectorCfg(kind=kind, **cfg), vision_width, CPU, dtype)


def features(t: int = 3, n: int = 16, d: int = D_VISION) -> torch.Tensor:
    return torch.randn(t, n, d, generator=torch.Generator().manual_seed(7))  # (T, N, D_vision)


class TestLlavaCheckpoints:
    def test_mm_projector_bin_is_loaded_and_applied(self, tmp_path):
        w = mlp_weights()
        state = {f"model.mm_projector.{k}": v for k, v in w.items()}
        state["model.embed_tokens.weight"] = torch.zeros(10, 8)  # saved alongside when tune_mm_mlp_adapter
        path = save(tmp_path, "mm_projector.bin", state)
        module, info = build(weights=path)
        expected_info = dict(kind="mlp2x_gelu", in_dim=D_VISION, out_dim=D_LLM, weights=path, random=False, seed=None)
        assert info == expected_info
        x = features()
        expected = F.gelu(x @ w["0.weight"].T + w["0.bias"]) @ w["2.weight"].T + w["2.bias"]
        out = project(x, module)
        assert out.shape == (3, 16, D_LLM)
        torch.testing.assert_close(out, expected)

    def test_linear_llava_projector(self, tmp_path):
        w = linear_weights()
        path = save(tmp_path, "mm_projector.bin", {f"model.mm_projector.{k}": v for k, v in w.items()})
        module, info = build("linear", weights=path)
        x = features()
        torch.testing.assert_close(project(x, module), x @ w["weight"].T + w["bias"])
        assert info["out_dim"] == D_LLM

    @pytest.mark.parametrize("prefix", ["model.mm_projector.", "mm_projector.", "module.model.mm_projector.", ""])
    def test_key_prefixes_are_normalised(self, tmp_path, prefix):
        w = mlp_weights()
        path = save(tmp_path, "p.bin", {f"{prefix}{k}": v for k, v in w.items()})
        state = load_projector_state(path)
        assert set(state) == set(w) and all(torch.equal(state[k], w[k]) for k in w)

    @pytest.mark.parametrize("name", ["plain.pt", "plain.safetensors", "llava-bf16.bin"])
    def test_plain_state_dicts_and_stored_dtypes(self, tmp_path, name):
        w = mlp_weights()
        if "bf16" in name:
            w = {k: v.bfloat16() for k, v in w.items()}
        module, _ = build(weights=save(tmp_path, name, w))
        assert all(torch.equal(v, w[k].float()) for k, v in module.state_dict().items())
        assert module[0].weight.dtype == torch.float32

    def test_llm_dim_matching_the_weights_is_accepted(self, tmp_path):
        _, info = build(weights=save(tmp_path, "p.bin", mlp_weights()), llm_dim=D_LLM)
        assert info["out_dim"] == D_LLM

    def test_bf16_module_casts_its_input(self, tmp_path):
        module, _ = build(weights=save(tmp_path, "p.bin", mlp_weights()), dtype=torch.bfloat16)
        out = project(features(), module)
        assert out.dtype == torch.bfloat16 and module[0].weight.dtype == torch.bfloat16


def llava_checkpoint(folder, w: dict[str, torch.Tensor], shards=None, suffix=".safetensors", absent=()):
    """A whole LLaVA checkpoint as Hugging Face shards it: the LLM's keys, the vision tower's, the projector's
    (``model.mm_projector.*``), in ``shards`` (key lists; by default the projector shares a shard with the LLM), and
    the index naming each key's shard. Shards numbered (from 1) in ``absent`` are named but never written."""
    folder.mkdir()
    llm = {"model.embed_tokens.weight": torch.randn(10, D_LLM), "model.layers.0.mlp.up_proj.weight": torch.randn(4, 4),
           "lm_head.weight": torch.randn(10, D_LLM)}  # fmt: skip
    tower = {"model.vision_tower.vision_tower.vision_model.embeddings.class_embedding": torch.randn(D_VISION)}
    projector = {f"model.mm_projector.{k}": v for k, v in w.items()}
    state = llm | tower | projector
    shards = shards or [list(llm)[:1], list(llm)[1:] + list(projector), list(tower)]
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}{suffix}"
        weight_map |= dict.fromkeys(keys, name)
        if i + 1 not in absent:
            save(folder, name, {k: state[k] for k in keys})
    index = "model.safetensors.index.json" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_llama", "mm_projector_type": "mlp2x_gelu"}))
    return folder


class TestWholeLlavaCheckpoints:
    """``--projector-weights`` takes the checkpoint folder users download (or its index), not only the
    ``mm_projector.bin`` that LLaVA's pretraining stage writes."""

    def test_sharded_folder_equals_mm_projector_bin(self, tmp_path):
        w = mlp_weights()
        single = save(tmp_path, "mm_projector.bin", {f"model.mm_projector.{k}": v for k, v in w.items()})
        folder = llava_checkpoint(tmp_path / "llava-v1.6", w)
        (a, _), (b, info_b) = build(weights=single), build(weights=str(folder))
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in w)
        x = features()
        assert torch.equal(project(x, a), project(x, b))
        assert (info_b["in_dim"], info_b["out_dim"], info_b["weights"]) == (D_VISION, D_LLM, str(folder))

    def test_the_index_and_bin_shards(self, tmp_path):
        w = mlp_weights()
        folder = llava_checkpoint(tmp_path / "llava", w, suffix=".bin")
        state = load_projector_state(folder / "pytorch_model.bin.index.json")
        assert set(state) == set(w) and all(torch.equal(state[k], w[k]) for k in w)

    def test_only_the_projectors_shard_is_read(self, tmp_path):
        w = mlp_weights()
        keys = [f"model.mm_projector.{k}" for k in w]
        shards = [["model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"], keys,
                  ["model.vision_tower.vision_tower.vision_model.embeddings.class_embedding"]]  # fmt: skip
        folder = llava_checkpoint(tmp_path / "llava", w, shards=shards, absent=(1, 3))
        state = load_projector_state(folder)
        assert set(state) == set(w)

    def test_llava_hf_names(self, tmp_path):
        w = mlp_weights()
        names = {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias", "2.weight": "linear_2.weight",
                 "2.bias": "linear_2.bias"}  # fmt: skip
        path = save(tmp_path, "model.safetensors", {f"model.multi_modal_projector.{names[k]}": v for k, v in w.items()})
        module, _ = build(weights=path)
        assert all(torch.equal(module.state_dict()[k], w[k]) for k in w)

    def test_a_folder_without_a_projector(self, tmp_path):
        (tmp_path / "tower").mkdir()
        save(tmp_path / "tower", "model.safetensors", {"vision_model.embeddings.class_embedding": torch.zeros(4)})
        with pytest.raises(SlowfastError, match="has no mm_projector.* \\(LLaVA\\) or multi_modal_projector"):
            build(weights=str(tmp_path / "tower"))

    def test_a_missing_projector_shard_is_named(self, tmp_path):
        folder = llava_checkpoint(tmp_path / "llava", mlp_weights(), absent=(2,))
        with pytest.raises(SlowfastError, match="model-00002-of-00003.safetensors, which holds .* does not exist"):
            build(weights=str(folder))


class TestBadWeights:
    def test_vision_width_mismatch(self, tmp_path):
        path = save(tmp_path, "x.bin", mlp_weights(d_in=1024))
        with pytest.raises(SlowfastError, match="x.bin expect 1024-wide features but the vision tower gives 768"):
            build(weights=path, vision_width=768)

    def test_llm_dim_mismatch(self, tmp_path):
        with pytest.raises(SlowfastError, match="give 96-wide tokens but --llm-dim is 4096"):
            build(weights=save(tmp_path, "p.bin", mlp_weights()), llm_dim=4096)

    def test_linear_keys_for_mlp(self, tmp_path):
        path = save(tmp_path, "lin.bin", linear_weights())
        with pytest.raises(SlowfastError, match=r"keys bias, weight .*expects 0\.weight.*pass --projector linear"):
            build("mlp2x_gelu", weights=path)

    def test_mlp_keys_for_linear(self, tmp_path):
        path = save(tmp_path, "mlp.bin", mlp_weights())
        with pytest.raises(SlowfastError, match="pass --projector mlp2x_gelu"):
            build("linear", weights=path)

    def test_unrelated_keys_are_named(self, tmp_path):
        path = save(tmp_path, "odd.bin", {"encoder.layer.0.weight": torch.zeros(2, 2)})
        with pytest.raises(SlowfastError, match="have keys encoder.layer.0.weight"):
            build(weights=path)

    def test_inconsistent_shapes(self, tmp_path):
        w = mlp_weights()
        w["2.weight"] = torch.zeros(D_LLM, 7)
        with pytest.raises(SlowfastError, match="inconsistent shapes"):
            build(weights=save(tmp_path, "p.bin", w))

    def test_missing_file(self, tmp_path):
        with pytest.raises(SlowfastError, match="does not exist"):
            build(weights=str(tmp_path / "none.bin"))

    @pytest.mark.parametrize("name", ["corrupt.bin", "corrupt.safetensors"])
    def test_corrupt_file(self, tmp_path, name):
        (tmp_path / name).write_bytes(b"\x00garbage" * 20)
        with pytest.raises(SlowfastError, match="could not read projector weights") as err:
            build(weights=str(tmp_path / name))
        assert "weights_only" not in str(err.value) and "Python objects" not in str(err.value)

    def test_not_a_state_dict(self, tmp_path):
        torch.save([1, 2, 3], tmp_path / "list.pt")
        with pytest.raises(SlowfastError, match="holds no state dict"):
            read_weights(tmp_path / "list.pt")

    @pytest.mark.parametrize("name", ["mm_projector.bin", "plain.pt"])
    def test_python_objects_are_named_without_unsafe_advice(self, tmp_path, name):
        """torch's refusal advises ``weights_only=False``, which would run code from the file; the message names
        the file and says what it holds instead."""
        state = {f"model.mm_projector.{k}": v for k, v in mlp_weights().items()}
        state["step"] = fractions.Fraction(1, 3)
        path = tmp_path / name
        torch.save(state, path)
        with pytest.raises(SlowfastError) as err:
            build(weights=str(path))
        message = str(err.value)
        assert message.startswith(f"could not read projector weights file {path}: not a plain tensor file")
        assert "fractions.Fraction" in message and "expected a state dict" in message
        assert "weights_only" not in message and "can still be loaded" not in message

    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
    def test_torchscript_archive_gets_a_conversion_hint(self, tmp_path):
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "jit.pt"))
        with pytest.raises(SlowfastError, match="TorchScript archive.*torch.jit.load"):
            read_weights(tmp_path / "jit.pt")


class TestRandomAndIdentity:
    def test_random_projector_is_seeded_and_flagged(self):
        (a, info), (b, _) = (
            build(random_init=True, llm_dim=D_LLM, seed=3),
            build(random_init=True, llm_dim=D_LLM, seed=3),
        )
        assert info == dict(kind="mlp2x_gelu", in_dim=D_VISION, out_dim=D_LLM, weights=None, random=True, seed=3)
        x = features()
        assert torch.equal(project(x, a), project(x, b))
        c, _ = build(random_init=True, llm_dim=D_LLM, seed=4)
        assert not torch.equal(project(x, a), project(x, c))

    def test_random_projector_leaves_the_global_rng_alone(self):
        torch.manual_seed(5)
        expected = torch.rand(2)
        torch.manual_seed(5)
        build("linear", random_init=True, llm_dim=8)
        assert torch.equal(torch.rand(2), expected)

    @pytest.mark.parametrize("kind", ["mlp2x_gelu", "linear"])
    @pytest.mark.parametrize("cfg", [{}, {"random_init": True}, {"llm_dim": D_LLM}])
    def test_no_weights_needs_random_init_and_llm_dim(self, kind, cfg):
        """A usage error (exit code 2): preflight's rule (``preflight.check_projector``), applied here too."""
        with pytest.raises(ConfigError, match="--projector-weights PATH|--random-projector.*--llm-dim"):
            build(kind, **cfg)

    def test_weights_win_over_random_init(self, tmp_path):
        _, info = build(weights=save(tmp_path, "p.bin", mlp_weights()), random_init=True)
        assert info["random"] is False and info["seed"] is None

    def test_identity_keeps_the_features(self):
        module, info = build("identity", vision_width=D_VISION)
        x = features()
        assert torch.equal(project(x, module), x)
        assert (info["out_dim"], info["weights"], info["random"]) == (D_VISION, None, False)

    def test_identity_with_weights_is_a_usage_error(self, tmp_path):
        with pytest.raises(ConfigError, match="identity, which takes no weights"):
            build("identity", weights=save(tmp_path, "p.bin", mlp_weights()))

    def test_identity_with_another_llm_dim_is_a_usage_error(self):
        with pytest.raises(ConfigError, match="llm_dim \\(--llm-dim\\) is 4096 but .*identity keeps .*vision width 64"):
            build("identity", llm_dim=4096)

    def test_weights_that_do_not_fit_are_runtime_errors(self, tmp_path):
        """What a weights file holds is not a flag mistake: exit code 1, not 2."""
        with pytest.raises(SlowfastError) as err:
            build(weights=save(tmp_path, "x.bin", mlp_weights(d_in=1024)))
        assert not isinstance(err.value, ConfigError)

    def test_unknown_kind(self):
        with pytest.raises(ConfigError, match="identity, linear, mlp2x_gelu"):
            make_projector("qformer", 4, 4)
