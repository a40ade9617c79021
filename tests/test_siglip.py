"""timm ViT towers inside open_clip: SigLIP (the towers of LLaVA-OneVision and LLaVA-Video), SigLIP 2, EVA, PE-Core.

They are built through open_clip (``--pretrained none``: timm's random init under seed 0); the tokens of any block
come from timm's ``forward_intermediates``. ViT-B-16-SigLIP (224 px, 16-px patches, 12 blocks, the smallest SigLIP
in open_clip) runs on the CPU; every other timm ViT that open_clip names is built on the meta device (shapes only,
no memory, no arithmetic) to check what ``budget`` says about it without timm. The network is off.
"""

from __future__ import annotations

import functools
import socket
from functools import partial, reduce

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from slowfast_cli.config import EncoderCfg, resolve_config
from slowfast_cli.encoder import towers
from slowfast_cli.encoder.encoder import build_encoder
from slowfast_cli.encoder.towers import register_own_models
from slowfast_cli.errors import ConfigError, SlowfastError
from slowfast_cli.models import TIMM_VITS, model_grid, vision_config
from slowfast_cli.preflight import preflight

SIGLIP = "ViT-B-16-SigLIP"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@functools.cache
def siglip(layer: int = -2, dtype: torch.dtype = torch.float32, resize: str = "shortest"):
    """ViT-B-16-SigLIP at random init, built once per setting (encoders are only read)."""
    return build_encoder(EncoderCfg(model=SIGLIP, pretrained="none", layer=layer, resize=resize), CPU, dtype)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """open_clip's own whole SigLIP at random init under ``manual_seed(0)``: its vision tower, nothing pruned."""
    register_own_models()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return open_clip.create_model(SIGLIP).visual.eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.normal(0, 1, (2, 3, 224, 224)).astype(np.float32))  # (B, 3, H, W) normalized


def open_clip_timm_vits() -> list[str]:
    """One open_clip model for each timm ViT that open_clip's configs name and budget accepts."""
    first = {}
    for model in open_clip.list_models():
        name = open_clip.get_model_config(model)["vision_cfg"].get("timm_model_name")
        if name and name not in first:
            try:
                vision_config(model)
            except ConfigError:
                continue
            first[name] = model
    return sorted(first.values())


