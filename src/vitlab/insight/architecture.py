"""A diagram of the ViT as vitlab implements it, annotated with the real tensor shapes of one config.

The shapes are not written by hand: :func:`trace_shapes` runs the model once on a dummy batch
(on the ``meta`` device when given a config, so even ViT-L costs nothing) and records them with
forward hooks on the modules and a ``TorchFunctionMode`` for the steps that are plain tensor
operations (CLS concatenation, position-embedding addition, the unfold of the manual patch
embedding, the split into heads). Boxes carry the modules' names as they appear in the state dict
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv`` ...), which are timm's.

Regenerate the documentation's pictures::

    python -m vitlab.insight.architecture --preset vit_mnist --out docs/images/architecture.png
    python -m vitlab.insight.architecture --preset vit_tiny_patch16_224 --out docs/images/architecture-vit-ti16.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from torch.overrides import TorchFunctionMode

from vitlab.atomic import atomic_write
from vitlab.model import ViT, ViTConfig

__all__ = ["Architecture", "Step", "draw_architecture", "trace_shapes"]

STEP_ORDER = (
    "input", "patch_embed.patches", "patch_embed.proj", "patch_embed", "cls_token", "pos_embed", "pos_drop",
    "blocks.0.norm1", "blocks.0.attn.qkv", "blocks.0.attn.heads", "blocks.0.attn.softmax", "blocks.0.attn.proj",
    "blocks.0.attn", "blocks.0.norm2", "blocks.0.mlp.fc1", "blocks.0.mlp.act", "blocks.0.mlp.fc2", "blocks.0",
    "blocks.last", "norm", "pool", "head",
)
"""Every step :func:`trace_shapes` can report, in the order of the forward pass.

