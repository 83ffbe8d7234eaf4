"""Tests for vitlab.pretrained: converters, position-embedding resampling, safe loading and the registry.

Every converter is checked numerically against the library the layout comes from: a small
reference model (timm, torchvision, Hugging Face transformers, or a Google JAX ``.npz``
written here from a timm model by independent reshaping) is filled with random weights,
saved, loaded with :func:`load_pretrained`, and must give the same logits (max |diff| <= 1e-5
in float32). One test uses the real ViT-Ti/16 AugReg weights from the shared folder and
classifies 17 ImageNet photos; it is skipped only when the shared files are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import shared_dir
from vitlab.model import ViT
from vitlab.pretrained import (
    WEIGHTS,
    WeightsError,
    convert,
    detect_format,
    get_weights,
    infer_config,
    load_pretrained,
    read_weights_file,
    resample_pos_embed,
)
from vitlab.pretrained.load import find_weights_file

timm_vit = pytest.importorskip("timm.models.vision_transformer")
from timm.layers import resample_abs_pos_embed  # noqa: E402  (after the importorskip)

TINY_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
ATOL = 1e-5

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Small models: one intra-op thread is fastest and immune to a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Every parameter random (CLS token, position table and head included; norm weights around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
            if "norm" in name.lower() and name.endswith("weight"):
                noise = noise + 1.0
            p.copy_(noise)
    return model.eval()


def timm_tiny(seed: int = 0, **kwargs) -> nn.Module:
    """A random timm ViT: 32x32 RGB, patch 8, dim 64, 2 blocks, 4 heads (head width 16, not 64), 7 classes."""
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=7)
    return randomize_(timm_vit.VisionTransformer(**{**args, **kwargs}), seed=seed)


def images(batch: int = 3, size: tuple[int, int] = (32, 32), seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path


def assert_same(ours: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> None:
    """Equal within ``atol``, and large enough that equality means something."""
    assert ours.shape == ref.shape
    assert ref.abs().max() > 0.05, "reference output is too small for a meaningful comparison"
    diff = (ours - ref).abs().max().item()
    assert diff <= atol, f"max |diff| {diff:.3g} > {atol}"


# ----------------------------------------------------------------------------- 1-2. timm


TIMM_VARIANTS = {
    "cls": dict(),
    "gap-no-cls": dict(class_token=False, global_pool="avg", fc_norm=False),
    "no-qkv-bias-mlp2": dict(qkv_bias=False, mlp_ratio=2.0),
    "no-embed-class": dict(no_embed_class=True),  # pos embed without a CLS slot (DeiT-3, big_vision)
}


@pytest.mark.parametrize("kwargs", list(TIMM_VARIANTS.values()), ids=list(TIMM_VARIANTS))
def test_timm_checkpoint_same_logits(tmp_path: Path, kwargs: dict) -> None:
    ref = timm_tiny(**kwargs)
    path = save_safetensors(ref.state_dict(), tmp_path / "tiny_timm.safetensors")
    model, info = load_pretrained(path, num_heads=4)
    assert info.source_format == "timm" and not model.training
    cfg = info.config
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_classes) == ((32, 32), (8, 8), 64, 2, 4, 7)
    assert cfg.norm_eps == 1e-6 and cfg.class_token == kwargs.get("class_token", True)
    assert cfg.qkv_bias == kwargs.get("qkv_bias", True) and cfg.mlp_ratio == kwargs.get("mlp_ratio", 4.0)
    assert info.dropped == {} and len(info.classes) == 7
    assert not any("resampled" in c or "head" in c for c in info.changes)
    x = images()
    with torch.no_grad():
        assert_same(model(x), ref(x))
        assert_same(model.forward_features(x)[:, -16:], ref.forward_features(x)[:, -16:])


def test_timm_no_embed_class_gets_zero_cls_slot(tmp_path: Path) -> None:
    """No CLS position (added after the table in timm) is the same as a zero CLS slot in ours."""
    ref = timm_tiny(no_embed_class=True)
    assert ref.pos_embed.shape == (1, 16, 64)
    path = save_safetensors(ref.state_dict(), tmp_path / "tiny_timm_nec.safetensors")
    model, info = load_pretrained(path, num_heads=4)
    assert info.config.img_size == (32, 32) and model.pos_embed.shape == (1, 17, 64)
    assert torch.equal(model.pos_embed[:, 0].detach(), torch.zeros(1, 64))
    assert torch.equal(model.pos_embed[:, 1:].detach(), ref.pos_embed.detach())


def test_timm_no_embed_class_resampled(tmp_path: Path) -> None:
    """A no_embed_class checkpoint at another size matches timm resampling its CLS-free table."""
    src = timm_tiny(no_embed_class=True)
    path = save_safetensors(src.state_dict(), tmp_path / "tiny_timm_nec.safetensors")
    model, info = load_pretrained(path, num_heads=4, img_size=48)
    ref = timm_tiny(no_embed_class=True, img_size=48, seed=5)
    state = dict(src.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [6, 6], [4, 4], num_prefix_tokens=0)
    ref.load_state_dict(state)
    x = images(size=(48, 48))
    with torch.no_grad():
        assert_same(model(x), ref(x))


def test_timm_pth_wrapped_in_model_key(tmp_path: Path) -> None:
    """DeiT-style ``{"model": state}`` and DataParallel ``module.`` prefixes are unwrapped."""
    ref = timm_tiny(seed=3)
    path = tmp_path / "tiny_wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    model, info = load_pretrained(path, num_heads=4)
    x = images()
    with torch.no_grad():
        assert_same(model(x), ref(x))


def test_head_count_matters(tmp_path: Path) -> None:
    """Without num_heads the fused qkv cannot reveal 4 heads (default: width 64 -> 1 head): logits differ.

    Shows the timm/torchvision/HF comparisons above would catch a wrong head count.
    """
    ref = timm_tiny()
    path = save_safetensors(ref.state_dict(), tmp_path / "tiny_timm.safetensors")
    model, info = load_pretrained(path)
    assert info.config.num_heads == 1
    x = images()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() > 1e-3


def test_timm_resampled_to_non_square(tmp_path: Path) -> None:
    """A square 32x32 checkpoint loaded at 32x48: position table = timm's bicubic resampling, same logits."""
    src = timm_tiny()
    path = save_safetensors(src.state_dict(), tmp_path / "tiny_timm.safetensors")
    model, info = load_pretrained(path, num_heads=4, img_size=(32, 48))
    assert info.config.img_size == (32, 48) and model.pos_embed.shape == (1, 1 + 4 * 6, 64)
    assert info.preprocessing.crop_size == (32, 48)
    assert any("resampled" in c and "4x4" in c and "4x6" in c for c in info.changes)
    expected = resample_abs_pos_embed(src.pos_embed.detach(), [4, 6], [4, 4], num_prefix_tokens=1)
    assert_same(model.pos_embed.detach(), expected)
    ref = timm_tiny(img_size=(32, 48), seed=9)
    ref.load_state_dict({**src.state_dict(), "pos_embed": expected})
    x = images(size=(32, 48))
    with torch.no_grad():
        assert_same(model(x), ref(x))



