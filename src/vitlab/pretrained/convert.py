"""Convert state dicts from timm, torchvision, Hugging Face, Google's JAX ``.npz``, TF-Hub and Keras into our names.

Every converter returns our parameter names (timm's, see :mod:`vitlab.model`) and a
list of source keys it deliberately left out, with the reason (a representation /
pooler layer the ViT paper removes for fine-tuning). Nothing is dropped silently: any
key a converter does not know is kept under its own name, so the strict load that
follows reports it as unexpected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from vitlab.model import ViTConfig, _pair

FORMATS = ("vitlab", "timm", "torchvision", "hf", "npz", "tf_hub", "keras")


@dataclass
class Converted:
    """Our state dict, what was left out on purpose, and what the source tells about the architecture."""

    state: dict[str, torch.Tensor]
    source_format: str
    dropped: dict[str, str] = field(default_factory=dict)
    """source key -> why it was not loaded."""
    num_heads: int | None = None
    """Known from the source layout (npz, Hugging Face config), else None."""


def detect_format(keys) -> str:
    """Which layout a checkpoint's keys are in: timm, torchvision, hf, npz or keras.

    ("tf_hub" is never detected: a jax2tf SavedModel's reader gives it npz names and says so.)"""
    keys = set(keys)
    if any(k.startswith("class_token/") or _KERAS_LN.search(k) for k in keys):  # vit-keras: npz has cls, scale
        return "keras"
    if any(k.startswith("Transformer/") for k in keys) or "embedding/kernel" in keys:
        return "npz"
    if "conv_proj.weight" in keys or "encoder.pos_embedding" in keys:
        return "torchvision"
    if any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings")) for k in keys):
        return "hf"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    sample = sorted(keys)[:8]
    raise ValueError(
        f"cannot tell which ViT layout this checkpoint uses (first keys: {sample}); expected timm "
        "(patch_embed.proj.weight), torchvision (conv_proj.weight), Hugging Face (vit.embeddings...) "
        "Google .npz (Transformer/encoderblock_0/...) or vit-keras (class_token/cls, Transformer_encoderblock_0/...)"
    )


def convert(state: dict, source_format: str | None = None) -> Converted:
    """Convert ``state`` (tensors or numpy arrays) from ``source_format`` (detected if None)."""
    source_format = source_format or detect_format(state)
    converters = {"timm": from_timm, "vitlab": from_timm, "torchvision": from_torchvision, "hf": from_hf, "npz": from_npz,
                  "tf_hub": from_tf_hub, "keras": from_keras}
    if source_format not in converters:
        raise ValueError(f"unknown source format {source_format!r}; choose one of {FORMATS}")
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    return converters[source_format](tensors)


def from_timm(state: dict[str, torch.Tensor]) -> Converted:
    """timm's ``VisionTransformer`` uses our names already; fc_norm / distillation tokens are refused."""
    out, dropped = {}, {}
    for key, value in state.items():
        if key in ("dist_token", "head_dist.weight", "head_dist.bias", "reg_token"):
            raise ValueError(f"checkpoint has {key!r}: distilled / register-token ViTs are not supported by vitlab's ViT "
                             "(use the non-distilled DeiT weights)")
        if key.startswith("fc_norm."):
            raise ValueError("checkpoint has fc_norm (timm's global-pool variant with a norm after pooling); vitlab's "
                             "ViT pools after the final norm, so this checkpoint cannot be loaded exactly")
        out[key] = value
    # timm's ``no_embed_class`` tables (no CLS slot) are kept as they are: whether a table has a CLS
    # slot depends on the patch grid, which only infer_config / load_pretrained know (see there).
    return Converted(out, "timm", dropped)


def _is_square(n: int) -> bool:
    return int(round(n**0.5)) ** 2 == n


_TV_LAYER = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")
_TV_BLOCK = {
    "ln_1": "norm1", "ln_2": "norm2", "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias", "self_attention.out_proj": "attn.proj",
    "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2", "mlp.linear_1": "mlp.fc1", "mlp.linear_2": "mlp.fc2",
}


def from_torchvision(state: dict[str, torch.Tensor]) -> Converted:
    """torchvision's ``VisionTransformer`` (``conv_proj``, ``encoder.layers.encoder_layer_N``, ``heads.head``)."""
    out, dropped = {}, {}
    top = {"class_token": "cls_token", "conv_proj.weight": "patch_embed.proj.weight",
           "conv_proj.bias": "patch_embed.proj.bias", "encoder.pos_embedding": "pos_embed",
           "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
           "heads.head.weight": "head.weight", "heads.head.bias": "head.bias"}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
        elif m := _TV_LAYER.fullmatch(key):
            index, rest = m.groups()
            out[f"blocks.{index}.{_rename(rest, _TV_BLOCK)}"] = value
        elif key.startswith("heads.pre_logits"):
            dropped[key] = "representation layer (pre-logits); the ViT paper removes it for fine-tuning"
        else:
            out[key] = value
    return Converted(out, "torchvision", dropped)


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


# Hub files (and transformers < 5 state dicts): encoder.layer.N.attention.attention.query ...;
# transformers >= 5 modules (model.state_dict()): layers.N.attention.q_proj, layers.N.mlp.fc1 ...
_HF_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)")
_HF_QKV = re.compile(r"attention\.(?:attention\.(query|key|value)|([qkv])_proj)\.(weight|bias)")
_HF_BLOCK = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}


