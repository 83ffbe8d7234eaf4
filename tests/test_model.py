"""Tests for vitlab.model (the ViT itself) and the model presets.

Every test builds small models on the CPU, except the parameter / FLOP counts of the
paper-sized presets, which are built on the meta device (no memory, no init cost).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.model import (
    MLP,
    Attention,
    Block,
    DropPath,
    PatchEmbed,
    ViT,
    ViTConfig,
    count_flops,
    sincos_pos_embed_2d,
)
from vitlab.presets import MODEL_PRESETS, model_config

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These models are tiny: one intra-op thread is fastest, and immune to a busy second core.

    (With 2 threads on a loaded 2-core machine, a 51x48 matmul took ~16 ms instead of ~20 us.)
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_cfg(**overrides) -> ViTConfig:
    """A 32x32 RGB, patch-8 (16 patches), dim-48, 2-block, 3-head, 10-class model."""
    base = dict(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=48, depth=2, num_heads=3)
    return ViTConfig(**{**base, **overrides})


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Fill every parameter with random values (norm weights around 1), so nothing is zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
            if "norm" in name and name.endswith("weight"):
                noise = noise + 1.0
            p.copy_(noise)
    return model


def images(cfg: ViTConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=gen)


def analytic_params(cfg: ViTConfig) -> int:
    """Parameter count from the architecture, written out independently of the model code."""
    d, c, (ph, pw), n = cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.num_patches
    hidden = int(d * cfg.mlp_ratio)
    prefix = 1 if cfg.class_token else 0
    total = c * ph * pw * d + d  # patch projection (conv kernel + bias)
    total += prefix * d  # CLS token
    total += (prefix + n) * d if cfg.pos_embed == "learned" else 0
    per_block = (
        2 * d  # norm1
        + 3 * d * d + (3 * d if cfg.qkv_bias else 0)  # qkv
        + d * d + d  # attention output projection
        + 2 * d  # norm2
        + d * hidden + hidden  # fc1
        + hidden * d + d  # fc2
    )
    total += cfg.depth * per_block
    total += 2 * d  # final norm
    total += d * cfg.num_classes + cfg.num_classes if cfg.num_classes > 0 else 0
    return total


def analytic_flops(cfg: ViTConfig) -> int:
    """Matmul/conv FLOPs (multiply-add = 2) for one image, written out by hand."""
    d, c, (ph, pw), n = cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.num_patches
    t = n + (1 if cfg.class_token else 0)
    hidden = int(d * cfg.mlp_ratio)
    flops = 2 * n * d * c * ph * pw  # patch embedding
    per_block = (
        2 * t * d * 3 * d  # qkv
        + 2 * t * t * d  # q @ k^T over all heads
        + 2 * t * t * d  # attn @ v over all heads
        + 2 * t * d * d  # output projection
        + 2 * t * d * hidden * 2  # fc1 + fc2
    )
    flops += cfg.depth * per_block
    flops += 2 * d * cfg.num_classes
    return flops


# ----------------------------------------------------------------------------- 1. shapes

SHAPE_CASES = {
    "square-rgb-cls-learned": dict(img_size=32, patch_size=8, in_chans=3, pool="cls", pos_embed="learned"),
    "nonsquare-gray-gap-sincos": dict(
        img_size=(24, 36), patch_size=(4, 6), in_chans=1, pool="gap", pos_embed="sincos"
    ),
    "nonsquare-rgb-cls-none": dict(img_size=(24, 36), patch_size=(4, 6), in_chans=3, pool="cls", pos_embed="none"),
    "no-cls-token-gap-learned": dict(img_size=28, patch_size=7, in_chans=1, class_token=False, pool="gap"),
    "conv-stem-nonsquare-image": dict(img_size=(16, 24), patch_size=4, in_chans=3, patch_embed="conv_stem"),
    "no-cls-token-gap-sincos": dict(
        img_size=(16, 32), patch_size=(8, 4), in_chans=3, class_token=False, pool="gap", pos_embed="sincos"
    ),
    "manual-explicit": dict(img_size=28, patch_size=(7, 4), in_chans=3, patch_embed="manual", attn_impl="explicit"),
}


@pytest.mark.parametrize("overrides", list(SHAPE_CASES.values()), ids=list(SHAPE_CASES))
def test_output_shapes(overrides: dict) -> None:
    torch.manual_seed(0)
    cfg = small_cfg(num_classes=7, **overrides)
    model = randomize_(ViT(cfg)).eval()
    b = 3
    x = images(cfg, batch=b)
    (h, w), (ph, pw) = cfg.img_size, cfg.patch_size
    n = (h // ph) * (w // pw)
    prefix = 1 if cfg.class_token else 0
    assert cfg.grid_size == (h // ph, w // pw)
    assert cfg.num_patches == n
    assert model.num_prefix_tokens == prefix

    with torch.no_grad():
        tokens = model.patch_embed(x)
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model(x)
    assert tokens.shape == (b, n, cfg.embed_dim)
    assert feats.shape == (b, prefix + n, cfg.embed_dim)
    assert pooled.shape == (b, cfg.embed_dim)
    assert logits.shape == (b, 7)

    # pooling reads the CLS token or averages the patch tokens only
    expected_pooled = feats[:, 0] if cfg.pool == "cls" else feats[:, prefix:].mean(dim=1)
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(logits, model.head(pooled))
    # samples are processed independently
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:2]), logits[1:2], atol=1e-5, rtol=1e-5)


def test_pos_embed_shapes_and_kinds() -> None:
    learned = ViT(small_cfg(pos_embed="learned"))
    assert isinstance(learned.pos_embed, nn.Parameter)
    assert learned.pos_embed.shape == (1, 1 + 16, 48)
    none = ViT(small_cfg(pos_embed="none"))
    assert none.pos_embed is None
    assert "pos_embed" not in none.state_dict()
    no_cls = ViT(small_cfg(pos_embed="learned", class_token=False, pool="gap"))
    assert no_cls.cls_token is None
    assert no_cls.pos_embed.shape == (1, 16, 48)


def test_position_embedding_makes_model_order_aware() -> None:
    """Without a position embedding, a GAP model is invariant to permuting the patches."""
    cfg = small_cfg(img_size=16, patch_size=8, in_chans=1, class_token=False, pool="gap", pos_embed="none")
    x = images(cfg, batch=1)
    # swap the top-left and bottom-right 8x8 patches
    swapped = x.clone()
    swapped[..., :8, :8], swapped[..., 8:, 8:] = x[..., 8:, 8:], x[..., :8, :8]
    with torch.no_grad():
        model = randomize_(ViT(cfg)).eval()
        torch.testing.assert_close(model(x), model(swapped), atol=1e-5, rtol=1e-5)
        learned = randomize_(ViT(cfg, pos_embed="learned")).eval()
        assert not torch.allclose(learned(x), learned(swapped), atol=1e-4)


def test_overrides_and_config_roundtrip() -> None:
    cfg = small_cfg(img_size=(24, 36), patch_size=(4, 6))
    assert ViTConfig(**cfg.to_dict()) == cfg
    assert cfg.to_dict()["img_size"] == [24, 36]
    model = ViT(cfg, num_classes=4, depth=3)
    assert model.cfg.num_classes == 4 and len(model.blocks) == 3
    assert model.head.out_features == 4
    assert model.cfg.img_size == (24, 36)
    assert cfg.num_classes == 10 and cfg.depth == 2  # the caller's config is untouched


# ----------------------------------------------------------------------------- 2. parameter counts

PAPER_PARAMS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_preset_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = ViT.from_preset(name)
    assert all(p.device.type == "meta" for p in model.parameters())  # cheap: nothing allocated
    assert model.cfg.num_classes == 1000
    assert model.num_params() == PAPER_PARAMS[name]
    assert model.num_params(trainable_only=True) == PAPER_PARAMS[name]
    assert analytic_params(model.cfg) == PAPER_PARAMS[name]


def test_meta_and_real_builds_agree() -> None:
    with torch.device("meta"):
        meta = ViT.from_preset("vit_tiny_patch16_224")
    real = ViT.from_preset("vit_tiny_patch16_224")
    assert real.num_params() == meta.num_params() == 5_717_416
    assert {k: v.shape for k, v in real.state_dict().items()} == {k: v.shape for k, v in meta.state_dict().items()}


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(img_size=(24, 36), patch_size=(4, 6), in_chans=1, mlp_ratio=2.0),
        dict(class_token=False, pool="gap", pos_embed="sincos"),
        dict(pos_embed="none", qkv_bias=False, num_classes=0),
    ],
)
def test_parameter_count_matches_analytic_formula(overrides: dict) -> None:
    model = ViT(small_cfg(**overrides))
    assert model.num_params() == analytic_params(model.cfg)


def test_num_params_trainable_only() -> None:
    model = ViT(small_cfg())
    model.patch_embed.proj.weight.requires_grad_(False)
    frozen = model.patch_embed.proj.weight.numel()
    assert model.num_params() == analytic_params(model.cfg)
    assert model.num_params(trainable_only=True) == analytic_params(model.cfg) - frozen


def test_seed_preset() -> None:
    model = ViT.from_preset("vit_seed")
    cfg = model.cfg
    assert cfg.patch_size == (7, 7) and cfg.img_size == (28, 28) and cfg.in_chans == 1
    assert cfg.embed_dim == 16 and cfg.num_heads == 4 and cfg.depth == 4
    assert model.patch_embed.proj.kernel_size == (7, 7) and model.patch_embed.proj.stride == (7, 7)
    assert cfg.num_patches == 16
    assert len(model.blocks) == 4
    for block in model.blocks:
        assert block.attn.num_heads == 4 and block.attn.head_dim == 4
        assert block.mlp.fc1.out_features == 64 and block.mlp.fc2.in_features == 64
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


DOCUMENTED_RUN_PRESETS = ["mnist", "photos", "mnist_2min", "mnist_5min", "mnist_20min", "mnist_60min", "mnist_long", "seed",
                          "fashion_mnist", "fashion_mnist_long", "fashion_mnist_30min", "cifar10", "cifar10_60min", "cifar10_gpu",
                          "cifar100"]


def test_every_run_preset_is_documented() -> None:
    from vitlab.presets import RUN_PRESETS

    assert sorted(RUN_PRESETS) == sorted(DOCUMENTED_RUN_PRESETS)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in DOCUMENTED_RUN_PRESETS)


@pytest.mark.parametrize("name", DOCUMENTED_RUN_PRESETS)
def test_run_presets_build_a_model_for_their_data(name: str) -> None:
    from vitlab.data import AUGMENTATIONS
    from vitlab.presets import RUN_PRESETS, run_config

    assert name in RUN_PRESETS
    cfg = run_config(name)
    channels, size, classes = {"mnist": (1, 28, 10), "fashion_mnist": (1, 28, 10), "cifar10": (3, 32, 10),
                               "cifar100": (3, 32, 100), "imagefolder": (3, 64, 10)}[cfg.data.dataset]
    assert (cfg.model.in_chans, cfg.model.img_size, cfg.model.num_classes) == (channels, (size, size), classes)
    assert cfg.data.augment in AUGMENTATIONS and 0.0 <= cfg.data.random_erasing <= 1.0
    model = ViT(cfg.model).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, channels, size, size)).shape == (2, classes)


def test_preset_aliases_and_overrides() -> None:
    assert model_config("ti16") == MODEL_PRESETS["vit_tiny_patch16_224"]
    assert model_config("vit_base") == MODEL_PRESETS["vit_base_patch16_224"]
    cfg = model_config("vit_mnist", num_classes=3)
    assert cfg.num_classes == 3 and MODEL_PRESETS["vit_mnist"].num_classes == 10
    assert cfg is not MODEL_PRESETS["vit_mnist"]
    with pytest.raises(KeyError, match="unknown model preset"):
        model_config("vit_gigantic")


# ----------------------------------------------------------------------------- 3. conv vs manual patches

PATCH_CASES = [
    dict(img_size=32, patch_size=8, in_chans=3),
    dict(img_size=32, patch_size=8, in_chans=1),
    dict(img_size=(24, 36), patch_size=(4, 6), in_chans=1),
    dict(img_size=(24, 36), patch_size=(4, 6), in_chans=3),
    dict(img_size=28, patch_size=(7, 4), in_chans=3, class_token=False, pool="gap"),
]


@pytest.mark.parametrize("overrides", PATCH_CASES)
def test_conv_and_manual_patch_embedding_agree(overrides: dict) -> None:
    conv = randomize_(ViT(small_cfg(patch_embed="conv", **overrides)), seed=1).eval()
    manual = ViT(small_cfg(patch_embed="manual", **overrides)).eval()
    state = conv.state_dict()
    assert list(state) == list(manual.state_dict())  # same keys, same order
    manual.load_state_dict(state, strict=True)
    x = images(conv.cfg, batch=3, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(manual.patch_embed(x), conv.patch_embed(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(manual(x), conv(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(manual.forward_features(x), conv.forward_features(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["conv", "manual"])
@pytest.mark.parametrize("overrides", PATCH_CASES[:4])
def test_patch_embedding_matches_unfold_reference(mode: str, overrides: dict) -> None:
    """Token i is the patch at grid row i // gw, column i % gw, flattened as (C, ph, pw)."""
    cfg = small_cfg(patch_embed=mode, **overrides)
    embed = randomize_(PatchEmbed(cfg), seed=3)
    x = images(cfg, batch=2, seed=4)
    cols = F.unfold(x, kernel_size=cfg.patch_size, stride=cfg.patch_size)  # (B, C*ph*pw, N), row-major grid
    expected = cols.transpose(1, 2) @ embed.proj.weight.reshape(cfg.embed_dim, -1).T + embed.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(embed(x), expected, atol=1e-5, rtol=0)