class TestBudget:
    """Grid, blocks and width of timm towers without timm or torch: what ``slowfast budget`` and preflight use."""

    def test_so400m_at_384_is_27x27(self):
        vision = vision_config("ViT-SO400M-14-SigLIP-384")
        assert model_grid("ViT-SO400M-14-SigLIP-384") == (27, 27)  # 384 // 14: N = 729, an odd count
        assert (vision["layers"], vision["width"], vision["patch_size"], vision["image_size"]) == (27, 1152, 14, 384)

    @pytest.mark.parametrize(
        ("model", "grid"),
        [("ViT-B-16-SigLIP", (14, 14)), ("ViT-SO400M-14-SigLIP2-378", (27, 27)), ("ViT-B-32-SigLIP2-256", (8, 8)),
         ("ViT-SO400M-16-SigLIP2-512", (32, 32)), ("EVA02-L-14-336", (24, 24)), ("PE-Core-L-14-336", (24, 24))],
    )  # fmt: skip
    def test_grids(self, model, grid):
        assert model_grid(model) == grid

    @pytest.mark.parametrize("model", open_clip_timm_vits())
    def test_every_timm_vit_agrees_with_timm(self, model):
        """Built on the meta device: timm's own numbers equal budget's, and block -2's tokens are (B, Gh*Gw, D),
        the prefix tokens (EVA's class token; none in SigLIP) dropped."""
        vision, cfg = vision_config(model), open_clip.get_model_config(model)
        with torch.device("meta"):
            visual = towers._vision_tower(model, cfg, False, None)
            g = towers.adapter_for(visual, model)[1]
            tokens = visual.forward_intermediates(
                torch.empty(1, 3, *g.image_size), indices=[g.blocks - 2], intermediates_only=True, output_fmt="NLC"
            )["image_intermediates"][0]
        assert (g.grid, g.blocks, g.width, g.image_size[0]) == (
            model_grid(model), vision["layers"], vision["width"], vision["image_size"]
        )  # fmt: skip
        assert g.patch_size == (vision["patch_size"],) * 2 and g.timm_model == cfg["vision_cfg"]["timm_model_name"]
        assert tokens.shape == (1, g.grid[0] * g.grid[1], g.width)

    def test_every_table_entry_is_used_by_open_clip(self):
        bases = {vision_config(m)["timm_model_name"].rsplit("_", 1)[0] for m in open_clip_timm_vits()}
        assert set(TIMM_VITS) <= bases

    @pytest.mark.parametrize(
        ("model", "timm"),
        [("convnext_base", "convnext_base"), ("ViTamin-B", "vitamin_base_224"), ("MobileCLIP-B", "vit_base_mci_224"),
         ("swin_base_patch4_window7_224", "swin_base_patch4_window7_224")],
        ids=["convnext", "hybrid-stem", "mobileclip", "swin"],
    )  # fmt: skip
    def test_other_timm_towers_are_refused(self, model, timm):
        with pytest.raises(ConfigError, match=rf"has a timm tower \({timm}\), not an open_clip ViT.*SigLIP"):
            vision_config(model)
        with pytest.raises(SlowfastError, match="not an open_clip ViT"):
            build_encoder(EncoderCfg(model=model, pretrained="none"), CPU, torch.float32)

    def test_preflight_knows_so400m(self):
        overrides = {"model": "ViT-SO400M-14-SigLIP-384", "pretrained": "none", "slow_pool": "none"}
        assert preflight(resolve_config(None, overrides)) == (27, 27)
        with pytest.raises(ConfigError, match=r"odd count \(729\)"):  # 1d pools pair tokens: 729 has no pairing
            preflight(resolve_config(None, {**overrides, "slow_pool": "1d_max"}))
        with pytest.raises(ConfigError, match=r"which has 27 blocks: use -27\.\.-1 .*0\.\.26"):
            preflight(resolve_config(None, {**overrides, "layer": 27}))
        assert preflight(resolve_config(None, {**overrides, "layer": -27})) == (27, 27)
        with pytest.raises(ConfigError, match="vision width 1152"):
            preflight(resolve_config(None, {**overrides, "llm_dim": 1024}))


class TestMetaBuild:
    """A tower to be filled from a checkpoint is built on the meta device (no wasted init), unless it has buffers,
    which checkpoints do not hold (PE-Core's and EVA-02's rotary tables): those are built for real."""

    def test_a_siglip_tower_is_built_on_meta(self):
        cfg = towers.model_config(SIGLIP)
        visual, _, _ = towers.build_tower(SIGLIP, cfg, False, torch.float32, random_init=False)
        assert all(p.is_meta for p in visual.parameters())

    def test_a_tower_with_rotary_buffers_is_built_for_real(self):
        model = "PE-Core-T-16-384"
        cfg = towers.model_config(model)
        visual, _, _ = towers.build_tower(model, cfg, False, torch.float32, random_init=False)
        reference, _, _ = towers.build_tower(model, cfg, False, torch.float32)
        buffers = dict(reference.named_buffers())
        assert buffers and not any(b.is_meta for b in visual.buffers())
        assert all(torch.equal(b, buffers[name]) for name, b in visual.named_buffers())