``patch_embed.patches``: the flattened patches (manual patch embedding only); ``patch_embed.proj``:
the convolution's output grid (conv only); ``blocks.0.attn.heads``: each of q, k, v after the split
into heads; ``blocks.0.attn.softmax``: the attention weights; ``blocks.last``: the last block's
output; ``pool``: the pooled feature vector that enters the head. The other names are modules.
"""


@dataclass(frozen=True)
class Step:
    """One intermediate tensor of the forward pass: a name from :data:`STEP_ORDER` and its shape per image."""

    name: str
    shape: tuple[int, ...]


@dataclass
class Architecture:
    """What :func:`draw_architecture` made: the figure, the measured steps, and the file if one was written."""

    figure: Figure
    steps: list[Step]
    path: Path | None = None

    def shape(self, name: str) -> tuple[int, ...]:
        return next(s.shape for s in self.steps if s.name == name)


def _model_of(cfg_or_model: ViT | ViTConfig | str) -> tuple[ViT, str]:
    """A model to trace, and a name for the title. Configs and preset names are built on the meta device."""
    if isinstance(cfg_or_model, ViT):
        return cfg_or_model, ""
    name = ""
    if isinstance(cfg_or_model, str):
        from vitlab.presets import model_config

        name, cfg_or_model = cfg_or_model, model_config(cfg_or_model)
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        return ViT(replace(cfg_or_model)), name


@torch.no_grad()
def trace_shapes(cfg_or_model: ViT | ViTConfig | str, batch_size: int = 2) -> list[Step]:
    """Run the model once on a dummy batch and record the shape of every step, per image (batch removed).

    Block 0 runs the explicit attention path (``forward_attention``) so that the attention weights
    exist; every block has the same shapes. Returns the steps in the order of :data:`STEP_ORDER`.
    """
    model, _ = _model_of(cfg_or_model)
    cfg = model.cfg
    like = model.patch_embed.proj.weight
    x = torch.zeros(batch_size, cfg.in_chans, *cfg.img_size, device=like.device, dtype=like.dtype)
    found: dict[str, tuple[int, ...]] = {"input": tuple(x.shape[1:])}
    phase = {"now": ""}

    def put(name: str, tensor: torch.Tensor) -> None:
        found.setdefault(name, tuple(tensor.shape[1:]))

    def output_hook(name: str):
        def hook(module, inputs, output):
            if isinstance(output, tuple):  # blocks / attention asked for their weights: (out, weights)
                if output[1] is not None and name == "blocks.0.attn":
                    put("blocks.0.attn.softmax", output[1])
                output = output[0]
            put(name, output)
        return hook

    def set_phase(value: str):
        return lambda module, inputs: phase.__setitem__("now", value)

    class Recorder(TorchFunctionMode):
        """Shapes of the steps that are tensor operations rather than modules."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if phase["now"] == "patch_embed" and func is F.linear:
                put("patch_embed.patches", args[0])
            elif phase["now"] == "embed" and func is torch.cat:
                put("cls_token", out)
            elif phase["now"] == "embed" and name in ("add", "__add__"):
                put("pos_embed", out)
            elif phase["now"] == "attn" and name == "unbind":
                put("blocks.0.attn.heads", out[0])
            return out

    last = len(model.blocks) - 1
    watched = {"patch_embed.proj": model.patch_embed.proj, "patch_embed": model.patch_embed, "pos_drop": model.pos_drop,
               "norm": model.norm, "head": model.head, "blocks.last": model.blocks[last]}
    block = model.blocks[0]
    watched.update({f"blocks.0.{n}": m for n, m in block.named_modules() if n in (
        "norm1", "attn.qkv", "attn.proj", "attn", "norm2", "mlp.fc1", "mlp.act", "mlp.fc2")})
    watched["blocks.0"] = block
    handles = [module.register_forward_hook(output_hook(name)) for name, module in watched.items()]
    handles += [
        model.patch_embed.register_forward_pre_hook(set_phase("patch_embed")),
        model.patch_embed.register_forward_hook(lambda *a: phase.__setitem__("now", "embed")),
        model.pos_drop.register_forward_pre_hook(set_phase("")),
        block.attn.register_forward_pre_hook(set_phase("attn")),
        block.attn.register_forward_hook(lambda *a: phase.__setitem__("now", "")),
        model.head_drop.register_forward_pre_hook(lambda module, inputs: put("pool", inputs[0])),
    ]
    was_training = model.training
    model.eval()
    try:
        with Recorder():
            model.forward_attention(x, layers=[0])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [Step(name, found[name]) for name in STEP_ORDER if name in found]


# ----------------------------------------------------------------------------- drawing

COLORS = {"input": "#eeeeee", "embed": "#d6e6f5", "norm": "#fff0c2", "attn": "#fde0c5", "mlp": "#d7efd0",
          "head": "#e6dcf3", "op": "#ffffff", "absent": "#f6f6f6", "blocks": "#f3f3f3"}
SHAPE_COLOR = "#1d4f91"
MONO = "DejaVu Sans Mono"


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _pair_text(pair: tuple[int, int]) -> str:
    return f"{pair[0]}×{pair[1]}"


@dataclass
class _Node:
    name: str  # bold, monospace: the state-dict name (or an operation)
    text: str = ""  # what it does
    kind: str = "op"  # colour key; "add" draws a residual sum
    shape_after: str = ""  # label on the arrow below
    height: float = 4.4
    note: str = ""  # small text left of a residual sum