def test_patch_token_order_is_row_major() -> None:
    """A single bright patch at grid (row 1, col 2) lands in token 1 * gw + 2."""
    cfg = small_cfg(img_size=(24, 36), patch_size=(4, 6), in_chans=1, patch_embed="manual")
    embed = randomize_(PatchEmbed(cfg), seed=5)
    gh, gw = cfg.grid_size
    x = torch.zeros(1, 1, 24, 36)
    x[..., 4:8, 12:18] = 1.0
    with torch.no_grad():
        for mode in ("manual", "conv"):
            embed.mode = mode
            out = embed(x)[0] - embed.proj.bias  # remove the bias: only the lit patch is non-zero
            nonzero = (out.abs() > 1e-6).any(dim=1).nonzero().flatten().tolist()
            assert nonzero == [1 * gw + 2], mode


# ----------------------------------------------------------------------------- 4. attention


@pytest.mark.parametrize(
    "overrides", [dict(), dict(img_size=(24, 36), patch_size=(4, 6), class_token=False, pool="gap")]
)
def test_sdpa_and_explicit_attention_agree(overrides: dict) -> None:
    sdpa = randomize_(ViT(small_cfg(attn_impl="sdpa", **overrides)), seed=6).eval()
    explicit = ViT(small_cfg(attn_impl="explicit", **overrides)).eval()
    explicit.load_state_dict(sdpa.state_dict(), strict=True)
    x = images(sdpa.cfg, batch=3, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), sdpa(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(explicit.forward_features(x), sdpa.forward_features(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_attention_weights(impl: str) -> None:
    cfg = small_cfg(attn_impl=impl)
    attn = randomize_(Attention(cfg), seed=8).eval()
    b, t, d, h = 2, 17, cfg.embed_dim, cfg.num_heads
    x = torch.randn(b, t, d, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out, weights = attn(x, return_attention=True)
        plain = attn(x)
    assert out.shape == (b, t, d)
    assert weights.shape == (b, h, t, t)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, h, t), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)

    # independent reference: per-head softmax(Q K^T / sqrt(d_head)) V, heads concatenated
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(d, dim=-1)
    hd = d // h
    heads_out, heads_w = [], []
    for i in range(h):
        qi, ki, vi = (m[..., i * hd : (i + 1) * hd] for m in (q, k, v))
        wi = torch.softmax(qi @ ki.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        heads_w.append(wi)
        heads_out.append(wi @ vi)
    ref_w = torch.stack(heads_w, dim=1)
    ref_out = torch.cat(heads_out, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(weights, ref_w, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)


def test_attention_without_weights_returns_tensor() -> None:
    attn = Attention(small_cfg())
    out = attn(torch.randn(2, 5, 48))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 48)


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_attention_and_block_with_fewer_queries_match_the_full_outputs(impl: str) -> None:
    cfg = small_cfg(attn_impl=impl)
    block = randomize_(Block(cfg), seed=30).eval()
    x = torch.randn(2, 17, cfg.embed_dim, generator=torch.Generator().manual_seed(31))
    with torch.no_grad():
        full_attn, full_weights = block.attn(x, return_attention=True)
        for nq in (1, 5):
            attn_out, weights = block.attn(x, return_attention=True, num_queries=nq)
            assert attn_out.shape == (2, nq, cfg.embed_dim) and weights.shape == (2, cfg.num_heads, nq, 17)
            torch.testing.assert_close(attn_out, full_attn[:, :nq], atol=1e-5, rtol=0)
            torch.testing.assert_close(weights, full_weights[:, :, :nq], atol=1e-6, rtol=0)
            torch.testing.assert_close(block(x, num_queries=nq), block(x)[:, :nq], atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides", [dict(), dict(attn_impl="explicit", qkv_bias=False, patch_embed="conv_stem",
                                                    patch_size=8, drop_path_rate=0.1)])
def test_forward_computes_only_the_cls_token_in_the_last_block(overrides: dict) -> None:
    """forward() skips the patch tokens' outputs of the last block: same logits, same gradients, fewer FLOPs."""
    cfg = small_cfg(depth=3, **overrides)
    fast, slow = randomize_(ViT(cfg), seed=32), ViT(cfg)
    slow.load_state_dict(fast.state_dict())
    x = images(cfg, batch=4, seed=33)
    y = torch.arange(4) % cfg.num_classes
    for model in (fast, slow):
        model.eval()  # no random masks, so both paths compute one function; gradients still flow
    F.cross_entropy(fast(x), y).backward()
    F.cross_entropy(slow.forward_head(slow.forward_features(x)), y).backward()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow.forward_head(slow.forward_features(x)), atol=1e-5, rtol=0)
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert fast.forward_features(x).shape[1] == 1 + cfg.num_patches  # features still hold every token

    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x)
        return counter.get_total_flops()

    full, skipped = flops(lambda v: fast.forward_head(fast.forward_features(v))), flops(fast)
    assert skipped < full - 0.5 * full / cfg.depth  # the last block's work, mostly gone
    if cfg.attn_impl == "explicit":  # (the counter does not see inside the fused kernel)
        assert (full, skipped) == (count_flops(cfg) * 4, count_flops(cfg, every_token=False) * 4)
    # by hand: the N patch tokens skip their query, output projection and MLP, and their N x T attention rows
    d, n, t, hidden = cfg.embed_dim, cfg.num_patches, cfg.num_patches + 1, int(cfg.embed_dim * cfg.mlp_ratio)
    assert count_flops(cfg) - count_flops(cfg, every_token=False) == 2 * n * (2 * d * d + 2 * d * hidden) + 4 * n * t * d