class TestTower:
    def test_geometry(self):
        e = siglip()
        assert (e.grid, e.image_size, e.patch_size, e.width) == ((14, 14), (224, 224), (16, 16), 768)
        assert e.grid == model_grid(SIGLIP) and e.timm_model == "vit_base_patch16_siglip_224"
        assert e.visual.trunk.num_prefix_tokens == 0 and not e.quick_gelu
        assert (e.block_index, len(e.visual.trunk.blocks)) == (10, 11)  # -2: the penultimate of 12 blocks
        assert e.visual.trunk.attn_pool is None  # the pooling head, the final norm and the head are pruned

    def test_random_init_is_open_clips_own_under_seed_0(self, reference):
        ours = siglip(layer=-1).visual.state_dict()
        theirs = reference.state_dict()
        assert len(ours) > 100 and all(torch.equal(v, theirs[k]) for k, v in ours.items())

    @pytest.mark.parametrize(("layer", "block"), [(-2, 10), (-1, 11), (0, 0)])
    def test_layer_k_is_timms_forward_intermediates(self, reference, pixels, layer, block):
        """Our tokens of ``layer`` are timm's ``forward_intermediates(indices=[block])`` on the whole tower, and the
        whole sequence of that block's output (a hook): SigLIP has no class token, nothing is dropped."""
        e = siglip(layer=layer)
        assert e.block_index == block
        with torch.inference_mode():
            ours = e._tokens(pixels)
            timm_out = reference.trunk.forward_intermediates(
                pixels, indices=[block], intermediates_only=True, output_fmt="NLC"
            )[0]
            seen = {}
            hook = reference.trunk.blocks[block].register_forward_hook(lambda m, i, out: seen.update(out=out))
            reference(pixels)
            hook.remove()
        assert ours.shape == (2, 196, 768)
        assert torch.equal(ours, timm_out) and torch.equal(ours, seen["out"])

    def test_encode_runs_the_whole_path(self):
        frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 90, 160, 3), dtype=np.uint8))
        e = siglip()
        tokens = e.encode(frames, batch_frames=2)
        assert tokens.shape == (3, 196, 768) and tokens.dtype == torch.float32
        assert torch.equal(tokens, e._tokens(e.preprocess(frames)))

    def test_low_precision_casts_the_whole_timm_tower(self):
        frames = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
        low = siglip(dtype=torch.bfloat16)
        assert {p.dtype for p in low.visual.parameters()} == {torch.bfloat16}  # as open_clip's precision="bf16"
        full, half = siglip().encode(frames, batch_frames=2), low.encode(frames, batch_frames=2)  # no padded frames
        assert half.dtype == torch.bfloat16
        assert ((half.float() - full).norm() / full.norm()) < 0.05  # measured 1.1%


def tower_of(model: torch.nn.Module) -> torch.nn.Module:
    """The module with ``embeddings``/``encoder``/``head``: ``vision_model`` in transformers 4, the model in 5."""
    return getattr(model, "vision_model", model)


def hf_siglip_from(reference: torch.nn.Module):
    """transformers' ``SiglipVisionModel`` with the reference tower's weights (timm names mapped to HF's).

    timm's original SigLIP definitions (vit_base_patch16_siglip_224, vit_so400m_patch14_siglip_384, ...) use the
    exact GELU; Hugging Face's SigLIP configs, and so LLaVA-NeXT's tower, the tanh approximation
    (gelu_pytorch_tanh). The model here takes timm's activation, so that the comparison tests the wiring (blocks,
    attention, which hidden state); the activation alone moves layer -2 by 2.5e-4 (relative, random weights).
    """
    from transformers import SiglipVisionConfig, SiglipVisionModel

    trunk = reference.trunk
    cfg = SiglipVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
        patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6, attn_implementation="eager",
    )  # fmt: skip
    state = {
        "embeddings.patch_embedding.weight": trunk.patch_embed.proj.weight,
        "embeddings.patch_embedding.bias": trunk.patch_embed.proj.bias,
        "embeddings.position_embedding.weight": trunk.pos_embed[0],
    }
    for i, block in enumerate(trunk.blocks):
        hf = f"encoder.layers.{i}."
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        pairs = {
            "layer_norm1": block.norm1, "layer_norm2": block.norm2, "self_attn.out_proj": block.attn.proj,
            "mlp.fc1": block.mlp.fc1, "mlp.fc2": block.mlp.fc2,
        }  # fmt: skip
        for name, module in pairs.items():
            state[f"{hf}{name}.weight"], state[f"{hf}{name}.bias"] = module.weight, module.bias
        for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            state[f"{hf}self_attn.{name}.weight"], state[f"{hf}self_attn.{name}.bias"] = w, b
    model = SiglipVisionModel(cfg).eval()
    result = tower_of(model).load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert {k.split(".")[0] for k in result.missing_keys} <= {"post_layernorm", "head"}  # unused by block outputs
    return model