def from_hf(state: dict[str, torch.Tensor]) -> Converted:
    """Hugging Face ``ViTModel`` / ``ViTForImageClassification`` (separate query/key/value)."""
    out, dropped = {}, {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    top = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
           "classifier.weight": "head.weight", "classifier.bias": "head.bias"}
    for key, value in state.items():
        short = key[len("vit."):] if key.startswith("vit.") else key
        if short in top:
            out[top[short]] = value
        elif short.startswith("pooler."):
            dropped[key] = "pooler (dense + tanh on the CLS token); the ViT paper removes it for fine-tuning"
        elif short == "embeddings.mask_token":
            dropped[key] = "mask token for masked image modelling; not used for classification"
        elif m := _HF_LAYER.fullmatch(short):
            index, rest = int(m.group(1)), m.group(2)
            if q := _HF_QKV.fullmatch(rest):
                part = q.group(1) or {"q": "query", "k": "key", "v": "value"}[q.group(2)]
                qkv.setdefault((index, q.group(3)), {})[part] = value
            else:
                out[f"blocks.{index}.{_rename(rest, _HF_BLOCK)}"] = value
        else:
            out[key] = value
    for (index, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"Hugging Face checkpoint has only {sorted(parts)} of query/key/value {kind} in layer {index}")
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return Converted(out, "hf", dropped)


_NPZ_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/(.+)")


def from_npz(state: dict[str, torch.Tensor]) -> Converted:
    """Google's JAX/Flax release: ``Transformer/encoderblock_N/...``, kernels stored input-major (HWIO)."""
    out, dropped = {}, {}
    attn: dict[tuple[int, str, str], torch.Tensor] = {}
    num_heads = None
    for key, value in state.items():
        if key == "embedding/kernel":  # (ph, pw, C, D) -> (D, C, ph, pw)
            out["patch_embed.proj.weight"] = value.permute(3, 2, 0, 1)
        elif key == "embedding/bias":
            out["patch_embed.proj.bias"] = value
        elif key == "cls":
            out["cls_token"] = value
        elif key == "Transformer/posembed_input/pos_embedding":
            out["pos_embed"] = value
        elif key in ("Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"):
            out["norm." + ("weight" if key.endswith("scale") else "bias")] = value
        elif key == "head/kernel":
            out["head.weight"] = value.t()
        elif key == "head/bias":
            out["head.bias"] = value
        elif key.startswith("pre_logits/"):
            dropped[key] = "representation layer (pre-logits); the ViT paper removes it for fine-tuning"
        elif m := _NPZ_BLOCK.fullmatch(key):
            index, rest = int(m.group(1)), m.group(2)
            prefix = f"blocks.{index}."
            if a := re.fullmatch(r"MultiHeadDotProductAttention_1/(query|key|value|out)/(kernel|bias)", rest):
                attn[(index, a.group(1), a.group(2))] = value
                if a.group(1) == "query" and a.group(2) == "kernel":
                    num_heads = value.shape[1]
            elif n := re.fullmatch(r"LayerNorm_([02])/(scale|bias)", rest):
                out[prefix + ("norm1." if n.group(1) == "0" else "norm2.") + ("weight" if n.group(2) == "scale" else "bias")] = value
            elif d := re.fullmatch(r"MlpBlock_3/Dense_([01])/(kernel|bias)", rest):
                name = prefix + ("mlp.fc1." if d.group(1) == "0" else "mlp.fc2.")
                out[name + ("weight" if d.group(2) == "kernel" else "bias")] = value.t() if d.group(2) == "kernel" else value
            else:
                out[key] = value
        else:
            out[key] = value
    for index in sorted({i for i, _, _ in attn}):
        try:
            q, k, v = (attn[(index, n, "kernel")] for n in ("query", "key", "value"))  # (D, H, hd)
            qb, kb, vb = (attn[(index, n, "bias")] for n in ("query", "key", "value"))  # (H, hd)
            o, ob = attn[(index, "out", "kernel")], attn[(index, "out", "bias")]  # (H, hd, D), (D,)
        except KeyError as exc:
            raise ValueError(f".npz block {index} lacks attention parameter {exc.args[0]}") from exc
        dim = q.shape[0]
        out[f"blocks.{index}.attn.qkv.weight"] = torch.cat([t.reshape(dim, -1).t() for t in (q, k, v)])
        out[f"blocks.{index}.attn.qkv.bias"] = torch.cat([t.reshape(-1) for t in (qb, kb, vb)])
        out[f"blocks.{index}.attn.proj.weight"] = o.reshape(-1, o.shape[-1]).t()
        out[f"blocks.{index}.attn.proj.bias"] = ob
    return Converted({k: v.contiguous() for k, v in out.items()}, "npz", dropped, num_heads)


