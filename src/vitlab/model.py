"""The Vision Transformer, from scratch, in one file.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale" (https://arxiv.org/abs/2010.11929). Read top to bottom:

    image (B, C, H, W)
      -> PatchEmbed        split into P x P patches, project each to D dims  (B, N, D)
      -> prepend CLS token                                                     (B, 1+N, D)
      -> + position embedding (learned, 2-D sin-cos, or none)
      -> Block x depth     pre-norm: x + Attention(LN(x)); x + MLP(LN(x))
      -> LayerNorm
      -> pool (CLS token or global average) -> Linear head                   (B, classes)

Parameter and method names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``, ``forward_features``,
``forward_head``, ``reset_classifier``, ``no_weight_decay``) so that real pretrained
checkpoints map onto this model without renaming.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ViTConfig",
    "ViT",
    "PatchEmbed",
    "Attention",
    "MLP",
    "Block",
    "DropPath",
    "sincos_pos_embed_2d",
    "resample_pos_embed",
    "MODEL_PRESETS",
    "MODEL_ALIASES",
    "model_config",
    "hub_folder",
    "is_model_folder",
]


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair (height, width), got {value!r}")
    return (int(value[0]), int(value[1]))


_CHOICES = {
    "patch_embed": ("conv", "manual", "conv_stem"),
    "pos_embed": ("learned", "sincos", "none"),
    "pool": ("cls", "gap"),
    "attn_impl": ("sdpa", "explicit"),
}


@dataclass(frozen=True)
class ViTConfig:
    """Everything that defines a ViT's architecture (frozen: change one with ``dataclasses.replace``).

    ``img_size`` and ``patch_size`` take an int (square) or ``(height, width)``.
    ``mlp_ratio`` sets the hidden width of each MLP as a multiple of ``embed_dim``.
    """

    img_size: int | tuple[int, int] = 224
    """Input height and width in pixels (one int: square)."""
    patch_size: int | tuple[int, int] = 16
    """Patch height and width in pixels; must divide img_size."""
    in_chans: int = 3
    """Input channels: 1 (grayscale) or 3 (RGB)."""
    num_classes: int = 1000
    """Classes of the head (training sets it from the data)."""
    embed_dim: int = 768
    """Token width D."""
    depth: int = 12
    """Transformer blocks."""
    num_heads: int = 12
    """Attention heads per block; must divide embed_dim."""
    mlp_ratio: float = 4.0
    """Hidden width of each MLP as a multiple of embed_dim."""
    qkv_bias: bool = True
    """Bias in the query/key/value projection."""
    patch_embed: Literal["conv", "manual", "conv_stem"] = "conv"
    """How patches are embedded: a strided convolution, or unfold + linear (same weights), or
    ``conv_stem``: 3x3 stride-2 convolutions (BatchNorm, ReLU) down to the patch grid, then a 1x1
    projection (Xiao et al. 2021, "Early convolutions help transformers see better"); it needs a
    square power-of-two patch size."""
    stem_full_res_convs: int = 0
    """``conv_stem`` only: this many 3x3 stride-1 convolutions (BatchNorm, ReLU) at the image's own resolution
    before the stride-2 ones, for features that see finer detail than the first downsampling keeps."""
    stem_stage_convs: int = 1
    """``conv_stem`` only: 3x3 convolutions (BatchNorm, ReLU) at each downsampled resolution: the stride-2 one
    and ``stem_stage_convs - 1`` stride-1 ones after it at its width, for a deeper stem at the same token grid."""
    pos_embed: Literal["learned", "sincos", "none"] = "learned"
    """Position embedding: learned, fixed 2-D sin-cos, or none."""
    class_token: bool = True
    """Prepend a learned CLS token."""
    pool: Literal["cls", "gap"] = "cls"
    """Read out the CLS token ("cls") or average the patch tokens ("gap")."""
    drop_rate: float = 0.0
    """Dropout after the position embedding, in the MLPs, after attention, before the head."""
    attn_drop_rate: float = 0.0
    """Dropout on the attention weights."""
    drop_path_rate: float = 0.0
    """Stochastic depth: the largest drop probability, reached by the last block."""
    norm_eps: float = 1e-6
    """LayerNorm epsilon (1e-6 as in the original release; Hugging Face uses 1e-12)."""
    attn_impl: Literal["sdpa", "explicit"] = "sdpa"
    """`sdpa`: fused F.scaled_dot_product_attention; `explicit`: softmax(QK^T/sqrt(d))V."""
    dynamic_img_size: bool = False
    """Also accept images of other sizes that the patch size divides (timm's ``dynamic_img_size``): the position
    embedding is resampled to their patch grid (learned: bicubic; sin-cos: rebuilt). ``img_size`` stays the size
    the embedding is stored for; training at lower resolution first (``--train.progressive_res``) needs it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", _pair(self.img_size))  # frozen: set once, normalised
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        (h, w), (ph, pw) = self.img_size, self.patch_size
        if min(h, w, ph, pw) <= 0:
            raise ValueError(f"img_size {self.img_size} and patch_size {self.patch_size} must be positive")
        for name in ("in_chans", "embed_dim", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.depth < 0 or self.num_classes < 0 or self.mlp_ratio <= 0:
            raise ValueError(f"depth ({self.depth}) and num_classes ({self.num_classes}) must be >= 0 and mlp_ratio "
                             f"({self.mlp_ratio}) > 0")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")
        if h % ph or w % pw:
            fits_h = [p for p in range(1, h + 1) if h % p == 0]
            fits_w = [p for p in range(1, w + 1) if w % p == 0]
            raise ValueError(
                f"patch_size {self.patch_size} does not divide img_size {self.img_size}: "
                f"{h}x{w} pixels do not split into whole {ph}x{pw} patches. Choose a patch height "
                f"from {fits_h} and a patch width from {fits_w}, or resize the images."
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}: "
                "each head gets embed_dim / num_heads dimensions, so pick a divisor."
            )
        if self.patch_embed == "conv_stem" and not (ph == pw and ph >= 2 and ph & (ph - 1) == 0):
            raise ValueError(
                f"patch_embed='conv_stem' halves the image with each stride-2 convolution, so it needs a square "
                f"power-of-two patch size (2, 4, 8, 16, ...); got patch_size {self.patch_size}. Use "
                "patch_embed='conv' for this patch size, or pick a power of two that divides the image."
            )
        if self.stem_full_res_convs < 0 or (self.stem_full_res_convs and self.patch_embed != "conv_stem"):
            raise ValueError(
                f"stem_full_res_convs={self.stem_full_res_convs} needs patch_embed='conv_stem' and a count >= 0; "
                f"got patch_embed={self.patch_embed!r}. Set patch_embed='conv_stem' or stem_full_res_convs=0."
            )
        if self.stem_stage_convs < 1 or (self.stem_stage_convs != 1 and self.patch_embed != "conv_stem"):
            raise ValueError(
                f"stem_stage_convs={self.stem_stage_convs} needs patch_embed='conv_stem' and a count >= 1; "
                f"got patch_embed={self.patch_embed!r}. Set patch_embed='conv_stem' or stem_stage_convs=1."
            )
        if self.pool == "cls" and not self.class_token:
            raise ValueError("pool='cls' needs class_token=True; use pool='gap' for a model without a CLS token")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along height and width."""
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"], d["patch_size"] = list(self.img_size), list(self.patch_size)
        return d


# ----------------------------------------------------------------------------- embeddings


def conv_stem(in_chans: int, embed_dim: int, patch_size: int, full_res_convs: int = 0,
              stage_convs: int = 1) -> tuple[nn.Sequential, int]:
    """``full_res_convs`` blocks of 3x3 stride-1 convolution, then log2(patch) stages, each a 3x3 stride-2
    convolution and ``stage_convs - 1`` stride-1 ones at its width, every one with BatchNorm + ReLU, widening
    towards ``embed_dim``; returns the stack and its output channels (the 1x1 projection to ``embed_dim``
    follows it)."""
    steps = patch_size.bit_length() - 1
    stage_widths = [max(16, embed_dim >> (steps - 1 - i)) for i in range(steps)]  # ..., D/4, D/2, D
    widths = [max(16, stage_widths[0] // 2)] * full_res_convs + [w for w in stage_widths for _ in range(stage_convs)]
    strides = [1] * full_res_convs + ([2] + [1] * (stage_convs - 1)) * steps
    layers, channels = [], in_chans
    for width, stride in zip(widths, strides):
        layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers), channels


class PatchEmbed(nn.Module):
    """Turn the image into one token of ``embed_dim`` per patch.

    ``conv`` and ``manual`` use the same parameter, ``proj.weight`` of shape (D, C, P_h, P_w):
    ``conv`` runs it as a convolution with kernel = stride = patch; ``manual`` flattens
    every patch to a vector of C*P_h*P_w pixels and multiplies by the flattened weight.
    ``conv_stem`` sees across patch borders: a small CNN (``stem``) reduces the image to the patch
    grid and ``proj`` is a 1x1 convolution from its channels to D.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = cfg.img_size, cfg.patch_size, cfg.in_chans
        self.grid_size, self.num_patches = cfg.grid_size, cfg.num_patches
        self.mode, self.dynamic_img_size = cfg.patch_embed, cfg.dynamic_img_size
        if self.mode == "conv_stem":
            self.stem, channels = conv_stem(cfg.in_chans, cfg.embed_dim, cfg.patch_size[0], cfg.stem_full_res_convs,
                                            cfg.stem_stage_convs)
            self.proj = nn.Conv2d(channels, cfg.embed_dim, kernel_size=1)
        else:
            self.stem = None
            self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_chans, *self.img_size)
        if x.ndim != 4:
            raise ValueError(
                f"expected a batch of images shaped (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got a tensor of shape {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channel(s), got {x.shape[1]} (input shape {tuple(x.shape)}); "
                "convert the images (e.g. grayscale <-> RGB) or build the model with in_chans="
                f"{x.shape[1]}"
            )
        if self.dynamic_img_size and x.shape[2] % self.patch_size[0] == 0 and x.shape[3] % self.patch_size[1] == 0:
            return
        if tuple(x.shape[2:]) != self.img_size:
            if self.dynamic_img_size:
                raise ValueError(f"expected images whose sides the patch size {self.patch_size} divides, got "
                                 f"{x.shape[2]}x{x.shape[3]} (input shape {tuple(x.shape)}); resize or crop the images")
            raise ValueError(
                f"expected images of {self.img_size[0]}x{self.img_size[1]} pixels (H x W), got "
                f"{x.shape[2]}x{x.shape[3]} (input shape {tuple(x.shape)}); resize the images or build "
                f"the model with img_size=({x.shape[2]}, {x.shape[3]})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.stem is not None:
            x = self.stem(x)  # (B, C', H/P, W/P)
        if self.mode != "manual":
            x = self.proj(x)  # (B, D, H/P, W/P)
            return x.flatten(2).transpose(1, 2)  # (B, N, D)
        b, c, h, w = x.shape
        (ph, pw) = self.patch_size
        gh, gw = h // ph, w // pw
        patches = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, ph, pw)
        patches = patches.reshape(b, gh * gw, c * ph * pw)  # (B, N, C*ph*pw), row-major over the grid
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