def _draw_column(ax, nodes: list[_Node], cx: float, width: float, top: float, bottom: float) -> list[tuple[float, float]]:
    """Stack ``nodes`` from ``top`` to ``bottom`` joined by arrows; returns each node's (top, bottom)."""
    fixed = sum(n.height for n in nodes)
    gap = (top - bottom - fixed) / max(1, len(nodes) - 1)
    spans, y = [], top
    for i, node in enumerate(nodes):
        y0, y1 = y, y - node.height
        spans.append((y0, y1))
        mid = (y0 + y1) / 2
        if node.kind == "add":
            ax.plot([cx], [mid], marker="o", ms=15, mfc="white", mec="#444444", mew=1.2, zorder=3)
            ax.text(cx, mid, "+", ha="center", va="center", fontsize=12, zorder=4)
            if node.note:
                ax.text(cx - 2.2, mid, node.note, ha="right", va="center", fontsize=7.5, family=MONO, color="#555555")
        else:
            absent = node.kind == "absent"
            box = FancyBboxPatch((cx - width / 2, y1), width, node.height, boxstyle="round,pad=0,rounding_size=0.8",
                                 fc=COLORS.get(node.kind, "white"), ec="#9a9a9a" if absent else "#555555",
                                 lw=0.9, ls="--" if absent or node.kind == "op" else "-", zorder=2)
            ax.add_patch(box)
            color = "#8a8a8a" if absent else "black"
            if node.text:
                ax.text(cx, mid + node.height * 0.18, node.name, ha="center", va="center", fontsize=9.2, family=MONO,
                        weight="bold", color=color, zorder=3)
                ax.text(cx, mid - node.height * 0.22, node.text, ha="center", va="center", fontsize=7.8, color=color,
                        zorder=3)
            else:
                ax.text(cx, mid, node.name, ha="center", va="center", fontsize=9.2, family=MONO, weight="bold",
                        color=color, zorder=3)
        if i + 1 < len(nodes):
            a0, a1 = y1, y1 - gap
            ax.annotate("", xy=(cx, a1), xytext=(cx, a0),
                        arrowprops=dict(arrowstyle="-|>", color="#444444", lw=1.0, shrinkA=0, shrinkB=0), zorder=1)
            if node.shape_after:
                ax.text(cx + 1.2, (a0 + a1) / 2, node.shape_after, ha="left", va="center", fontsize=8, color=SHAPE_COLOR, family=MONO)
        y = y1 - gap
    return spans