def from_tf_hub(state: dict[str, torch.Tensor]) -> Converted:
    """A jax2tf SavedModel (TF-Hub / Kaggle ViTs by Sayak Paul): Google's Flax parameters, named by the reader."""
    return replace(from_npz(state), source_format="tf_hub")


_KERAS_LN = re.compile(r"(?:LayerNorm_[02]|encoder_norm)/(?:gamma|beta)$")
_KERAS_BLOCK = re.compile(r"Transformer[/_]encoderblock_(\d+)/(.+)")
_KERAS_ATTN = re.compile(r"MultiHeadDotProductAttention_1/(query|key|value|out)/(kernel|bias)")
_KERAS_MLP = re.compile(r"MlpBlock_3/(?:.*[/_])?Dense_([01])/(kernel|bias)")  # Dense named "<block>_Dense_0" or "<block>/Dense_0"


def _keras_key(key: str) -> str:
    """Keras 3 files number a layer's variables (``layer/0``); name them as Keras does (``layer/kernel``)."""
    layer, _, last = key.rpartition("/")
    if not last.isdigit():
        return key
    if re.search(r"(?:LayerNorm_\d+|encoder_norm)$", layer):
        names = ("gamma", "beta")
    elif layer.endswith("class_token"):
        names = ("cls",)
    elif layer.endswith("posembed_input"):
        names = ("pos_embedding",)
    else:
        names = ("kernel", "bias")
    return f"{layer}/{names[int(last)]}" if int(last) < len(names) else key