def test_gap_pooling_forward_uses_every_token() -> None:
    model = randomize_(ViT(small_cfg(class_token=False, pool="gap")), seed=34).eval()
    x = images(model.cfg, batch=2, seed=35)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)), atol=0, rtol=0)


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_forward_attention(impl: str) -> None:
    cfg = small_cfg(depth=3, attn_impl=impl)
    model = randomize_(ViT(cfg), seed=10).eval()
    x = images(cfg, batch=2, seed=11)
    t = 1 + cfg.num_patches
    with torch.no_grad():
        logits = model(x)
        out, maps = model.forward_attention(x, layers=[0, -1])
        out_all, maps_all = model.forward_attention(x)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_all, logits, atol=1e-5, rtol=0)
    assert sorted(maps) == [0, 2]  # -1 means the last block; block 1 was not asked for
    assert sorted(maps_all) == [0, 1, 2]
    for i, w in maps.items():
        assert w.shape == (2, cfg.num_heads, t, t)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, cfg.num_heads, t), atol=1e-5, rtol=0)
        torch.testing.assert_close(w, maps_all[i], atol=1e-6, rtol=0)
    # maps of different layers differ (they are not one map repeated)
    assert not torch.allclose(maps_all[0], maps_all[2])


# ----------------------------------------------------------------------------- 5. sin-cos embedding