def sincos_pos_embed_2d(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, shape (gh * gw, dim).

    The first half of the channels encodes the row, the second half the column; each
    half is [sin(pos * w_k), cos(pos * w_k)] with w_k = 1 / temperature^(k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    gh, gw = grid_size
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """(1, prefix + H*W, D) -> (1, prefix + H'*W', D): the patch part interpolated as a 2-D image.

    Prefix tokens (CLS) keep their embedding unchanged. ``old_grid`` defaults to a square grid.
    Grids may be non-square (e.g. a 224 checkpoint fine-tuned on 160x224 images).
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = patches.shape[1], patches.shape[2]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"position embedding has {n} patch positions, not a square grid: pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not match the {n} patch positions of the embedding")
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if tuple(old_grid) == new_grid:
        return pos_embed
    image = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=new_grid, mode=interpolation, align_corners=False,
                          antialias=antialias and interpolation in ("bilinear", "bicubic"))
    patches = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


# ----------------------------------------------------------------------------- encoder


class Attention(nn.Module):
    """Multi-head self-attention with one fused projection to queries, keys and values."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.embed_dim // cfg.num_heads
        self.scale = self.head_dim**-0.5
        self.impl = cfg.attn_impl
        self.attn_drop_rate = cfg.attn_drop_rate
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.attn_drop = nn.Dropout(cfg.attn_drop_rate)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, return_attention: bool = False, num_queries: int | None = None):
        """Returns the output (B, N, D), and the attention weights (B, heads, N, N) when asked.

        Asking for the weights always takes the explicit path (the fused kernel never
        materialises them). ``num_queries``: only the first that many tokens ask (output
        (B, num_queries, D)); every token still serves as key and value.
        """
        b, n, d = x.shape
        if num_queries is None:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        else:  # the same fused weight, split: queries for the first tokens, keys and values for all
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :num_queries], w[:d], None if bias is None else bias[:d])
            q = q.reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, num_queries, head_dim)
            kv = F.linear(x, w[d:], None if bias is None else bias[d:])
            k, v = kv.reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        weights = None
        if self.impl == "sdpa" and not return_attention:
            drop = self.attn_drop_rate if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
            out = self.attn_drop(weights) @ v
        out = out.transpose(1, 2).reshape(b, q.shape[2], d)  # concatenate the heads
        out = self.proj_drop(self.proj(out))
        return (out, weights) if return_attention else out