class TestAgainstTransformers:
    def test_penultimate_is_what_llava_nexts_siglip_tower_takes(self, reference, pixels):
        """LLaVA-NeXT's SigLipVisionTower (llava/model/multimodal_encoder/siglip_encoder.py) deletes the last of the
        encoder's layers and takes ``hidden_states[-1]``: the output of block L-2 (0-based; 25 of SO400M's 27),
        before the post-layernorm, all tokens (no class token). That is our ``--layer -2``, and HF's
        ``hidden_states[k + 1]`` is our layer k (``hidden_states[0]`` is the embeddings)."""
        hf = hf_siglip_from(reference)
        with torch.inference_mode():
            states = hf(pixel_values=pixels, output_hidden_states=True).hidden_states
            ours = {k: siglip(layer=k)._tokens(pixels) for k in (-2, -1, 0)}
            del tower_of(hf).encoder.layers[-1:]  # what LLaVA-NeXT's load_model does
            tower_of(hf).head = torch.nn.Identity()
            llava_next = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        for k, tokens in ours.items():
            torch.testing.assert_close(tokens, states[k % 12 + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[-2], llava_next, rtol=1e-5, atol=1e-5)
        assert llava_next.shape == (2, 196, 768)


def llava_next_siglip_processor(image: Image.Image, size: int) -> np.ndarray:
    """LLaVA-NeXT's ``SigLipImageProcessor.preprocess`` for one image (siglip_encoder.py), transcribed."""
    from transformers.image_transforms import convert_to_rgb, normalize, rescale, resize, to_channel_dimension_format
    from transformers.image_utils import ChannelDimension, PILImageResampling, to_numpy_array

    first = ChannelDimension.FIRST
    transforms = [
        convert_to_rgb,
        to_numpy_array,
        partial(resize, size=(size, size), resample=PILImageResampling.BICUBIC, data_format=first),
        partial(rescale, scale=1 / 255, data_format=first),
        partial(normalize, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), data_format=first),
        partial(to_channel_dimension_format, channel_dim=first, input_channel_dim=first),
    ]
    return reduce(lambda x, f: f(x), transforms, image)


class TestPreprocess:
    """SigLIP's own preprocessing, from open_clip's preprocess cfg for its tag: squash with PIL bicubic, mean/std
    0.5, whatever ``encoder.resize`` says (``shortest`` means the model's own, which for SigLIP is a squash)."""

    def test_settings_come_from_the_tag(self):
        cfg = siglip().preprocess_cfg
        assert (cfg["resize_mode"], cfg["interpolation"], cfg["mean"], cfg["std"]) == (
            "squash", "bicubic", (0.5,) * 3, (0.5,) * 3
        )  # fmt: skip
        assert siglip(resize="squash").preprocess_cfg == cfg

    @pytest.mark.parametrize("hw", [(360, 640), (640, 360), (50, 70), (224, 224), (224, 500)], ids=str)
    def test_bit_identical_to_open_clip_and_llava_next(self, hw):
        e = siglip(layer=0)
        rng = np.random.default_rng(hw[0])
        image = (rng.random((*hw, 3)) * 64 + np.linspace(0, 190, hw[1])[None, :, None]).astype(np.uint8)
        ours = e.preprocess(torch.from_numpy(image)[None])[0]
        transform = image_transform_v2(PreprocessCfg(**e.preprocess_cfg), is_train=False)
        assert torch.equal(ours, transform(Image.fromarray(image)))
        assert torch.equal(ours, torch.from_numpy(llava_next_siglip_processor(Image.fromarray(image), 224)))