def reference_sincos(grid: tuple[int, int], dim: int) -> np.ndarray:
    """Loop-by-loop: [sin(r w), cos(r w), sin(c w), cos(c w)], w_k = 1 / 10000^(k / (dim/4))."""
    gh, gw = grid
    quarter = dim // 4
    out = np.zeros((gh * gw, dim), dtype=np.float64)
    for r in range(gh):
        for c in range(gw):
            token = r * gw + c
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                out[token, k] = math.sin(r * omega)
                out[token, quarter + k] = math.cos(r * omega)
                out[token, 2 * quarter + k] = math.sin(c * omega)
                out[token, 3 * quarter + k] = math.cos(c * omega)
    return out


def mae_sincos(grid_size: int, embed_dim: int) -> np.ndarray:
    """MAE's util/pos_embed.py get_2d_sincos_pos_embed (square grid, no CLS), verbatim in spirit."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid,dim", [((4, 4), 16), ((3, 5), 16), ((6, 2), 32), ((1, 7), 8), ((5, 5), 64)])
def test_sincos_matches_reference(grid: tuple[int, int], dim: int) -> None:
    table = sincos_pos_embed_2d(grid, dim)
    assert table.shape == (grid[0] * grid[1], dim)
    assert table.dtype == torch.float32
    np.testing.assert_allclose(table.numpy(), reference_sincos(grid, dim), atol=1e-6, rtol=0)
    # token 0 sits at (0, 0): all sines 0, all cosines 1
    quarter = dim // 4
    expected_origin = np.tile(np.r_[np.zeros(quarter), np.ones(quarter)], 2)
    np.testing.assert_allclose(table[0].numpy(), expected_origin, atol=0)


def test_sincos_relation_to_mae_table() -> None:
    """MAE's code meshgrids (w, h), so its *first* half encodes the column; ours encodes the row.

    The two tables hold the same numbers with the halves swapped.
    """
    ours = sincos_pos_embed_2d((5, 5), 32).numpy()
    mae = mae_sincos(5, 32)
    np.testing.assert_allclose(ours, np.concatenate([mae[:, 16:], mae[:, :16]], axis=1), atol=1e-6)


@pytest.mark.parametrize("overrides", [dict(), dict(img_size=(24, 36), patch_size=(4, 6))])
def test_model_sincos_buffer(overrides: dict) -> None:
    model = ViT(small_cfg(pos_embed="sincos", **overrides))
    cfg = model.cfg
    assert "pos_embed" not in model.state_dict()
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" in dict(model.named_buffers())
    assert not isinstance(model.pos_embed, nn.Parameter)
    assert model.pos_embed.shape == (1, 1 + cfg.num_patches, cfg.embed_dim)
    assert torch.equal(model.pos_embed[0, 0], torch.zeros(cfg.embed_dim))  # CLS slot
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_pos_embed_2d(cfg.grid_size, cfg.embed_dim))
    # a state dict from a sincos model round-trips strictly and leaves the table intact
    other = ViT(small_cfg(pos_embed="sincos", **overrides))
    other.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(other.pos_embed, model.pos_embed)
    # without a CLS token there is no zero slot
    no_cls = ViT(small_cfg(pos_embed="sincos", class_token=False, pool="gap", **overrides))
    torch.testing.assert_close(no_cls.pos_embed[0], sincos_pos_embed_2d(cfg.grid_size, cfg.embed_dim))


def test_sincos_requires_dim_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d((4, 4), 18)
    with pytest.raises(ValueError, match="divisible by 4"):
        ViT(small_cfg(pos_embed="sincos", embed_dim=18, num_heads=3))
    ViT(small_cfg(pos_embed="learned", embed_dim=18, num_heads=3))  # fine without sin-cos


# ----------------------------------------------------------------------------- 6. timm equivalence

timm_vit = pytest.importorskip("timm.models.vision_transformer")

TIMM_CASES = {
    "token-32-p8": (dict(img_size=32, patch_size=8, in_chans=3), "token", "cls"),
    "avg-32-p8": (dict(img_size=32, patch_size=8, in_chans=3), "avg", "gap"),
    "token-nonsquare-gray": (dict(img_size=(24, 36), patch_size=(4, 6), in_chans=1), "token", "cls"),
    "avg-nonsquare-gray-mlp2": (dict(img_size=(24, 36), patch_size=(4, 6), in_chans=1, mlp_ratio=2.0), "avg", "gap"),
}


@pytest.mark.parametrize("overrides,timm_pool,our_pool", list(TIMM_CASES.values()), ids=list(TIMM_CASES))
def test_matches_timm(overrides: dict, timm_pool: str, our_pool: str) -> None:
    cfg = small_cfg(pool=our_pool, **overrides)
    torch.manual_seed(12)
    ref = timm_vit.VisionTransformer(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        global_pool=timm_pool,
        fc_norm=False,  # timm's 'avg' default puts the norm after pooling (fc_norm); ours norms first
    )
    randomize_(ref, seed=13).eval()
    ours = ViT(cfg).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = images(cfg, batch=3, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ours.forward_head(ours.forward_features(x), pre_logits=True),
            ref.forward_head(ref.forward_features(x), pre_logits=True),
            atol=1e-5,
            rtol=0,
        )


def test_timm_avg_default_uses_fc_norm() -> None:
    """Documents why the 'avg' comparison passes fc_norm=False: timm's default has no `norm`."""
    ref = timm_vit.VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=48, depth=1,
                                     num_heads=3, global_pool="avg")
    keys = set(ref.state_dict())
    assert "fc_norm.weight" in keys and "norm.weight" not in keys
    with pytest.raises(RuntimeError, match="norm"):
        ViT(small_cfg(depth=1, pool="gap")).load_state_dict(ref.state_dict(), strict=True)