def test_infer_config_non_square_with_img_size() -> None:
    ref = timm_tiny(img_size=(32, 40))  # 4x5 grid: 20 patches + CLS = 21 positions
    state = convert(ref.state_dict()).state
    cfg = infer_config(state, num_heads=4, img_size=(32, 40))
    assert cfg.img_size == (32, 40)
    model = ViT(cfg).eval()
    model.load_state_dict(state)
    x = images(size=(32, 40))
    with torch.no_grad():
        assert_same(model(x), ref(x))


def test_load_non_square_checkpoint_at_its_own_size(tmp_path: Path) -> None:
    ref = timm_tiny(img_size=(32, 40))
    path = save_safetensors(ref.state_dict(), tmp_path / "tiny_timm_32x40.safetensors")
    model, info = load_pretrained(path, num_heads=4, img_size=(32, 40))
    assert info.config.img_size == (32, 40) and not any("resampled" in c for c in info.changes)
    assert torch.equal(model.pos_embed.detach(), ref.pos_embed.detach())
    x = images(size=(32, 40))
    with torch.no_grad():
        assert_same(model(x), ref(x))


def test_timm_non_square_grid_not_mistaken_for_no_embed_class(tmp_path: Path) -> None:
    ref = timm_tiny(img_size=(32, 48))
    assert ref.pos_embed.shape == (1, 25, 64)
    path = save_safetensors(ref.state_dict(), tmp_path / "tiny_timm_32x48.safetensors")
    model, info = load_pretrained(path, num_heads=4, img_size=(32, 48))
    assert info.config.img_size == (32, 48)
    assert torch.equal(model.pos_embed.detach(), ref.pos_embed.detach())
    x = images(size=(32, 48))
    with torch.no_grad():
        assert_same(model(x), ref(x))