def draw_architecture(cfg_or_model: ViT | ViTConfig | str, path: str | Path | None = None, title: str | None = None,
                      dpi: int = 100) -> Architecture:
    """Draw the ViT for ``cfg_or_model`` (a model, a ``ViTConfig`` or a preset name), with its measured shapes.

    Returns the figure and the steps (:func:`trace_shapes`); with ``path``, the PNG is also written
    (atomically) and its path returned in ``Architecture.path``. Shapes are per image.
    """
    model, preset = _model_of(cfg_or_model)
    cfg = model.cfg
    steps = trace_shapes(model)
    s = {step.name: step.shape for step in steps}
    d, depth, heads = cfg.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads
    hidden = model.blocks[0].mlp.fc1.out_features
    t_sym = "1+N" if model.cls_token is not None else "N"
    params = sum(p.numel() for p in model.parameters())

    fig = Figure(figsize=(13, 10.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 104)
    ax.axis("off")

    # ---------------------------------------------------------------- left: the whole model
    c, (h, w) = cfg.in_chans, cfg.img_size
    if cfg.patch_embed == "conv":
        patch = _Node("patch_embed.proj", f"Conv2d {_pair_text(cfg.patch_size)}, stride {_pair_text(cfg.patch_size)} "
                      f"→ {_fmt(s['patch_embed.proj'])}, flatten", "embed")
    elif cfg.patch_embed == "conv_stem":
        halvings = cfg.patch_size[0].bit_length() - 1
        full_res = f"{cfg.stem_full_res_convs} × conv3x3; " if cfg.stem_full_res_convs else ""
        extra = cfg.stem_stage_convs - 1  # stride-1 convs after each halving, at the halved size
        stage = "" if not extra else " + conv3x3" if extra == 1 else f" + {extra} × conv3x3"
        patch = _Node("patch_embed.stem, .proj", f"{full_res}{halvings} × (conv3x3 stride 2{stage}); BN+ReLU; 1x1 "
                      f"→ {_fmt(s['patch_embed.proj'])}", "embed")
    else:
        patch = _Node("patch_embed.proj", f"unfold {_pair_text(cfg.patch_size)} patches → {_fmt(s['patch_embed.patches'])}, "
                      "× weight (as a matrix)", "embed")
    patch.shape_after = f"(N, D) = {_fmt(s['patch_embed'])}"
    if model.cls_token is not None:
        cls = _Node("cls_token", f"prepend a learned {_fmt(tuple(model.cls_token.shape))} token", "embed",
                    f"({t_sym}, D) = {_fmt(s['cls_token'])}")
    else:
        cls = _Node("no cls_token", "class_token=False", "absent", f"(N, D) = {_fmt(s['patch_embed'])}")
    pos_size = _fmt(tuple(model.pos_embed.shape)) if model.pos_embed is not None else ""
    pos = {"learned": _Node("pos_embed", f"+ learned {pos_size}; pos_drop p={cfg.drop_rate:g}", "embed"),
           "sincos": _Node("pos_embed (buffer)", f"+ fixed 2-D sin-cos {pos_size}, not saved; pos_drop", "embed"),
           "none": _Node("no pos_embed", f"pos_embed='none'; pos_drop p={cfg.drop_rate:g}", "absent")}[cfg.pos_embed]
    pos.shape_after = f"(T, D) = {_fmt(s['pos_drop'])}"
    blocks_name = f"blocks.0 … blocks.{depth - 1}" if depth > 1 else "blocks.0"
    drop = f"drop_path p = 0 → {cfg.drop_path_rate:g} (deeper: more)" if cfg.drop_path_rate else "no drop_path"
    blocks = _Node(blocks_name, f"{depth} × Block (right); {drop}", "blocks",
                   f"(T, D) = {_fmt(s['blocks.last'])}", height=7.0)
    norm = _Node("norm", f"LayerNorm({d}), eps {cfg.norm_eps:g}", "norm", f"(T, D) = {_fmt(s['norm'])}")
    if cfg.pool == "cls":
        pool = _Node("pool='cls'", "x[:, 0]: the CLS token's output", "op")
    else:
        pool = _Node("pool='gap'", f"mean over the {cfg.num_patches} patch tokens", "op")
    pool.shape_after = f"(D,) = {_fmt(s['pool'])}"
    if isinstance(model.head, torch.nn.Linear):
        head = _Node("head", f"head_drop, Linear {d} → {model.head.out_features}", "head",
                     f"(classes,) = {_fmt(s['head'])}")
    else:
        head = _Node("head", "Identity (num_classes=0): features", "absent", f"(D,) = {_fmt(s['head'])}")
    left = [
        _Node("image", f"{c} channel{'s' if c > 1 else ''}, {h}×{w} pixels", "input", f"(C, H, W) = {_fmt(s['input'])}"),
        patch, cls, pos, blocks, norm, pool, head,
        _Node("logits" if isinstance(model.head, torch.nn.Linear) else "features", "", "input", height=3.4),
    ]
    lcx, lw = 20.5, 33.0
    spans = _draw_column(ax, left, lcx, lw, top=93.0, bottom=4.0)
    ax.text(lcx, 97.2, "the model: ViT.forward", ha="center", va="center", fontsize=10.5, weight="bold")

    # ---------------------------------------------------------------- right: one block, expanded
    qkv_heads, weights = s["blocks.0.attn.heads"], s["blocks.0.attn.softmax"]
    right = [
        _Node("blocks.i.norm1", f"LayerNorm({d})", "norm", f"(T, D) = {_fmt(s['blocks.0.norm1'])}"),
        _Node("blocks.i.attn.qkv", f"Linear {d} → {3 * d}: q, k, v fused", "attn", f"(T, 3D) = {_fmt(s['blocks.0.attn.qkv'])}"),
        _Node("split heads", "reshape + permute; unbind", "op", f"q, k, v: (h, T, D/h) = {_fmt(qkv_heads)}"),
        _Node("softmax(q kᵀ / √(D/h))", f"{heads} heads; attn_drop; attn_impl={cfg.attn_impl}", "op",
              f"weights: (h, T, T) = {_fmt(weights)}"),
        _Node("weights @ v", "concatenate the heads", "op", f"(T, D) = {_fmt(s['blocks.0.attn'])}"),
        _Node("blocks.i.attn.proj", f"Linear {d} → {d}; proj_drop", "attn", f"(T, D) = {_fmt(s['blocks.0.attn.proj'])}"),
        _Node("", kind="add", height=2.6, note="drop_path1"),
        _Node("blocks.i.norm2", f"LayerNorm({d})", "norm", f"(T, D) = {_fmt(s['blocks.0.norm2'])}"),
        _Node("blocks.i.mlp.fc1", f"Linear {d} → {hidden}", "mlp", f"(T, hidden) = {_fmt(s['blocks.0.mlp.fc1'])}"),
        _Node("blocks.i.mlp.act", "GELU; mlp.drop1", "mlp", f"(T, hidden) = {_fmt(s['blocks.0.mlp.act'])}"),
        _Node("blocks.i.mlp.fc2", f"Linear {hidden} → {d}; mlp.drop2", "mlp", f"(T, D) = {_fmt(s['blocks.0.mlp.fc2'])}"),
        _Node("", kind="add", height=2.6, note="drop_path2"),
    ]
    rcx, rw, res_x = 72.0, 25.0, 92.5
    r_top, r_bottom = 86.5, 7.5
    panel = FancyBboxPatch((48.5, 2.6), 50.0, 93.6, boxstyle="round,pad=0,rounding_size=1.5", fc="#fafafa", ec="#bbbbbb",
                           lw=0.9, zorder=0)
    ax.add_patch(panel)
    which = f"i = 0 … {depth - 1}" if depth > 1 else "i = 0"
    ax.text(73.5, 93.6, f"one Block: blocks.i, {which} (pre-norm)", ha="center", va="center",
            fontsize=10.5, weight="bold")
    ax.text(73.5, 90.8, "x = x + drop_path(attn(norm1(x)));   x = x + drop_path(mlp(norm2(x)))", ha="center",
            va="center", fontsize=8.3, family=MONO, color="#333333")
    # input arrow into norm1
    spans_r = _draw_column(ax, right, rcx, rw, top=r_top - 3.0, bottom=r_bottom + 3.0)
    ax.annotate("", xy=(rcx, spans_r[0][0]), xytext=(rcx, r_top),
                arrowprops=dict(arrowstyle="-|>", color="#444444", lw=1.0, shrinkA=0, shrinkB=0))
    ax.text(rcx - 1.2, r_top - 1.2, f"x: (T, D) = {_fmt(s['pos_drop'])}", fontsize=8, color=SHAPE_COLOR, family=MONO,
            va="center", ha="right")
    ax.annotate("", xy=(rcx, r_bottom), xytext=(rcx, spans_r[-1][1]),
                arrowprops=dict(arrowstyle="-|>", color="#444444", lw=1.0, shrinkA=0, shrinkB=0))
    ax.text(rcx + 1.2, (r_bottom + spans_r[-1][1]) / 2, f"(T, D) = {_fmt(s['blocks.0'])}", fontsize=8, color=SHAPE_COLOR,
            family=MONO, va="center")
    ax.text(rcx, r_bottom - 1.3, "to the next block, or norm", ha="center", va="center", fontsize=7.8, color="#555555")

    # residual connections: from above norm1 / norm2 around to the sums
    def residual(start_y: float, add_index: int) -> None:
        add_y = sum(spans_r[add_index]) / 2
        ax.plot([rcx, res_x, res_x, rcx + 1.6], [start_y, start_y, add_y, add_y], color="#777777", lw=1.0, zorder=1)
        ax.plot([rcx], [start_y], marker="o", ms=3.5, color="#777777", zorder=2)
        ax.annotate("", xy=(rcx + 1.3, add_y), xytext=(rcx + 3.0, add_y),
                    arrowprops=dict(arrowstyle="-|>", color="#777777", lw=1.0, shrinkA=0, shrinkB=0))
        ax.text(res_x + 0.8, (start_y + add_y) / 2, "residual", rotation=90, ha="left", va="center", fontsize=7.5,
                color="#777777")

    residual(spans_r[0][0] + 1.2, 6)
    residual((spans_r[6][1] + spans_r[7][0]) / 2, 11)

    # group the attention and MLP boxes, named as in the state dict
    for first, last_i, kind, label in ((1, 5, "attn", "blocks.i.attn: Attention"), (8, 10, "mlp", "blocks.i.mlp: MLP")):
        y_top, y_bot = spans_r[first][0] + 0.9, spans_r[last_i][1] - 0.9
        ax.add_patch(FancyBboxPatch((rcx - rw / 2 - 1.5, y_bot), rw + 3.0, y_top - y_bot,
                                    boxstyle="round,pad=0,rounding_size=1.0", fc=COLORS[kind], ec="none", alpha=0.45,
                                    zorder=1))
        ax.text(rcx - rw / 2 - 2.6, (y_top + y_bot) / 2, label, rotation=90, ha="center", va="center", fontsize=8.5,
                family=MONO, color="#8a4b00" if kind == "attn" else "#2d6a1f")

    # the blocks box on the left opens into the panel on the right
    b_top, b_bot = spans[4]
    for y_from, y_to in ((b_top, 96.2), (b_bot, 2.6)):
        ax.plot([lcx + lw / 2, 48.5], [y_from, y_to], color="#bbbbbb", lw=0.9, ls=":", zorder=0)

    name = title or (preset or "ViT")
    grid = "×".join(str(g) for g in cfg.grid_size)
    summary = (f"{name}: {c}×{h}×{w} image, {_pair_text(cfg.patch_size)} patches ({grid} = N = {cfg.num_patches}), "
               f"D = {d}, depth {depth}, {heads} heads, MLP {hidden}, T = {s['pos_drop'][0]} tokens, {params:,} parameters")
    ax.text(50, 101.3, summary, ha="center", va="center", fontsize=10.5, weight="bold")
    fig.text(0.5, 0.003, "Bold names are the modules' names in the state dict (timm's); dashed boxes hold no parameters. "
             "Shapes per image (batch dimension left out), measured by forward hooks on a dummy input.",
             ha="center", va="bottom", fontsize=7.8, color="#555555")
    out = _save_small(fig, path, dpi) if path is not None else None
    return Architecture(fig, steps, out)


def _save_small(fig: Figure, path: str | Path, dpi: int) -> Path:
    """``save_figure`` (atomic), then re-encoded with a 256-colour palette: a third of the size, same look."""
    from PIL import Image

    from vitlab.insight.plots import save_figure

    path = save_figure(fig, path, dpi=dpi)
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256)
    return atomic_write(path, lambda tmp: palette.save(tmp, format="png", optimize=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlab.insight.architecture",
                                     description="Draw the ViT of a model preset with its real tensor shapes.")
    parser.add_argument("--preset", default="vit_mnist", help="a model preset (vitlab presets), default vit_mnist")
    parser.add_argument("--out", default="architecture.png", help="PNG to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                        help="ViTConfig fields, e.g. patch_embed=manual pool=gap pos_embed=sincos img_size=[32,48]")
    args = parser.parse_args(argv)
    from vitlab.resolve import field_overrides, resolve_model

    try:
        cfg = resolve_model(args.preset, **field_overrides(args.overrides))
    except ValueError as exc:
        parser.error(str(exc))
    result = draw_architecture(cfg, args.out, title=args.title or args.preset, dpi=args.dpi)
    print(f"wrote {result.path}")
    for step in result.steps:
        print(f"  {step.name:<24} {_fmt(step.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