@pytest.mark.parametrize("size", [(24, 24), (32, 48), (32, 32)], ids=["smaller", "wider", "native"])
def test_dynamic_img_size_matches_timm(size: tuple[int, int]) -> None:
    """dynamic_img_size: other input sizes through a resampled position embedding, as timm's model does them."""
    cfg = small_cfg(dynamic_img_size=True)
    ref = randomize_(timm_vit.VisionTransformer(img_size=32, patch_size=8, num_classes=10, embed_dim=48, depth=2,
                                                num_heads=3, dynamic_img_size=True), seed=21).eval()
    ours = ViT(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)
        if size == (32, 32):  # at its own size the dynamic model is the fixed one
            fixed = ViT(small_cfg()).eval()
            fixed.load_state_dict(ref.state_dict())
            assert torch.equal(ours(x), fixed(x))

# ----------------------------------------------------------------------------- 7. names, head, weight decay

TIMM_KEYS = [
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "cls_token",
    "pos_embed",
    "blocks.0.norm1.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.qkv.bias",
    "blocks.0.attn.proj.weight",
    "blocks.0.norm2.weight",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc2.weight",
    "blocks.1.mlp.fc2.bias",
    "norm.weight",
    "norm.bias",
    "head.weight",
    "head.bias",
]


def test_parameter_names_follow_timm() -> None:
    model = ViT(small_cfg())
    keys = set(model.state_dict())
    missing = [k for k in TIMM_KEYS if k not in keys]
    assert not missing
    assert model.state_dict()["patch_embed.proj.weight"].shape == (48, 3, 8, 8)
    assert model.state_dict()["blocks.0.attn.qkv.weight"].shape == (3 * 48, 48)
    assert model.state_dict()["cls_token"].shape == (1, 1, 48)
    assert not any(k.startswith("blocks.2.") for k in keys)


def test_no_weight_decay() -> None:
    assert ViT(small_cfg(pos_embed="learned")).no_weight_decay() == {"pos_embed", "cls_token"}
    assert ViT(small_cfg(pos_embed="sincos")).no_weight_decay() == {"cls_token"}
    assert ViT(small_cfg(pos_embed="none")).no_weight_decay() == {"cls_token"}
    assert ViT(small_cfg(pos_embed="learned", class_token=False, pool="gap")).no_weight_decay() == {"pos_embed"}
    assert ViT(small_cfg(pos_embed="sincos", class_token=False, pool="gap")).no_weight_decay() == set()
    # every name it returns is a real parameter
    model = ViT(small_cfg())
    assert model.no_weight_decay() <= set(dict(model.named_parameters()))