# ----------------------------------------------------------------------------- 3. torchvision


def test_torchvision_checkpoint_same_logits(tmp_path: Path) -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    ref = randomize_(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                       mlp_dim=128, num_classes=7), seed=4)
    path = tmp_path / "tiny_tv.pth"
    torch.save(ref.state_dict(), path)
    model, info = load_pretrained(path, num_heads=4)
    assert info.source_format == "torchvision" and info.dropped == {}
    assert info.config.mlp_ratio == 2.0 and info.config.norm_eps == 1e-6 and info.config.num_classes == 7
    x = images()
    with torch.no_grad():
        assert_same(model(x), ref(x))


def test_torchvision_pre_logits_dropped() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    ref = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=4, hidden_dim=64, mlp_dim=128,
                            num_classes=7, representation_size=32)
    converted = convert(ref.state_dict())
    assert converted.source_format == "torchvision"
    assert {"heads.pre_logits.weight", "heads.pre_logits.bias"} <= set(converted.dropped)


# ----------------------------------------------------------------------------- 4. Hugging Face


def hf_config(**kwargs):
    transformers = pytest.importorskip("transformers")
    return transformers, transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=128, num_labels=7, **kwargs)


def hf_save_pretrained(model: nn.Module, folder: Path) -> Path:
    """The file ``save_pretrained`` writes: the layout of the checkpoints on the Hugging Face Hub."""
    model.save_pretrained(folder, safe_serialization=True)
    return folder / "model.safetensors"


def test_hf_classifier_same_logits(tmp_path: Path) -> None:
    transformers, config = hf_config()
    ref = randomize_(transformers.ViTForImageClassification(config), seed=6)
    path = hf_save_pretrained(ref, tmp_path / "hf")
    keys = set(read_weights_file(path)[0])
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys  # the Hub layout
    model, info = load_pretrained(path, num_heads=4)
    assert info.source_format == "hf"
    assert info.config.norm_eps == 1e-12 == config.layer_norm_eps  # too small to show in the logits: checked here
    assert info.config.num_classes == 7 and info.dropped == {}
    assert info.preprocessing.mean == (0.5, 0.5, 0.5)
    x = images()
    with torch.no_grad():
        assert_same(model(x), ref(pixel_values=x).logits)


def test_hf_model_with_pooler(tmp_path: Path) -> None:
    transformers, config = hf_config()
    ref = randomize_(transformers.ViTModel(config, add_pooling_layer=True), seed=7)
    path = hf_save_pretrained(ref, tmp_path / "hf")
    converted = convert(read_weights_file(path)[0])
    assert converted.source_format == "hf"
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(converted.dropped)
    assert not any(k.startswith("pooler") for k in converted.state)
    model, info = load_pretrained(path, num_heads=4)
    assert info.config.num_classes == 0 and "pooler.dense.weight" in info.dropped
    x = images()
    with torch.no_grad():
        assert_same(model.forward_features(x), ref(pixel_values=x).last_hidden_state)


def test_hf_in_memory_state_dict(tmp_path: Path) -> None:
    """``save_file(model.state_dict())`` of a transformers ViT (not save_pretrained) loads too."""
    transformers, config = hf_config()
    ref = randomize_(transformers.ViTForImageClassification(config), seed=6)
    path = save_safetensors(ref.state_dict(), tmp_path / "tiny_hf.safetensors")
    model, info = load_pretrained(path, num_heads=4)
    assert info.source_format == "hf" and info.config.norm_eps == 1e-12
    x = images()
    with torch.no_grad():
        assert_same(model(x), ref(pixel_values=x).logits)


# ----------------------------------------------------------------------------- 5. Google .npz


