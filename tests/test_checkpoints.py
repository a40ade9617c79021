"""Tower weights from where users have them: Hugging Face ``CLIPVisionModel`` state dicts and LLaVA checkpoints
(one file, a folder, sharded with an index) give the tokens transformers computes from the same weights.

The reference is ``transformers.CLIPVisionModel`` itself with random weights (every tensor perturbed, so that a
LayerNorm or a bias mapped to the wrong place shows). Our ``--layer k >= 0`` is its ``hidden_states[k + 1]``,
``--layer -k`` its ``hidden_states[-k]``, class token dropped. All on the CPU in fp32, without the network.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection
from transformers.initialization import no_init_weights

from slowfast_cli.checkpoints import (
    HFTower,
    find_hf_tower,
    hf_clip_to_open_clip,
    open_checkpoint,
    projector_keys,
    read_weights,
)
from slowfast_cli.checkpoints.hf import HF_GLOBAL
from slowfast_cli.config import EncoderCfg
from slowfast_cli.encoder.encoder import build_encoder
from slowfast_cli.errors import SlowfastError

CPU = torch.device("cpu")
TINY = "slowfast-tiny-vit"  # 64x64 input, 8x8 patches, 3 blocks of width 64, 2 heads (head_width 32), embed 32
TINY_HF = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2, image_size=64,
               patch_size=8, projection_dim=32)  # fmt: skip
LLAVA = "model.vision_tower.vision_tower."  # before the tower's own vision_model.* in a LLaVA checkpoint
RELATIVE = 1e-5  # the bound on |ours - transformers| / |transformers| (measured: ~3e-7)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn anew under ``seed``: matrices at 1/sqrt(fan-in), LayerNorm scales near 1, biases near
    0 but not 0 (transformers' own init sets LayerNorms to 1/0 and biases to 0, which would hide one loaded into the
    wrong place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise / (p.numel() // p.shape[0]) ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


def hf_tower(seed: int = 0, projection: bool = True, **config) -> torch.nn.Module:
    """A random ``CLIPVisionModel`` (``...WithProjection`` with ``projection``) of the tiny model's shape, or another
    one given by CLIPVisionConfig fields; transformers' own init is skipped (slow at ViT-L size, see ``randomised``)."""
    cfg = CLIPVisionConfig(**{**TINY_HF, **config})
    with no_init_weights():
        model = (CLIPVisionModelWithProjection if projection else CLIPVisionModel)(cfg)
    return randomised(model, seed)


def vision_model(hf: torch.nn.Module) -> CLIPVisionModel:
    """The ``CLIPVisionModel`` inside a ``...WithProjection``, or itself."""
    return getattr(hf, "vision_model", hf)