def from_keras(state: dict[str, torch.Tensor]) -> Converted:
    """The ``vit-keras`` package's layout (``.keras``, ``.weights.h5``, ``.h5``): Dense kernels stored (in, out),
    query/key/value as separate (D, D) Dense layers, LayerNorm gamma/beta; Keras 3 names use ``_`` where Keras 2's
    used ``/`` (``Transformer_encoderblock_0`` / ``Transformer/encoderblock_0``)."""
    out, dropped = {}, {}
    attn: dict[tuple[int, str, str], torch.Tensor] = {}
    ln = {"gamma": "weight", "beta": "bias"}
    for source_key, value in state.items():
        key = _keras_key(source_key)
        if key == "embedding/kernel":  # (ph, pw, C, D) -> (D, C, ph, pw)
            out["patch_embed.proj.weight"] = value.permute(3, 2, 0, 1)
        elif key == "embedding/bias":
            out["patch_embed.proj.bias"] = value
        elif key == "class_token/cls":  # (1, 1, D)
            out["cls_token"] = value
        elif re.fullmatch(r"Transformer[/_]posembed_input/pos_embedding", key):  # (1, 1 + N, D)
            out["pos_embed"] = value
        elif n := re.fullmatch(r"Transformer[/_]encoder_norm/(gamma|beta)", key):
            out["norm." + ln[n.group(1)]] = value
        elif h := re.fullmatch(r"head/(kernel|bias)", key):  # kernel (D, K)
            out["head." + ("weight" if h.group(1) == "kernel" else "bias")] = value.t() if h.group(1) == "kernel" else value
        elif key.startswith("pre_logits/"):
            dropped[source_key] = "representation layer (pre-logits); the ViT paper removes it for fine-tuning"
        elif m := _KERAS_BLOCK.fullmatch(key):
            index, rest = int(m.group(1)), m.group(2)
            prefix = f"blocks.{index}."
            if a := _KERAS_ATTN.fullmatch(rest):  # kernels (D, D), biases (D,)
                attn[(index, a.group(1), a.group(2))] = value
            elif n := re.fullmatch(r"LayerNorm_([02])/(gamma|beta)", rest):
                out[prefix + ("norm1." if n.group(1) == "0" else "norm2.") + ln[n.group(2)]] = value
            elif d := _KERAS_MLP.fullmatch(rest):  # Dense_0 kernel (D, M), Dense_1 kernel (M, D)
                name = prefix + ("mlp.fc1." if d.group(1) == "0" else "mlp.fc2.")
                out[name + ("weight" if d.group(2) == "kernel" else "bias")] = value.t() if d.group(2) == "kernel" else value
            else:
                out[source_key] = value
        else:
            out[source_key] = value
    for index in sorted({i for i, _, _ in attn}):
        try:
            q, k, v, o = (attn[(index, n, "kernel")] for n in ("query", "key", "value", "out"))  # (D, D) each, (in, out)
            qb, kb, vb, ob = (attn[(index, n, "bias")] for n in ("query", "key", "value", "out"))  # (D,) each
        except KeyError as exc:
            raise ValueError(f"Keras block {index} lacks attention parameter {exc.args[0]}") from exc
        shapes = {tuple(t.shape) for t in (q, k, v, o)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"Keras block {index}: query/key/value/out kernels should all be (D, D), got {sorted(shapes)}")
        out[f"blocks.{index}.attn.qkv.weight"] = torch.cat([q.t(), k.t(), v.t()])  # (3D, D)
        out[f"blocks.{index}.attn.qkv.bias"] = torch.cat([qb, kb, vb])
        out[f"blocks.{index}.attn.proj.weight"] = o.t()
        out[f"blocks.{index}.attn.proj.bias"] = ob
    return Converted({k: v.contiguous() for k, v in out.items()}, "keras", dropped)


def infer_config(state: dict[str, torch.Tensor], num_heads: int | None = None, **overrides) -> ViTConfig:
    """The architecture implied by a converted state dict (our names).

    The number of heads is not visible in fused qkv weights; it defaults to a head width
    of 64 (true of ViT-Ti/S/B/L) unless the source told it or ``num_heads`` is given.
    """
    try:
        proj = state["patch_embed.proj.weight"]
    except KeyError:
        raise ValueError("checkpoint has no patch embedding (patch_embed.proj.weight): is it a ViT?") from None
    dim, in_chans, ph, pw = proj.shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    class_token = "cls_token" in state
    prefix = 1 if class_token else 0
    if "pos_embed" in state:
        rows = state["pos_embed"].shape[1]
        if "img_size" in overrides:  # the checkpoint's own size: its table must fit that grid
            h, w = _pair(overrides["img_size"])
            grid = (h // ph, w // pw)
            n = grid[0] * grid[1]
            if rows != n + prefix and not (prefix and rows == n):  # rows == n: timm no_embed_class (no CLS slot)
                raise ValueError(f"img_size {(h, w)} makes a {grid[0]}x{grid[1]} patch grid ({n} positions"
                                 f"{' + CLS' if prefix else ''}), but the position table has {rows} rows")
        elif _is_square(rows - prefix):
            side = int(round((rows - prefix) ** 0.5))
            grid = (side, side)
        elif prefix and _is_square(rows):  # timm no_embed_class: no position for the CLS token
            side = int(round(rows**0.5))
            grid = (side, side)
        else:
            raise ValueError(f"position table has {rows - prefix} patch positions, not a square grid: give img_size explicitly")
        pos = "learned"
    else:
        grid, pos = (224 // ph, 224 // pw), "none"
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * dim
    cfg = dict(
        img_size=(grid[0] * ph, grid[1] * pw), patch_size=(ph, pw), in_chans=in_chans,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0, embed_dim=dim, depth=depth,
        num_heads=num_heads or max(1, dim // 64), mlp_ratio=hidden / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state, pos_embed=pos, class_token=class_token,
        pool="cls" if class_token else "gap",
    )
    cfg.update(overrides)
    return ViTConfig(**cfg)