def write_google_npz(state: dict[str, torch.Tensor], path: Path, heads: int, depth: int) -> Path:
    """Google's JAX layout, written from a timm state dict by plain numpy reshaping (not our converter)."""
    t = {k: v.detach().numpy().astype(np.float32) for k, v in state.items()}
    dim = t["cls_token"].shape[-1]
    hd = dim // heads
    rng = np.random.default_rng(0)
    out = {
        "embedding/kernel": t["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # (D, C, ph, pw) -> HWIO
        "embedding/bias": t["patch_embed.proj.bias"],
        "cls": t["cls_token"],
        "Transformer/posembed_input/pos_embedding": t["pos_embed"],
        "Transformer/encoder_norm/scale": t["norm.weight"],
        "Transformer/encoder_norm/bias": t["norm.bias"],
        "head/kernel": t["head.weight"].T,
        "head/bias": t["head.bias"],
        "pre_logits/kernel": rng.standard_normal((dim, dim)).astype(np.float32),
        "pre_logits/bias": rng.standard_normal(dim).astype(np.float32),
    }
    for i in range(depth):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[p + "LayerNorm_0/scale"], out[p + "LayerNorm_0/bias"] = t[b + "norm1.weight"], t[b + "norm1.bias"]
        out[p + "LayerNorm_2/scale"], out[p + "LayerNorm_2/bias"] = t[b + "norm2.weight"], t[b + "norm2.bias"]
        weights = np.split(t[b + "attn.qkv.weight"], 3)  # 3 x (D_out, D_in), out index = head * hd + j
        biases = np.split(t[b + "attn.qkv.bias"], 3)
        for name, w, bias in zip(("query", "key", "value"), weights, biases):
            out[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(dim, heads, hd)
            out[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = bias.reshape(heads, hd)
        out[p + "MultiHeadDotProductAttention_1/out/kernel"] = t[b + "attn.proj.weight"].T.reshape(heads, hd, dim)
        out[p + "MultiHeadDotProductAttention_1/out/bias"] = t[b + "attn.proj.bias"]
        out[p + "MlpBlock_3/Dense_0/kernel"], out[p + "MlpBlock_3/Dense_0/bias"] = t[b + "mlp.fc1.weight"].T, t[b + "mlp.fc1.bias"]
        out[p + "MlpBlock_3/Dense_1/kernel"], out[p + "MlpBlock_3/Dense_1/bias"] = t[b + "mlp.fc2.weight"].T, t[b + "mlp.fc2.bias"]
    np.savez(path, **out)
    return path


def test_google_npz_same_logits(tmp_path: Path) -> None:
    ref = timm_tiny(seed=8)
    path = write_google_npz(ref.state_dict(), tmp_path / "tiny_google.npz", heads=4, depth=2)
    tensors, _ = read_weights_file(path)
    assert detect_format(tensors) == "npz"
    converted = convert(tensors)
    assert converted.num_heads == 4
    model, info = load_pretrained(path)  # no num_heads: the (D, H, hd) query kernel tells
    assert info.source_format == "npz" and info.config.num_heads == 4
    assert {"pre_logits/kernel", "pre_logits/bias"} <= set(info.dropped)
    assert info.preprocessing.mean == (0.5, 0.5, 0.5)
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = images()
    with torch.no_grad():
        assert_same(model(x), ref(x))


# ----------------------------------------------------------------------------- 6. real weights (shared folder)


def shared_file(kind: str, *parts: str) -> Path | None:
    folders = [shared_dir(kind)]
    data = shared_dir("data")
    if data is not None:
        folders.append(data.parent / kind)
    for folder in folders:
        if folder is not None and (folder.joinpath(*parts)).exists():
            return folder.joinpath(*parts)
    return None


@pytest.fixture(scope="module")
def tiny_weights() -> Path:
    path = shared_file("weights", f"{TINY_NAME}.safetensors")
    if path is None:
        pytest.skip(f"shared weights {TINY_NAME}.safetensors not available; set VITLAB_WEIGHTS_DIR")
    return path


@pytest.fixture(scope="module")
def imagenet_samples() -> Path:
    folder = shared_file("data", "imagenet-samples", "imagenet_classes.txt")
    if folder is None:
        pytest.skip("shared data imagenet-samples not available; set VITLAB_DATA_DIR")
    return folder.parent


@pytest.fixture(scope="module")
def tiny_loaded(tiny_weights: Path):
    return load_pretrained(TINY_NAME, file=tiny_weights)


def test_real_vit_tiny_classifies_imagenet_photos(tiny_weights: Path, imagenet_samples: Path, tiny_loaded) -> None:
    from PIL import Image

    model, info = tiny_loaded
    assert info.name == TINY_NAME and info.source_format == "timm" and info.meta["params"] == model.num_params()
    lines = (imagenet_samples / "imagenet_classes.txt").read_text().splitlines()
    assert len(lines) == 1000
    wnids = [line.split()[0] for line in lines]
    photos = sorted(imagenet_samples.glob("*.JPEG"))
    assert len(photos) == 17
    transform = info.preprocessing.transform()
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
    assert batch.shape == (17, 3, 224, 224)
    labels = torch.tensor([wnids.index(p.name.split("_")[0]) for p in photos])
    with torch.no_grad():
        logits = model(batch)
    predicted = logits.argmax(dim=1)
    wrong = [(p.name, info.classes[i]) for p, i, t in zip(photos, predicted.tolist(), labels.tolist()) if i != t]
    assert not wrong, f"misclassified: {wrong}"

    assert len(info.classes) == 1000
    for label in labels.tolist():
        name = info.classes[label]
        synonyms = [s.strip().lower() for s in lines[label].split(" ", 1)[1].split(",")]
        assert isinstance(name, str) and name.lower() in synonyms, (name, lines[label])

    ref = timm_vit.vit_tiny_patch16_224(pretrained=False).eval()
    ref.load_state_dict(load_file(str(tiny_weights)))
    with torch.no_grad():
        assert_same(logits, ref(batch), atol=1e-4)


def test_real_vit_tiny_at_160(tiny_weights: Path, tiny_loaded) -> None:
    model, info = load_pretrained(TINY_NAME, file=tiny_weights, img_size=160)
    assert model.pos_embed.shape == (1, 1 + 100, 192)
    assert info.config.img_size == (160, 160) and any("resampled" in c for c in info.changes)
    assert info.preprocessing.crop_size == (160, 160) and info.preprocessing.resize_size == round(160 * 248 / 224)
    original = tiny_loaded[0].pos_embed.detach()
    expected = resample_abs_pos_embed(original, [10, 10], [14, 14], num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected, atol=1e-6, rtol=0)
    assert torch.equal(model.pos_embed[:, 0], original[:, 0])
    with torch.no_grad():
        out = model(images(batch=2, size=(160, 160)))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- 7. resampling


@pytest.mark.parametrize("old,new", [((4, 4), (7, 7)), ((14, 14), (7, 7)), ((14, 14), (10, 12)), ((6, 9), (4, 5))],
                         ids=["up", "down", "to-non-square", "from-non-square"])
@pytest.mark.parametrize("prefix", [1, 0])
def test_resample_matches_timm(old: tuple[int, int], new: tuple[int, int], prefix: int) -> None:
    gen = torch.Generator().manual_seed(old[0] * 100 + new[1])
    pos = torch.randn(1, prefix + old[0] * old[1], 32, generator=gen)
    ours = resample_pos_embed(pos, new, old_grid=None if old[0] == old[1] else old, num_prefix_tokens=prefix)
    ref = resample_abs_pos_embed(pos, list(new), list(old), num_prefix_tokens=prefix, interpolation="bicubic", antialias=True)
    assert ours.shape == (1, prefix + new[0] * new[1], 32)
    assert_same(ours, ref, atol=1e-6)
    assert torch.equal(ours[:, :prefix], pos[:, :prefix])


def test_resample_identity_and_errors() -> None:
    pos = torch.randn(1, 1 + 24, 8)
    assert torch.equal(resample_pos_embed(pos, (4, 6), old_grid=(4, 6)), pos)
    square = torch.randn(1, 17, 8)
    assert torch.equal(resample_pos_embed(square, (4, 4)), square)
    with pytest.raises(ValueError, match="old_grid"):
        resample_pos_embed(pos, (5, 5), old_grid=(5, 5))  # 25 != 24 positions
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(pos, (5, 5))  # 24 positions: the grid must be given


# ----------------------------------------------------------------------------- 8. new head, new size


def test_new_head_is_zero(tmp_path: Path) -> None:
    ref = timm_tiny()
    path = save_safetensors(ref.state_dict(), tmp_path / "tiny_timm.safetensors")
    model, info = load_pretrained(path, num_heads=4, num_classes=3)
    assert info.config.num_classes == 3 and model.head.weight.shape == (3, 64) and len(info.classes) == 3
    assert {"head.weight", "head.bias"} <= set(info.dropped)
    assert any("head replaced" in c and "7" in c and "3" in c for c in info.changes)
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(3, 3))
        assert_same(model.forward_features(x), ref.forward_features(x))
    same, same_info = load_pretrained(path, num_heads=4, num_classes=7)  # the checkpoint's own count: kept
    assert same_info.changes == [] and "head.weight" not in same_info.dropped


# ----------------------------------------------------------------------------- 9. errors


class Payload:
    """Not a tensor: torch.load(weights_only=True) must refuse to rebuild it."""

    def __init__(self) -> None:
        self.value = 1


def test_pickle_needing_code_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(4, 3, 8, 8), "extra": Payload()}, path)
    with pytest.raises(WeightsError, match="safetensors"):
        read_weights_file(path)
    with pytest.raises(WeightsError, match="safetensors"):
        load_pretrained(path)