def tower_state(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint names as the hub (and transformers 4) have them: ``vision_model.*`` and, when the model has
    one, ``visual_projection.weight``; transformers 5's ``CLIPVisionModel`` itself saves them without the prefix."""
    state = {k: v.detach().contiguous() for k, v in hf.state_dict().items()}
    return state if "visual_projection.weight" in state else {f"vision_model.{k}": v for k, v in state.items()}


def llava_state(hf: torch.nn.Module, d_llm: int = 48, seed: int = 3) -> dict[str, torch.Tensor]:
    """A LLaVA checkpoint's keys: the tower (no projection), the mm_projector and some of the LLM's."""
    g = torch.Generator().manual_seed(seed)
    state = {LLAVA + k: v for k, v in tower_state(vision_model(hf)).items()}
    width = vision_model(hf).config.hidden_size
    state |= {
        "model.mm_projector.0.weight": torch.randn(d_llm, width, generator=g),
        "model.mm_projector.0.bias": torch.randn(d_llm, generator=g),
        "model.mm_projector.2.weight": torch.randn(d_llm, d_llm, generator=g),
        "model.mm_projector.2.bias": torch.randn(d_llm, generator=g),
        "model.embed_tokens.weight": torch.randn(11, d_llm, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(d_llm, d_llm, generator=g),
        "model.norm.weight": torch.ones(d_llm),
        "lm_head.weight": torch.randn(11, d_llm, generator=g),
    }
    return state


def save_sharded(
    folder: Path, state: dict[str, torch.Tensor], shards: int | list[list[str]] = 2, suffix=".safetensors", absent=()
) -> Path:
    """Write ``state`` as Hugging Face does a large model: shard files and an index naming each key's shard.

    ``shards``: a number of shards, the keys split in order (a tower's keys land in more than one), or the keys of
    each. Shards numbered (from 1) in ``absent`` are named by the index but never written, like the LLM's shards of
    a checkpoint downloaded in part.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(shards, int):
        keys, size = list(state), -(-len(state) // shards)
        shards = [keys[i * size : (i + 1) * size] for i in range(shards)]
    weight_map = {}
    for i, names in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}{suffix}"
        part = {k: state[k] for k in names}
        weight_map |= dict.fromkeys(part, name)
        if i + 1 in absent:
            continue
        if suffix == ".safetensors":
            save_file(part, folder / name)
        else:
            torch.save(part, folder / name)
    index = "model.safetensors.index.json" if suffix == ".safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


def encoder(path, model: str = TINY, layer: int = -2):
    return build_encoder(EncoderCfg(model=model, pretrained=str(path), layer=layer), CPU, torch.float32)


def pixels(size: int, n: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (B, 3, H, W) normalised


def reference(hf: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """transformers' hidden states: [0] the embeddings after pre_layrnorm, [i + 1] the output of layer i."""
    with torch.inference_mode():
        return vision_model(hf)(pixel_values=x, output_hidden_states=True).hidden_states


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def assert_tokens_match(e, hf, x: torch.Tensor, hidden_index: int) -> float:
    """Our tokens of ``e``'s block against ``hidden_states[hidden_index][:, 1:]``; returns the relative error."""
    with torch.inference_mode():
        ours = e._tokens(x)  # (B, N, D)
    ref = reference(hf, x)[hidden_index][:, 1:]
    assert ours.shape == ref.shape
    err = relative_error(ours, ref)
    assert err < RELATIVE, err
    return err


class TestHuggingFaceTowers:
    @pytest.mark.parametrize(
        "layout",
        ["transformers5.safetensors", "hub.bin", "with-projection.safetensors", "clip-model.pt", "save_pretrained"],
    )
    def test_layer_minus_2_equals_transformers(self, tmp_path, layout):
        hf = hf_tower(projection=layout != "transformers5.safetensors")
        path = tmp_path / layout
        if layout == "save_pretrained":
            hf.save_pretrained(path)  # transformers' own writer: model.safetensors and config.json in a folder
        elif layout == "transformers5.safetensors":
            save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)  # no prefix at all
        elif layout == "hub.bin":
            torch.save({f"vision_model.{k}": v for k, v in vision_model(hf).state_dict().items()}, path)
        elif layout == "clip-model.pt":  # a whole CLIPModel: the text tower's keys belong to another module
            state = tower_state(hf) | {
                "text_model.embeddings.token_embedding.weight": torch.zeros(10, 64),
                "text_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(4, 4),
                "text_projection.weight": torch.zeros(32, 64),
                "logit_scale": torch.tensor(4.6),
            }
            torch.save(state, path)
        else:
            save_file(tower_state(hf), path)
        e = encoder(path)
        assert e.quick_gelu and not e.random_weights  # HF CLIP's activation; the tiny model's own default is GELU
        assert_tokens_match(e, hf, pixels(64), -2)

    @pytest.mark.parametrize(("layer", "hidden_index"), [(0, 1), (1, 2), (2, 3), (-1, -1), (-2, -2), (-3, -3)])
    def test_layer_table(self, tmp_path, layer, hidden_index):
        """``--layer k >= 0`` is transformers' ``hidden_states[k + 1]``; ``--layer -k`` is ``hidden_states[-k]``."""
        hf = hf_tower()
        save_file(tower_state(hf), tmp_path / "w.safetensors")
        assert_tokens_match(encoder(tmp_path / "w.safetensors", layer=layer), hf, pixels(64), hidden_index)

    def test_encode_from_frames(self, tmp_path):
        """The whole encode path (uint8 frames, open_clip's preprocessing) on the mapped weights."""
        hf = hf_tower()
        save_file(tower_state(hf), tmp_path / "w.safetensors")
        e = encoder(tmp_path / "w.safetensors")
        frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        ref = reference(hf, e.preprocess(frames))[-2][:, 1:]
        assert relative_error(e.encode(frames), ref) < RELATIVE

    def test_gelu_towers_follow_their_config(self, tmp_path):
        """A tower trained with exact GELU says so in its config.json; QuickGELU would give other tokens."""
        hf = hf_tower(hidden_act="gelu")
        hf.save_pretrained(tmp_path / "gelu")
        e = encoder(tmp_path / "gelu")
        assert not e.quick_gelu
        assert_tokens_match(e, hf, pixels(64), -2)

    def test_projection_is_loaded_transposed(self, tmp_path):
        hf = hf_tower()
        state = tower_state(hf)
        tower = find_hf_tower(open_checkpoint(_saved(tmp_path, state)))
        mapped = hf_clip_to_open_clip(state, tower, "w")
        assert torch.equal(mapped["proj"], hf.visual_projection.weight.T)
        x = torch.randn(2, 64)
        torch.testing.assert_close(x @ mapped["proj"], hf.visual_projection(x))


def _saved(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "w.safetensors") -> Path:
    save_file(state, tmp_path / name)
    return tmp_path / name


class TestLlavaCheckpoints:
    def test_sharded_llava_folder(self, tmp_path):
        hf = hf_tower(projection=False)
        folder = save_sharded(tmp_path / "llava", llava_state(hf))
        (folder / "config.json").write_text(json.dumps({"model_type": "llava_llama", "hidden_act": "silu"}))
        e = encoder(folder)  # the LLM's hidden_act is not the tower's: QuickGELU stays
        assert e.quick_gelu
        assert_tokens_match(e, hf, pixels(64), -2)

    def test_half_precision_checkpoints(self, tmp_path):
        """LLaVA stores its weights in fp16 or bf16: they load into the fp32 tower as stored."""
        hf = hf_tower(projection=False)
        folder = save_sharded(tmp_path / "llava", {k: v.half() for k, v in llava_state(hf).items()})
        assert_tokens_match(encoder(folder), hf.half().float(), pixels(64), -2)

    def test_the_index_itself_and_bin_shards(self, tmp_path):
        hf = hf_tower(projection=False)
        folder = save_sharded(tmp_path / "llava", llava_state(hf), shards=3, suffix=".bin")
        assert_tokens_match(encoder(folder / "pytorch_model.bin.index.json"), hf, pixels(64), -2)

    def test_only_the_shards_holding_the_tower_are_read(self, tmp_path):
        """The LLM's shards need not be there: the tower in shards 1 and 2, the LLM's shard 3 never written."""
        hf = hf_tower(projection=False)
        state = llava_state(hf)
        tower = [k for k in state if k.startswith(LLAVA)]
        shards = [tower[:20], tower[20:], [k for k in state if k not in tower]]
        folder = save_sharded(tmp_path / "llava", state, shards, absent=(3,))
        assert_tokens_match(encoder(folder), hf, pixels(64), -2)

    def test_missing_tower_shard_is_named(self, tmp_path):
        folder = save_sharded(tmp_path / "llava", llava_state(hf_tower(projection=False)), shards=2, absent=(1,))
        with pytest.raises(SlowfastError, match="model-00001-of-00002.safetensors, which holds .* does not exist"):
            encoder(folder)

    def test_llm_keys_are_ignored_but_counted(self, tmp_path):
        state = llava_state(hf_tower(projection=False))
        tower = find_hf_tower(open_checkpoint(_saved(tmp_path, state)))
        assert tower.prefix == LLAVA + "vision_model."
        assert tower.ignored == 8 and all(k.startswith(LLAVA) for k in tower.keys)


class TestCommandLine:
    def test_encode_with_a_llava_checkpoint(self, tmp_path, small_video):
        """The tower and the projector out of one sharded LLaVA checkpoint, named by its index."""
        from typer.testing import CliRunner

        from slowfast_cli.cli.app import app

        hf = hf_tower(projection=False)
        folder = save_sharded(tmp_path / "llava", llava_state(hf, d_llm=48))
        index = folder / "model.safetensors.index.json"
        args = ["encode", str(small_video), "--config", "tiny", "--pretrained", str(index), "--projector",
                "mlp2x_gelu", "--projector-weights", str(index), "--device", "cpu", "--dtype", "fp32", "-o",
                str(tmp_path / "out.pt")]  # fmt: skip
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        saved = torch.load(tmp_path / "out.pt", weights_only=True)
        assert saved["tokens"].shape[-1] == 48 and saved["meta"]["pretrained"] == str(index)

    def test_encode_with_the_checkpoint_folder_as_the_readme_says(self, tmp_path, small_video):
        """`--pretrained FOLDER/ --projector-weights FOLDER/`, and the token file's provenance names the checkpoint
        by its index (a swapped shard is other weights)."""
        from typer.testing import CliRunner

        from slowfast_cli.cli.app import app
        from slowfast_cli.header import read_token_header

        folder = save_sharded(tmp_path / "llava-v1.6-vicuna-7b", llava_state(hf_tower(projection=False), d_llm=48))
        weights = ["--pretrained", f"{folder}/", "--projector", "mlp2x_gelu", "--projector-weights", f"{folder}/"]
        out = tmp_path / "o.pt"
        args = ["encode", str(small_video), "--config", "tiny", *weights, "--dtype", "fp32", "-o", str(out)]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        prov = read_token_header(out)["meta"]["provenance"]
        assert prov["weights"].startswith("index:sha256:") and prov["projector_weights"] == prov["weights"]


class TestWhatDoesNotMap:
    def test_an_unknown_key_is_named(self, tmp_path):
        state = tower_state(hf_tower())
        state["vision_model.encoder.layers.1.self_attn.rotary.weight"] = torch.zeros(2)
        with pytest.raises(SlowfastError, match=r"unexpected vision_model\.encoder\.layers\.1\.self_attn\.rotary"):
            encoder(_saved(tmp_path, state))

    def test_a_missing_key_is_named(self, tmp_path):
        state = tower_state(hf_tower())
        del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
        with pytest.raises(SlowfastError, match=r"missing vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias$"):
            encoder(_saved(tmp_path, state))

    def test_both_at_once_inside_a_llava_checkpoint(self, tmp_path):
        state = llava_state(hf_tower(projection=False))
        del state[LLAVA + "vision_model.pre_layrnorm.bias"]
        state[LLAVA + "vision_model.head.probe"] = torch.zeros(1, 1, 64)
        with pytest.raises(SlowfastError) as err:
            encoder(save_sharded(tmp_path / "llava", state))
        message = str(err.value)
        assert message.endswith(
            f"unexpected {LLAVA}vision_model.head.probe; missing {LLAVA}vision_model.pre_layrnorm.bias"
        )
        assert "model.mm_projector" not in message and "lm_head" not in message

    def test_every_block_must_be_complete(self):
        state = {f"vision_model.{k}": torch.zeros(1) for k in HF_GLOBAL}
        state["vision_model.encoder.layers.2.layer_norm1.weight"] = torch.zeros(1)  # blocks 0, 1 absent
        tower = HFTower("vision_model.", tuple(state), ignored=0)
        with pytest.raises(SlowfastError) as err:
            hf_clip_to_open_clip(state, tower, "w")
        assert "missing vision_model.encoder.layers.0." in str(err.value) and "(47 in all)" in str(err.value)

    def test_a_tower_without_the_block_taken_is_refused(self, tmp_path):
        """2 of the tiny model's 3 blocks: layer -1 (block 2) is missing; layer -2 (block 1) is all there, and the
        tower cut after it is the checkpoint's own (LLaVA's SigLIP checkpoints hold 26 of 27 layers the same way)."""
        tower = hf_tower(num_hidden_layers=2)
        path = _saved(tmp_path, tower_state(tower))
        with pytest.raises(SlowfastError) as err:
            encoder(path, layer=-1)
        assert "missing transformer.resblocks.2." in str(err.value)
        enc = encoder(path, layer=-2)
        x = pixels(enc.image_size[0])
        with torch.no_grad():
            expected = tower(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]
        torch.testing.assert_close(enc._tokens(x), expected, rtol=1e-5, atol=1e-5)

    def test_other_heads_in_the_config_are_refused(self, tmp_path):
        """4 heads of 16 instead of the tiny model's 2 of 32: the weights load but compute other numbers."""
        hf_tower(num_attention_heads=4).save_pretrained(tmp_path / "heads")
        with pytest.raises(SlowfastError, match="says 4 attention heads but slowfast-tiny-vit has 2"):
            encoder(tmp_path / "heads")

    def test_an_activation_open_clip_lacks_is_refused(self, tmp_path):
        hf_tower(hidden_act="gelu_new").save_pretrained(tmp_path / "act")
        with pytest.raises(SlowfastError, match="hidden_act 'gelu_new'.*quick_gelu or gelu only"):
            encoder(tmp_path / "act")

    def test_a_siglip_tower_into_a_clip_model_is_refused_with_the_reason(self, tmp_path):
        state = tower_state(hf_tower())
        del state["vision_model.embeddings.class_embedding"]  # Hugging Face naming without a class token: SigLIP's
        with pytest.raises(SlowfastError, match="hold a SigLIP tower but slowfast-tiny-vit is not a SigLIP model"):
            encoder(_saved(tmp_path, state))

    def test_a_folder_without_a_checkpoint_says_what_it_looked_for(self, tmp_path):
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "tower.safetensors").write_bytes(b"")
        with pytest.raises(SlowfastError, match="holds none of model.safetensors.index.json.*it has tower.safetensors"):
            encoder(tmp_path / "ckpt")

    def test_a_bad_index(self, tmp_path):
        (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
        with pytest.raises(SlowfastError, match="has no weight_map"):
            encoder(tmp_path)
        (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../elsewhere.safetensors"}}')
        with pytest.raises(SlowfastError, match="not files beside it"):
            encoder(tmp_path)

    def test_a_missing_index_is_a_missing_file(self, tmp_path):
        with pytest.raises(SlowfastError, match="does not exist"):
            encoder(tmp_path / "model.safetensors.index.json")


class TestReading:
    def test_safetensors_are_read_tensor_by_tensor(self, tmp_path):
        state = {"a": torch.arange(3.0), "module.b": torch.ones(2)}
        ckpt = open_checkpoint(_saved(tmp_path, state))
        assert ckpt.keys == ["a", "b"] and not ckpt.model_folder
        assert list(ckpt.read(["b"])) == ["b"] and torch.equal(ckpt.read(["b"])["b"], torch.ones(2))

    def test_a_folder_is_a_model(self, tmp_path):
        save_file({"a": torch.zeros(1)}, tmp_path / "model.safetensors")
        assert open_checkpoint(tmp_path).model_folder

    def test_read_weights_is_unchanged_for_files(self, tmp_path):
        torch.save({"state_dict": {"module.x": torch.ones(1)}, "epoch": 1}, tmp_path / "w.pt")
        assert list(read_weights(tmp_path / "w.pt")) == ["x"]

    def test_projector_keys(self):
        keys = ["model.mm_projector.0.weight", "multi_modal_projector.linear_2.bias", "model.norm.weight"]
        assert projector_keys(keys) == {"model.mm_projector.0.weight": "0.weight",
                                        "multi_modal_projector.linear_2.bias": "2.bias"}  # fmt: skip
        with pytest.raises(SlowfastError, match="two projectors"):
            projector_keys(["model.mm_projector.0.weight", "multi_modal_projector.linear_1.weight"])


class TestViTL14At336:
    """The tower SF-LLaVA and LLaVA-1.5/1.6 use, at its real size (24 blocks, width 1024, 14-pixel patches, 336
    input), from a sharded LLaVA checkpoint, against transformers on the same weights."""

    def test_llava_tower_equals_transformers(self, tmp_path):
        cfg = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14)  # fmt: skip
        hf = hf_tower(projection=False, **cfg)
        folder = save_sharded(tmp_path / "llava-v1.6", llava_state(hf, d_llm=64))
        e = encoder(folder, model="ViT-L-14-336")
        assert (e.grid, e.width, e.block_index) == ((24, 24), 1024, 22)
        x = pixels(336, n=1)
        hidden = reference(hf, x)
        assert relative_error(e._tokens(x), hidden[-2][:, 1:]) < RELATIVE  # --layer -2, block 22
        with torch.inference_mode():  # the layer table: blocks 0 and 11 are hidden_states[1] and [12]
            out = e.visual.forward_intermediates(
                x, indices=[0, 11], stop_early=True, intermediates_only=True, output_fmt="NLC"
            )
        for block, ours in zip((0, 11), out["image_intermediates"]):
            assert relative_error(ours, hidden[block + 1][:, 1:]) < RELATIVE, block