def test_head_is_zero_at_construction() -> None:
    torch.manual_seed(0)
    model = ViT(small_cfg())
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    x = images(model.cfg, batch=4)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, torch.zeros(4, 10))
        # ... but the features are not degenerate
        assert model.forward_features(x).std() > 0.1
    # the rest of the init: normal std 0.02 truncated at 2 std (so the std shrinks to ~0.0176),
    # zero biases, unit norms; the patch embedding is LeCun normal (std 1/sqrt(fan_in)), also cut at 2 std
    w = model.blocks[0].mlp.fc1.weight
    assert 0.016 < w.std().item() < 0.019 and w.abs().max().item() <= 0.04
    pw = model.patch_embed.proj.weight
    fan_in = pw[0].numel()
    assert 0.8 * fan_in**-0.5 < pw.std().item() < 0.95 * fan_in**-0.5 and pw.abs().max() <= 2 * fan_in**-0.5
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.equal(model.norm.weight, torch.ones(48))
    assert model.cls_token.abs().max().item() < 1e-4


def test_reset_classifier() -> None:
    model = randomize_(ViT(small_cfg()), seed=15).eval()
    x = images(model.cfg, batch=3)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)

    model.reset_classifier(5)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5 and model.head.in_features == 48
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert model.num_classes == 5 and model.cfg.num_classes == 5
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(3, 5))

    model.reset_classifier(0)
    assert isinstance(model.head, nn.Identity)
    assert model.num_classes == 0
    assert "head.weight" not in model.state_dict()
    with torch.no_grad():
        feats = model(x)
    assert feats.shape == (3, 48)
    torch.testing.assert_close(feats, pooled)


def test_reset_classifier_pool() -> None:
    model = randomize_(ViT(small_cfg(pool="cls")), seed=16).eval()
    x = images(model.cfg, batch=2)
    model.reset_classifier(0, pool="gap")
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model(x), feats[:, 1:].mean(1))
    no_cls = ViT(small_cfg(class_token=False, pool="gap"))
    with pytest.raises(ValueError, match="class_token=True"):
        no_cls.reset_classifier(3, pool="cls")


# ----------------------------------------------------------------------------- 8. gradients

GRAD_CASES = {
    "cls-learned": dict(),
    "gap-no-cls-sincos-manual": dict(class_token=False, pool="gap", pos_embed="sincos", patch_embed="manual"),
    "gap-with-cls-explicit": dict(pool="gap", attn_impl="explicit"),
    "droppath-dropout-train": dict(drop_path_rate=0.3, drop_rate=0.1, attn_drop_rate=0.1, depth=3),
    "droppath-nonsquare-train": dict(img_size=(24, 36), patch_size=(4, 6), in_chans=1, drop_path_rate=0.2),
    "conv-stem": dict(patch_embed="conv_stem", patch_size=8),
}


@pytest.mark.parametrize("overrides", list(GRAD_CASES.values()), ids=list(GRAD_CASES))
def test_gradient_reaches_every_parameter(overrides: dict) -> None:
    torch.manual_seed(17)
    model = ViT(small_cfg(**overrides)).train()
    with torch.no_grad():
        model.head.weight.normal_(std=0.02)  # the zero head would block gradient to the body
    x = images(model.cfg, batch=8, seed=18)
    y = torch.arange(8) % model.cfg.num_classes
    F.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    assert params  # sanity
    no_grad = [n for n, p in params.items() if p.grad is None]
    zero_grad = [n for n, p in params.items() if p.grad is not None and torch.count_nonzero(p.grad) == 0]
    assert not no_grad, no_grad
    assert not zero_grad, zero_grad
    assert all(torch.isfinite(p.grad).all() for p in params.values())


def test_zero_head_blocks_gradient_to_the_body() -> None:
    """The flip side of the zero head: only the head learns on the first step."""
    model = ViT(small_cfg())
    x = images(model.cfg, batch=4)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert torch.count_nonzero(model.head.weight.grad) > 0
    assert torch.count_nonzero(model.blocks[0].attn.qkv.weight.grad) == 0


# ----------------------------------------------------------------------------- 9. overfitting