def test_non_state_dict_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError, match="state dict"):
        read_weights_file(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tmp_path: Path, damage: str) -> None:
    path = save_safetensors(timm_tiny().state_dict(), tmp_path / "broken.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\xff" * 64)
    with pytest.raises(WeightsError, match="safetensors"):
        load_pretrained(path, num_heads=4)


def test_corrupt_pth(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    torch.save(timm_tiny().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt"):
        read_weights_file(path)


def test_missing_file() -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        read_weights_file("/nonexistent/weights.safetensors")


def test_missing_unexpected_and_mis_shaped_keys(tmp_path: Path) -> None:
    state = dict(timm_tiny().state_dict())
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.proj.bias"}
    with pytest.raises(WeightsError, match=r"missing keys.*blocks\.1\.attn\.proj\.bias"):
        load_pretrained(save_safetensors(missing, tmp_path / "missing.safetensors"), num_heads=4)
    extra = {**state, "extra_layer.weight": torch.ones(3)}
    with pytest.raises(WeightsError, match=r"unexpected keys.*extra_layer\.weight"):
        load_pretrained(save_safetensors(extra, tmp_path / "extra.safetensors"), num_heads=4)
    bad = {**state, "blocks.0.norm2.bias": torch.ones(65)}
    with pytest.raises(WeightsError, match=r"mis-shaped.*blocks\.0\.norm2\.bias"):
        load_pretrained(save_safetensors(bad, tmp_path / "bad.safetensors"), num_heads=4)


def test_registry_entry_with_wrong_file(tmp_path: Path) -> None:
    """A registry name with a file of another architecture is refused with the differences listed."""
    path = save_safetensors(timm_tiny().state_dict(), tmp_path / "tiny_timm.safetensors")
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_pretrained(TINY_NAME, file=path)


def test_unknown_names() -> None:
    with pytest.raises(KeyError, match=TINY_NAME):
        get_weights("vit_gigantic_patch99")
    with pytest.raises(WeightsError, match=TINY_NAME):
        load_pretrained("vit_gigantic_patch99")


def test_distilled_checkpoint_refused(tmp_path: Path) -> None:
    state = {**timm_tiny().state_dict(), "dist_token": torch.randn(1, 1, 64)}
    with pytest.raises(ValueError, match="distilled"):
        convert(state)
    with pytest.raises(ValueError, match="distilled"):
        load_pretrained(save_safetensors(state, tmp_path / "deit_distilled.safetensors"), num_heads=4)


def test_timm_fc_norm_refused() -> None:
    ref = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=7,
                                     class_token=False, global_pool="avg")  # timm's default: fc_norm after pooling
    with pytest.raises(ValueError, match="fc_norm"):
        convert(ref.state_dict())


def test_npz_with_objects_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, cls=np.zeros((1, 1, 8), np.float32), meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="pickle"):
        read_weights_file(path)
    with pytest.raises(WeightsError):
        load_pretrained(path)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip archive")
    with pytest.raises(WeightsError):
        read_weights_file(broken)