class MLP(nn.Module):
    """Two linear layers with a GELU between: D -> hidden -> D."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(cfg.drop_rate)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)
        self.drop2 = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm Transformer encoder block."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, return_attention: bool = False, num_queries: int | None = None):
        """Tokens (B, N, D) -> (B, N, D), or only the first ``num_queries`` tokens' outputs."""
        out = self.attn(self.norm1(x), return_attention=return_attention, num_queries=num_queries)
        out, weights = out if return_attention else (out, None)
        x = x[:, :num_queries] + self.drop_path1(out)  # [:, :None] keeps every token
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


# ----------------------------------------------------------------------------- the model


class ViT(nn.Module):
    """Vision Transformer. ``ViT(ViTConfig(...))`` or ``ViT.from_preset("vit_tiny_patch16_224")``."""

    def __init__(self, cfg: ViTConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = replace(cfg or ViTConfig(), **overrides)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.embed_dim = self.num_features = cfg.embed_dim
        self.num_prefix_tokens = 1 if cfg.class_token else 0

        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.class_token else None
        num_tokens = self.num_prefix_tokens + cfg.num_patches
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.embed_dim))
        elif cfg.pos_embed == "sincos":  # fixed, so a buffer rebuilt from the config, not saved
            self.register_buffer("pos_embed", self._sincos_table(), persistent=False)
        else:
            self.pos_embed = None
        self.pos_drop = nn.Dropout(cfg.drop_rate)

        drop_path_rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]  # deeper: more
        self.blocks = nn.ModuleList(Block(cfg, p) for p in drop_path_rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def _sincos_table(self) -> torch.Tensor:
        """The fixed 2-D sin-cos position table (1, prefix + patches, D); the CLS slot is zeros."""
        table = sincos_pos_embed_2d(self.cfg.grid_size, self.cfg.embed_dim)
        return torch.cat([torch.zeros(self.num_prefix_tokens, self.cfg.embed_dim), table]).unsqueeze(0)

    @classmethod
    def without_init(cls, cfg: ViTConfig, device: str | torch.device = "cpu") -> ViT:
        """The architecture with uninitialised weights, for a checkpoint to be loaded into: built on the meta device
        (no time spent drawing random weights that would be overwritten), then given memory on ``device``; the fixed
        sin-cos table is computed. Load every parameter into it (``load_state_dict(strict=True)``)."""
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to_empty(device=device)
        if cfg.pos_embed == "sincos":
            model.register_buffer("pos_embed", model._sincos_table().to(device), persistent=False)
        return model

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike, device: str | torch.device = "cpu") -> ViT:
        """A model written by ``vitlab push``: its folder, or a Hub repo ``user/name`` (``hf-hub:user/name``), which is
        downloaded into Hugging Face's cache. Its class names, preprocessing and run are in ``model.pretrained_cfg``."""
        folder = hub_folder(repo_or_dir)
        described = json.loads((folder / "config.json").read_text()).get("vitlab")
        if not described or "model" not in described:
            raise ValueError(f"{folder}/config.json has no 'vitlab' section (not written by `vitlab push`); load timm or "
                             "Hugging Face weights with vitlab.pretrained.load_pretrained instead")
        from safetensors.torch import load_file

        model = cls.without_init(ViTConfig(**described["model"]), device)
        try:
            model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{folder}/model.safetensors does not match its config.json: {exc}") from exc
        model.pretrained_cfg: dict[str, Any] = described
        return model.eval()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ViT:
        """Build a named architecture (see :data:`MODEL_PRESETS`), with overrides."""
        return cls(model_config(name, **overrides))

    def init_weights(self) -> None:
        """Truncated normal (std 0.02) for weights, zeros for biases, LeCun-normal patch embedding, a zero head."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)  # cut at 2 std
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # patch embedding: LeCun normal (std 1/sqrt(fan_in)), as in the original JAX release; patch tokens
        # then start at the scale of the pixels instead of 50x smaller, and small models learn faster
        fan_in = self.patch_embed.proj.weight[0].numel()
        nn.init.trunc_normal_(self.patch_embed.proj.weight, std=fan_in**-0.5, a=-2 * fan_in**-0.5, b=2 * fan_in**-0.5)
        if self.patch_embed.stem is not None:  # a CNN: He init for the convolutions under ReLU
            for module in self.patch_embed.stem.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters that should not be weight-decayed (besides norms and biases)."""
        return {name for name in ("pos_embed", "cls_token") if isinstance(getattr(self, name), nn.Parameter)}

    def reset_classifier(self, num_classes: int, pool: str | None = None) -> None:
        """Replace the head with a fresh zero-initialised one for ``num_classes`` (0: no head)."""
        if pool is not None:
            if pool == "cls" and self.cls_token is None:
                raise ValueError("pool='cls' needs a model built with class_token=True")
            self.cfg = replace(self.cfg, pool=pool)
        self.cfg = replace(self.cfg, num_classes=num_classes)
        self.num_classes = num_classes
        like = self.norm.weight
        self.head = (nn.Linear(self.embed_dim, num_classes, device=like.device, dtype=like.dtype)
                     if num_classes > 0 else nn.Identity())
        if num_classes > 0:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (B, C, H, W), checked by patch_embed
        x = self.patch_embed(x)  # (B, N, D)
        grid = (shape[2] // self.cfg.patch_size[0], shape[3] // self.cfg.patch_size[1])
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        if self.pos_embed is not None:
            x = x + self._pos_embed_for(grid)
        return self.pos_drop(x)

    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embedding (1, prefix + gh*gw, D) for a patch grid (another one: ``dynamic_img_size``)."""
        if grid == self.cfg.grid_size:
            return self.pos_embed
        if self.cfg.pos_embed == "sincos":
            table = sincos_pos_embed_2d(grid, self.cfg.embed_dim).to(self.pos_embed)
            return torch.cat([self.pos_embed[:, : self.num_prefix_tokens], table.unsqueeze(0)], dim=1)
        return resample_pos_embed(self.pos_embed, grid, self.cfg.grid_size, self.num_prefix_tokens)

    def _encode(self, x: torch.Tensor, last_block_queries: int | None = None) -> torch.Tensor:
        """Embed, run the blocks (the last one only for the first ``last_block_queries`` tokens), normalise."""
        x = self._embed(x)
        for i, block in enumerate(self.blocks):
            x = block(x, num_queries=last_block_queries if i == len(self.blocks) - 1 else None)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + N, D)."""
        return self._encode(x)

    def forward_attention(
        self, x: torch.Tensor, layers: list[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Logits and attention weights {layer: (B, heads, T, T)} for ``layers`` (default all).

        The selected layers run the explicit attention path, whatever ``attn_impl`` says.
        """
        depth = len(self.blocks)
        if layers is not None and any(not -depth <= i < depth for i in layers):
            raise IndexError(f"layers {layers} out of range for a model with {depth} blocks (0..{depth - 1} or -1..-{depth})")
        wanted = set(range(depth)) if layers is None else {i % depth for i in layers}
        x, maps = self._embed(x), {}
        for i, block in enumerate(self.blocks):
            if i in wanted:
                x, maps[i] = block(x, return_attention=True)
            else:
                x = block(x)
        return self.forward_head(self.norm(x)), maps

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) -> pooled features (B, D) if ``pre_logits`` else logits."""
        x = x[:, 0] if self.cfg.pool == "cls" else x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, classes): ``forward_head(forward_features(x))``.

        With CLS pooling only the CLS token of the last block reaches the head, so the last
        block computes just that token (patch tokens still serve as its keys and values):
        the same logits and gradients for about 1/depth less work. ``forward_features``
        still returns every token.
        """
        return self.forward_head(self._encode(x, last_block_queries=1 if self.cfg.pool == "cls" else None))

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def count_flops(model_or_cfg: ViT | ViTConfig, every_token: bool = True) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), measured by torch's FlopCounterMode.

    Counted on a weightless copy (meta device) with explicit attention, so the attention
    matrix products are included whatever kernel the model uses. ``every_token``: the
    standard count, every token through every block; False: what ``forward`` runs (under
    CLS pooling it skips the patch tokens' outputs of the last block).
    """
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model_or_cfg.cfg if isinstance(model_or_cfg, ViT) else model_or_cfg
    with torch.device("meta"):
        probe = ViT(replace(cfg, attn_impl="explicit")).eval()
        x = torch.zeros(1, cfg.in_chans, *cfg.img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe.forward_head(probe.forward_features(x)) if every_token else probe(x)
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- named architectures

MODEL_PRESETS: dict[str, ViTConfig] = {
    # The paper's sizes (DeiT's Ti and S) at 224x224 with 16x16 patches, timm's names.
    "vit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    # Small-data models for 28x28 digits.
    "vit_mnist": ViTConfig(
        img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0
    ),
    "vit_mnist_long": ViTConfig(
        img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=6, num_heads=4,
        mlp_ratio=2.0, drop_path_rate=0.05,
    ),
    # Digits through a convolutional stem (two 3x3 stride-2 convs): 49 tokens of 4x4 pixels, dim 64.
    "vit_mnist_stem": ViTConfig(
        img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
        patch_embed="conv_stem",
    ),
    # CIFAR-size model with a convolutional stem: 64 tokens of 4x4 pixels, dim 128, 6 blocks.
    "vit_cifar_stem": ViTConfig(
        img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
        drop_path_rate=0.1, patch_embed="conv_stem",
    ),
    # The configuration of the popular from-scratch tutorial (patch 7, dim 16, 4 heads, 4 blocks, MLP 64).
    "vit_seed": ViTConfig(
        img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=4, num_heads=4, mlp_ratio=4.0
    ),
}
MODEL_ALIASES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
                 "vit_base": "vit_base_patch16_224", "vit_large": "vit_large_patch16_224",
                 "ti16": "vit_tiny_patch16_224", "s16": "vit_small_patch16_224",
                 "b16": "vit_base_patch16_224", "l16": "vit_large_patch16_224"}


def model_config(name: str, **overrides) -> ViTConfig:
    """A copy of the named architecture, with any field overridden."""
    key = MODEL_ALIASES.get(name, name)
    if key not in MODEL_PRESETS:
        close = difflib.get_close_matches(name, [*MODEL_PRESETS, *MODEL_ALIASES], n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise KeyError(f"unknown model preset {name!r}; {hint}choose one of {sorted(MODEL_PRESETS)}")
    return replace(MODEL_PRESETS[key], **overrides)


# ----------------------------------------------------------------------------- pushed models

HUB_FILES = ("config.json", "model.safetensors", "README.md")


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder ``vitlab push --dir`` wrote (or one like it): config.json and model.safetensors."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in HUB_FILES[:2])


def hub_folder(repo_or_dir: str | os.PathLike) -> Path:
    """The local folder of a pushed model: ``repo_or_dir`` itself if it is a folder, else the Hub repo
    ``user/name`` (or ``hf-hub:user/name``) downloaded into Hugging Face's cache."""
    path = Path(repo_or_dir)
    if path.is_dir():
        if not is_model_folder(path):
            raise FileNotFoundError(f"{path} is not a model folder (it needs config.json and model.safetensors, "
                                    "as `vitlab push --dir` writes them)")
        return path
    repo = str(repo_or_dir).removeprefix("hf-hub:")
    if repo.count("/") != 1 or path.exists():
        raise FileNotFoundError(f"{repo_or_dir} is neither a model folder nor a Hub repo name user/name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=list(HUB_FILES)))
    except Exception as exc:  # offline, no such repo, no access: one message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(f"could not download the Hub repo {repo} ({first}); check the name and the network, or "
                                "pass the folder `vitlab push --dir` wrote") from exc