def test_tiny_model_overfits_small_batch() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 28, 28, generator=gen)
    y = torch.arange(32) % 4
    model = ViT(ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=4, embed_dim=32, depth=2,
                          num_heads=4, mlp_ratio=2.0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first_loss = None
    for step in range(300):
        loss = F.cross_entropy(model(x), y)
        first_loss = loss.item() if first_loss is None else first_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                acc = (model.eval()(x).argmax(1) == y).float().mean().item()
            model.train()
            if acc == 1.0:
                break
    assert acc == 1.0, f"accuracy {acc} after {step + 1} steps"
    assert abs(first_loss - math.log(4)) < 1e-4  # zero head: uniform predictions at the start
    assert loss.item() < first_loss


# ----------------------------------------------------------------------------- 10. DropPath


def test_drop_path_eval_and_zero_probability_are_identity() -> None:
    x = torch.randn(64, 5, 7)
    dp = DropPath(0.5).eval()
    assert torch.equal(dp(x), x)
    dp0 = DropPath(0.0).train()
    assert torch.equal(dp0(x), x)


def test_drop_path_train_drops_whole_samples() -> None:
    torch.manual_seed(19)
    dp = DropPath(0.5).train()
    x = torch.ones(4000, 3, 5)
    out = dp(x)
    per_sample = out.reshape(4000, -1)
    # each sample is dropped entirely (all 0) or kept entirely, scaled by 1 / (1 - p) = 2
    dropped = (per_sample == 0).all(dim=1)
    kept = (per_sample == 2).all(dim=1)
    assert (dropped | kept).all()
    frac = dropped.float().mean().item()
    assert 0.45 < frac < 0.55
    assert abs(out.mean().item() - 1.0) < 0.1  # unbiased in expectation
    # different calls draw different masks
    assert not torch.equal(dp(x), out)


def test_drop_path_rates_increase_linearly_with_depth() -> None:
    model = ViT(small_cfg(depth=5, drop_path_rate=0.2))
    rates = [b.drop_path1.p for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert all(b.drop_path1.p == b.drop_path2.p for b in model.blocks)
    assert ViT(small_cfg(depth=1, drop_path_rate=0.2)).blocks[0].drop_path1.p == 0.0


def test_eval_mode_is_deterministic_with_dropouts() -> None:
    model = randomize_(ViT(small_cfg(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3)), seed=20)
    x = images(model.cfg, batch=4)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)
        model.train()
        assert not torch.allclose(model(x), model(x))


# ----------------------------------------------------------------------------- 11. errors


def test_patch_must_divide_image() -> None:
    with pytest.raises(ValueError, match=r"does not divide") as info:
        ViTConfig(img_size=28, patch_size=5)
    msg = str(info.value)
    assert "(5, 5)" in msg and "(28, 28)" in msg and "28x28" in msg
    with pytest.raises(ValueError, match=r"does not divide img_size \(24, 36\)"):
        ViTConfig(img_size=(24, 36), patch_size=(4, 5))


def test_conv_stem_sees_across_patch_borders_and_needs_power_of_two_patches() -> None:
    torch.manual_seed(0)
    for mode, crosses in (("conv", False), ("manual", False), ("conv_stem", True)):
        model = ViT(small_cfg(patch_embed=mode, patch_size=8)).eval()  # 4x4 grid of 8x8 patches
        x = images(model.cfg, batch=1)
        nudged = x.clone()
        nudged[..., 7, 7] += 1.0  # the last pixel of patch 0, beside patches 1, 4 and 5
        with torch.no_grad():
            changed = (model.patch_embed(nudged) - model.patch_embed(x)).abs().amax(-1)[0] > 1e-6
        assert changed[0] and bool(changed[[1, 4, 5]].all()) == crosses, mode
        assert not changed[[2, 3, 8, 15]].any(), mode  # a 3x3 stride-2 stack still only looks nearby
    stem = ViT(small_cfg(patch_embed="conv_stem", patch_size=8, embed_dim=48))
    assert [m.stride for m in stem.patch_embed.stem if isinstance(m, nn.Conv2d)] == [(2, 2)] * 3  # 8 = 2^3
    assert stem.patch_embed.proj.kernel_size == (1, 1) and stem.patch_embed.proj.out_channels == 48
    assert count_flops(stem) > count_flops(ViT(small_cfg(patch_size=8)))
    for bad in (7, (4, 8), 1):
        with pytest.raises(ValueError, match="power-of-two patch size"):
            ViTConfig(img_size=28 if bad == 7 else 32, patch_size=bad, patch_embed="conv_stem")


def test_stem_full_res_convs_add_stride_1_convs_ahead_of_the_downsampling() -> None:
    torch.manual_seed(0)
    plain = ViT(small_cfg(patch_embed="conv_stem", patch_size=4, embed_dim=64, num_heads=4))
    deeper = ViT(small_cfg(patch_embed="conv_stem", patch_size=4, embed_dim=64, num_heads=4,
                         stem_full_res_convs=2))
    convs = [m for m in deeper.patch_embed.stem if isinstance(m, nn.Conv2d)]
    assert [m.stride for m in convs] == [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert [m.out_channels for m in convs] == [16, 16, 32, 64]  # half the first stride-2 width (32), at least 16
    assert len(deeper.patch_embed.stem) == len(plain.patch_embed.stem) + 6  # conv, BN, ReLU each
    x = images(deeper.cfg, batch=2)
    assert deeper.patch_embed(x).shape == plain.patch_embed(x).shape == (2, 64, 64)  # same 8x8 grid of tokens
    assert count_flops(deeper) > count_flops(plain)
    plain_keys = set(plain.state_dict())
    assert {k for k in plain_keys if not k.startswith("patch_embed.stem")} <= set(deeper.state_dict())
    assert set(ViT(small_cfg(patch_embed="conv_stem", stem_full_res_convs=0)).state_dict()) == set(
        ViT(small_cfg(patch_embed="conv_stem")).state_dict())  # the default leaves checkpoints' keys alone
    for bad in (dict(stem_full_res_convs=1), dict(patch_embed="conv_stem", stem_full_res_convs=-1)):
        with pytest.raises(ValueError, match="stem_full_res_convs"):
            small_cfg(**bad)


def test_stem_stage_convs_add_stride_1_convs_after_each_downsampling() -> None:
    torch.manual_seed(0)
    plain = ViT(small_cfg(patch_embed="conv_stem", patch_size=4, embed_dim=64, num_heads=4, stem_full_res_convs=1))
    deeper = ViT(small_cfg(patch_embed="conv_stem", patch_size=4, embed_dim=64, num_heads=4, stem_full_res_convs=1,
                           stem_stage_convs=2))
    convs = [m for m in deeper.patch_embed.stem if isinstance(m, nn.Conv2d)]
    assert [m.stride for m in convs] == [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(3, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    x = images(deeper.cfg, batch=2)
    assert deeper.patch_embed(x).shape == plain.patch_embed(x).shape == (2, 64, 64)  # same 8x8 grid of tokens
    # the extra convs run at 16x16 (32 channels) and 8x8 (64 channels): 2 FLOPs per multiply-add
    extra = 2 * 9 * (32 * 32 * 16 * 16 + 64 * 64 * 8 * 8)
    assert count_flops(deeper) - count_flops(plain) == pytest.approx(extra, rel=0.02)
    assert set(ViT(small_cfg(patch_embed="conv_stem", stem_stage_convs=1)).state_dict()) == set(
        ViT(small_cfg(patch_embed="conv_stem")).state_dict())  # the default leaves checkpoints' keys alone
    for bad in (dict(stem_stage_convs=2), dict(patch_embed="conv_stem", stem_stage_convs=0)):
        with pytest.raises(ValueError, match="stem_stage_convs"):
            small_cfg(**bad)


def test_wrong_channel_count() -> None:
    model = ViT(small_cfg(in_chans=3))
    with pytest.raises(ValueError, match=r"expected 3 input channel\(s\), got 1"):
        model(torch.zeros(2, 1, 32, 32))
    gray = ViT(small_cfg(in_chans=1))
    with pytest.raises(ValueError, match=r"expected 1 input channel\(s\), got 3"):
        gray(torch.zeros(2, 3, 32, 32))


def test_wrong_image_size() -> None:
    model = ViT(small_cfg(img_size=(24, 36), patch_size=(4, 6)))
    with pytest.raises(ValueError, match=re.escape("expected images of 24x36 pixels (H x W), got 36x24")):
        model(torch.zeros(1, 3, 36, 24))
    with pytest.raises(ValueError, match=re.escape("expected images of 24x36 pixels (H x W), got 28x28")):
        model.forward_features(torch.zeros(1, 3, 28, 28))


def test_dynamic_img_size_takes_whole_patches_only() -> None:
    model = ViT(small_cfg(dynamic_img_size=True, patch_embed="manual"))
    assert model(torch.zeros(1, 3, 16, 40)).shape == (1, 10)  # unfold + linear follows the input's grid too
    with pytest.raises(ValueError, match=re.escape("patch size (8, 8) divides, got 28x28")):
        model(torch.zeros(1, 3, 28, 28))


def test_dynamic_sincos_table_is_rebuilt_for_the_grid() -> None:
    model = ViT(small_cfg(dynamic_img_size=True, pos_embed="sincos", depth=0))
    table = model._pos_embed_for((3, 5))
    assert table.shape == (1, 1 + 15, 48) and torch.equal(table[0, 1:], sincos_pos_embed_2d((3, 5), 48))
    assert torch.equal(table[0, :1], torch.zeros(1, 48))  # the CLS slot


def test_unbatched_input() -> None:
    model = ViT(small_cfg())
    with pytest.raises(ValueError, match="add a batch dimension"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=re.escape("(B, 3, 32, 32)")):
        model(torch.zeros(3, 32, 32))


def test_embed_dim_must_divide_by_heads() -> None:
    with pytest.raises(ValueError, match="embed_dim 50 is not divisible by num_heads 3"):
        ViTConfig(embed_dim=50, num_heads=3)


def test_cls_pool_needs_class_token() -> None:
    with pytest.raises(ValueError, match=re.escape("pool='cls' needs class_token=True")):
        ViTConfig(class_token=False, pool="cls")
    with pytest.raises(ValueError, match=re.escape("pool='cls' needs class_token=True")):
        ViT(small_cfg(class_token=False, pool="gap"), pool="cls")


@pytest.mark.parametrize(
    "field,value",
    [("patch_embed", "foo"), ("pos_embed", "rope"), ("pool", "max"), ("attn_impl", "flash")],
)
def test_invalid_choices(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r} is not one of")):
        ViTConfig(**{field: value})


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError, match="expected an int or a pair"):
        ViTConfig(img_size=(1, 2, 3))
    with pytest.raises(ValueError, match="must be positive"):
        ViTConfig(img_size=32, patch_size=0)


# ----------------------------------------------------------------------------- 12. FLOPs


def test_count_flops_vit_tiny() -> None:
    flops = count_flops(model_config("vit_tiny_patch16_224"))
    assert 2.3e9 < flops < 2.7e9
    assert flops == analytic_flops(model_config("vit_tiny_patch16_224"))


@pytest.mark.parametrize(
    "cfg",
    [
        small_cfg(),
        small_cfg(img_size=(24, 36), patch_size=(4, 6), in_chans=1, class_token=False, pool="gap", mlp_ratio=2.0),
        model_config("vit_seed"),
    ],
    ids=["small", "nonsquare-gap", "seed"],
)
def test_count_flops_matches_hand_count(cfg: ViTConfig) -> None:
    assert count_flops(cfg) == analytic_flops(cfg)


def test_count_flops_grows_with_size_and_ignores_kernel() -> None:
    sizes = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224"]
    flops = [count_flops(model_config(name)) for name in sizes]
    assert flops == sorted(flops) and len(set(flops)) == 4
    cfg = small_cfg(attn_impl="sdpa")
    model = ViT(cfg)
    assert count_flops(model) == count_flops(cfg) == count_flops(small_cfg(attn_impl="explicit"))
    assert model.cfg.attn_impl == "sdpa"  # the probe copy did not change the model's config
    assert model.patch_embed.proj.weight.device.type == "cpu"


# ----------------------------------------------------------------------------- building blocks


def test_mlp_and_block_shapes() -> None:
    cfg = small_cfg(mlp_ratio=2.5)
    mlp = MLP(cfg)
    assert mlp.fc1.out_features == 120 and isinstance(mlp.act, nn.GELU)
    block = randomize_(Block(cfg), seed=21).eval()
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        out, w = block(x, return_attention=True)
        torch.testing.assert_close(out, block(x), atol=1e-5, rtol=0)
        # pre-norm residual structure, written out
        h = x + block.attn(block.norm1(x))
        torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)), atol=1e-5, rtol=0)
    assert w.shape == (2, 3, 9, 9)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_a_model_built_without_init_loads_to_the_same_function(pos_embed):
    """ViT.without_init skips drawing random weights that a checkpoint overwrites; loaded, it is the same model."""
    cfg = ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2,
                    pos_embed=pos_embed, patch_embed="conv_stem")
    torch.manual_seed(0)
    source = ViT(cfg).eval()
    empty = ViT.without_init(cfg)
    empty.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(empty.eval()(x), source(x))
    if pos_embed == "sincos":  # the fixed table is computed, not left uninitialised
        assert torch.equal(empty.pos_embed, source.pos_embed)