def test_detect_format() -> None:
    assert detect_format(timm_tiny().state_dict()) == "timm"
    assert detect_format(["conv_proj.weight", "encoder.pos_embedding"]) == "torchvision"
    assert detect_format(["vit.embeddings.cls_token", "vit.embeddings.patch_embeddings.projection.weight"]) == "hf"
    assert detect_format(["embedding/kernel", "Transformer/encoder_norm/scale"]) == "npz"
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format(["resnet.conv1.weight", "fc.weight"])
    with pytest.raises(ValueError, match="unknown source format"):
        convert(timm_tiny().state_dict(), "onnx")


# ----------------------------------------------------------------------------- 10. registry


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_registry_entry(name: str) -> None:
    entry = WEIGHTS[name]
    assert get_weights(name) is entry and entry.name == name
    with torch.device("meta"):
        model = ViT(entry.config)
    assert model.num_params() == entry.meta["params"]
    assert entry.url or entry.hf_repo
    assert entry.source_format in ("timm", "torchvision", "hf", "npz", "tf_hub")
    prep = entry.preprocessing
    assert len(prep.mean) == 3 and len(prep.std) == 3 and prep.interpolation in ("bicubic", "bilinear")
    assert 0 < prep.crop_pct <= 1 and prep.crop_size == entry.config.img_size
    if entry.source_format == "tf_hub":  # a SavedModel: unpacked into a directory named after the entry
        assert entry.file_name == name
    else:
        assert entry.file_name.startswith(name) and Path(entry.file_name).suffix in (".safetensors", ".pth", ".npz")
    classes = entry.classes()
    assert len(classes) == entry.config.num_classes and all(isinstance(c, str) for c in classes)


def test_registry_vit_tiny_preprocessing() -> None:
    entry = get_weights("vit_tiny")
    assert entry.name == TINY_NAME
    prep = entry.preprocessing
    assert (prep.resize_size, prep.crop_size, prep.interpolation) == (248, (224, 224), "bicubic")
    assert prep.mean == prep.std == (0.5, 0.5, 0.5)
    assert prep.crop_pct == pytest.approx(224 / 248)
    cfg = entry.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_classes, cfg.norm_eps) == (192, 12, 3, 1000, 1e-6)


def test_find_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = get_weights("vit_tiny")
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("VITLAB_WEIGHTS_DIR", str(folder))
    with pytest.raises(WeightsError, match="not found"):
        find_weights_file(entry, download=False)
    with pytest.raises(WeightsError, match="not found"):
        load_pretrained("vit_tiny", download=False)
    target = folder / f"{entry.name}.safetensors"
    target.write_bytes(b"placeholder")
    assert find_weights_file(entry, download=False) == target
    tv = get_weights("vit_b_16")
    (folder / f"{tv.name}.pth").write_bytes(b"placeholder")
    assert find_weights_file(tv, download=False) == folder / f"{tv.name}.pth"
    monkeypatch.delenv("VITLAB_WEIGHTS_DIR")
    with pytest.raises(WeightsError, match="not found"):
        find_weights_file(entry, download=False)


def test_registry_name_from_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_weights: Path, tiny_loaded) -> None:
    """``load_pretrained("vit_tiny", download=False)`` finds ``$VITLAB_WEIGHTS_DIR/<name>.safetensors``."""
    folder = tmp_path / "weights"
    folder.mkdir()
    os.symlink(tiny_weights, folder / f"{TINY_NAME}.safetensors")
    monkeypatch.setenv("VITLAB_WEIGHTS_DIR", str(folder))
    model, info = load_pretrained("vit_tiny", download=False)
    assert info.name == TINY_NAME and info.preprocessing == get_weights(TINY_NAME).preprocessing
    for key, value in tiny_loaded[0].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # a file named after a registry entry carries that entry's metadata
    model, info = load_pretrained(folder / f"{TINY_NAME}.safetensors")
    assert info.name == TINY_NAME and info.meta["params"] == 5_717_416


def test_download_goes_to_the_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's download path (torch.hub) runs end to end on a file:// URL: into the cache, then reused."""
    from dataclasses import replace

    from vitlab.pretrained import registry

    source = ViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, num_classes=1000)
    served = tmp_path / "served" / "weights.pth"
    served.parent.mkdir()
    torch.save(source.state_dict(), served)
    entry = replace(registry.get_weights("deit_tiny"), name="test_download", config=source.cfg,
                    hf_repo=None, hf_file=None, url=served.as_uri())
    monkeypatch.setitem(registry.WEIGHTS, "test_download", entry)
    monkeypatch.delenv("VITLAB_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("VITLAB_CACHE_DIR", str(tmp_path / "cache"))
    model, info = load_pretrained("test_download")
    assert Path(info.file) == tmp_path / "cache" / "weights" / "test_download.pth"
    assert torch.equal(model.pos_embed, source.pos_embed)
    served.unlink()  # a second load reads the cached copy
    assert find_weights_file(entry, download=False) == Path(info.file)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_every_registry_entry_preprocesses_as_its_source_defines(name):
    """Resize, crop, interpolation, mean and std equal the source library's own configuration for the weights:
    timm's pretrained_cfg (resize = floor(crop / crop_pct)), torchvision's weights transforms, Hugging Face's
    ViTImageProcessor defaults (what google/vit-base-patch16-224 ships)."""
    import math

    entry = WEIGHTS[name]
    prep = entry.preprocessing
    if entry.source_format == "timm":
        timm = pytest.importorskip("timm")
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        crop = cfg["input_size"][1:]
        expected = (tuple(crop), math.floor(min(crop) / cfg["crop_pct"]), cfg["interpolation"], tuple(cfg["mean"]),
                    tuple(cfg["std"]), cfg.get("crop_mode", "center"))
    elif entry.source_format == "torchvision":
        from torchvision.models import ViT_B_16_Weights

        t = ViT_B_16_Weights.IMAGENET1K_V1.transforms()
        expected = ((t.crop_size[0],) * 2, t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std), "center")
    elif entry.source_format == "hf":
        transformers = pytest.importorskip("transformers")
        p = transformers.ViTImageProcessor()
        resample = {2: "bilinear", 3: "bicubic"}[int(p.resample)]
        expected = ((p.size["height"], p.size["width"]), p.size["height"], resample, tuple(p.image_mean), tuple(p.image_std),
                    "squash" if p.do_resize and not getattr(p, "do_center_crop", False) else "center")
    else:  # Google's .npz and its TF-Hub export: their input pipeline resizes to the model's size, pixels in [-1, 1]
        expected = ((224, 224), 224, "bilinear", (0.5,) * 3, (0.5,) * 3, "squash")
    assert (tuple(prep.crop_size), prep.resize_size, prep.interpolation, tuple(prep.mean), tuple(prep.std),
            prep.crop_mode) == expected


def test_squash_preprocessing_equals_the_hugging_face_image_processor():
    """A wide photo through the HF entry's transform and through transformers' ViTImageProcessor (resize to 224x224,
    no crop): the same pixels; the shorter-side-and-crop transform would cut the sides off instead."""
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (180, 400, 3), dtype=np.uint8))
    ours = WEIGHTS["vit_base_patch16_224.hf_google"].preprocessing.transform()(photo)
    theirs = torch.from_numpy(transformers.ViTImageProcessor()(photo, return_tensors="np")["pixel_values"][0])
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().max() < 2 / 255 * 2  # PIL resampling on both sides; at most a rounding step apart
    assert (ours - theirs).abs().mean() < 1e-3
    from vitlab.data.datasets import resize_and_crop

    squashed = resize_and_crop(photo, (224, 224), 1.0, "bilinear", "squash")
    assert squashed.size == (224, 224)
    centered = resize_and_crop(photo, (224, 224), 1.0, "bilinear", "center")
    assert np.abs(np.asarray(squashed, dtype=float) - np.asarray(centered, dtype=float)).mean() > 20


def test_imagenet_class_names_are_torchvisions_without_importing_its_model_zoo():
    import subprocess
    import sys

    from torchvision.models import ViT_B_16_Weights

    from vitlab.pretrained import class_names

    assert class_names("imagenet-1k", 1000) == ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"]
    code = ("import sys; from vitlab.pretrained.registry import class_names; class_names('imagenet-1k', 1000); "
            "print('torchvision.models' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
