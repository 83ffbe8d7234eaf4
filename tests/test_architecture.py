"""The architecture diagram (shapes measured, not written by hand) and the docs that point into the code."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO
from vitlab.insight.architecture import STEP_ORDER, draw_architecture, trace_shapes
from vitlab.model import ViT, ViTConfig

DOCS = [REPO / "docs" / "guide.md", REPO / "docs" / "architecture.md", REPO / "docs" / "results.md"]
NON_SQUARE = dict(img_size=(24, 40), patch_size=(8, 4), in_chans=2, num_classes=5, embed_dim=24, depth=2, num_heads=3,
                  mlp_ratio=1.5)


@pytest.mark.parametrize("variant", [
    dict(patch_embed="conv", pool="cls", pos_embed="learned"),
    dict(patch_embed="manual", pool="gap", class_token=False, pos_embed="none"),
])
def test_draw_writes_a_png(tmp_path, variant):
    cfg = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2, **variant)
    result = draw_architecture(cfg, tmp_path / "sub" / "arch.png")
    assert result.path == tmp_path / "sub" / "arch.png" and result.path.stat().st_size > 20_000
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["arch.png"]  # no temporary file left behind
    with Image.open(result.path) as image:
        assert image.width > 800 and image.height > 600
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20  # drawn, not blank
    names = [step.name for step in result.steps]
    assert ("patch_embed.patches" in names) == (variant["patch_embed"] == "manual")
    assert ("patch_embed.proj" in names) == (variant["patch_embed"] == "conv")
    assert ("cls_token" in names) == variant.get("class_token", True)
    assert ("pos_embed" in names) == (variant["pos_embed"] != "none")
    tokens = 17 if variant.get("class_token", True) else 16
    assert result.shape("pos_drop") == (tokens, 32) and result.shape("pool") == (32,) and result.shape("head") == (10,)


def real_shapes(model: ViT, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The same intermediate tensors, computed by calling the model's parts by hand (batch removed)."""
    cfg, block = model.cfg, model.blocks[0]
    b = x.shape[0]
    out = {"input": x, "patch_embed": model.patch_embed(x)}
    if cfg.patch_embed == "conv":
        out["patch_embed.proj"] = model.patch_embed.proj(x)
    elif cfg.patch_embed == "conv_stem":
        out["patch_embed.proj"] = model.patch_embed.proj(model.patch_embed.stem(x))
    else:
        (ph, pw), (gh, gw) = cfg.patch_size, cfg.grid_size
        out["patch_embed.patches"] = x.unfold(2, ph, ph).unfold(3, pw, pw).reshape(b, cfg.in_chans, gh * gw, ph * pw)
        out["patch_embed.patches"] = out["patch_embed.patches"].permute(0, 2, 1, 3).flatten(2)
    t = out["patch_embed"]
    if model.cls_token is not None:
        t = out["cls_token"] = torch.cat([model.cls_token.expand(b, -1, -1), t], dim=1)
    if model.pos_embed is not None:
        t = out["pos_embed"] = t + model.pos_embed
    t = out["pos_drop"] = model.pos_drop(t)
    n1 = out["blocks.0.norm1"] = block.norm1(t)
    qkv = out["blocks.0.attn.qkv"] = block.attn.qkv(n1)
    out["blocks.0.attn.heads"] = qkv.reshape(b, t.shape[1], 3, cfg.num_heads, -1).permute(2, 0, 3, 1, 4)[0]
    attn, weights = block.attn(n1, return_attention=True)
    out["blocks.0.attn.softmax"], out["blocks.0.attn"] = weights, attn
    out["blocks.0.attn.proj"] = block.attn.proj(torch.zeros_like(attn))
    n2 = out["blocks.0.norm2"] = block.norm2(t + attn)
    out["blocks.0.mlp.fc1"] = block.mlp.fc1(n2)
    out["blocks.0.mlp.act"] = block.mlp.act(out["blocks.0.mlp.fc1"])
    out["blocks.0.mlp.fc2"] = block.mlp.fc2(out["blocks.0.mlp.act"])
    out["blocks.0"] = block(t)
    for later in model.blocks:
        t = later(t)
    out["blocks.last"] = t
    out["norm"] = model.forward_features(x)
    out["pool"] = model.forward_head(out["norm"], pre_logits=True)
    out["head"] = model(x)
    return {name: tuple(value.shape[1:]) for name, value in out.items()}


@pytest.mark.parametrize("full_res_convs, stage_convs", [(0, 1), (1, 1), (1, 2)])
def test_conv_stem_is_traced_and_drawn(tmp_path, full_res_convs, stage_convs):
    cfg = ViTConfig(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=2,
                    patch_embed="conv_stem", stem_full_res_convs=full_res_convs, stem_stage_convs=stage_convs)
    model = ViT(cfg).eval()
    with torch.no_grad():
        expected = real_shapes(model, torch.randn(2, 3, 32, 32))
    result = draw_architecture(model, tmp_path / "stem.png")
    assert {s.name: s.shape for s in result.steps} == expected
    assert result.shape("patch_embed.proj") == (32, 8, 8) and result.shape("patch_embed") == (64, 32)
    assert result.path.stat().st_size > 20_000


@pytest.mark.parametrize("variant", [dict(), dict(patch_embed="manual", pool="gap", pos_embed="sincos")])
def test_reported_shapes_are_the_models(variant):
    cfg = ViTConfig(**NON_SQUARE, **variant)
    torch.manual_seed(0)
    model = ViT(cfg).train()
    with torch.no_grad():
        expected = real_shapes(model.eval(), torch.randn(3, cfg.in_chans, *cfg.img_size))
    model.train()
    measured = trace_shapes(model)
    assert model.training and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert [s.name for s in measured] == [n for n in STEP_ORDER if n in expected]
    assert {s.name: s.shape for s in measured} == expected
    assert trace_shapes(cfg) == measured  # the meta-device trace of the config agrees with the real model
    assert draw_architecture(model).steps == measured
    assert expected["patch_embed"] == (30, 24) and expected["blocks.0.attn.softmax"] == (3, 31, 31)  # 3x10 patches + CLS


# ----------------------------------------------------------------------------- the docs cannot rot

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
TICKED = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
FILE_SUFFIXES = {"py", "md", "png", "yaml", "json", "jsonl", "safetensors", "pt", "pt2", "pth", "npz", "onnx", "html", "txt"}


@cache
def defined_names(path: Path) -> set[str]:
    """Top-level functions, classes, assignments and ``Class.method`` / ``Class.field`` of a Python file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(f"{node.name}.{item.name}")
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(f"{node.name}.{item.target.id}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


@cache
def vit_names() -> set[str]:
    """Module and parameter names of a ViT (block 0 standing for every block)."""
    with torch.device("meta"):
        model = ViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3))
    return {n for n, _ in model.named_modules() if n} | set(model.state_dict()) | {"pos_drop", "head_drop"}


def resolves(name: str) -> bool:
    """A dotted name from the docs: an importable object, a ViT module/parameter, or a config field."""
    parts = name.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return parts[-1] != "py" or any((REPO / "src" / "vitlab").rglob(name)) or (REPO / name).exists()
    aliases = {"F": "torch.nn.functional", "nn": "torch.nn"}
    for candidate in (name, f"vitlab.{name}", ".".join([aliases.get(parts[0], parts[0]), *parts[1:]])):
        if candidate.split(".")[0] in ("vitlab", "torch") and _importable(candidate):
            return True
    import vitlab.config
    import vitlab.model

    for namespace in (vitlab.model, vitlab.config):  # Class.attribute, Class.field
        obj = getattr(namespace, parts[0], None)
        if obj is not None and _attribute_chain(obj, parts[1:]):
            return True
    sections = {f.name: f.type for f in dataclasses.fields(vitlab.config.RunConfig)}  # train.lr, model.img_size ...
    if parts[0] in sections and len(parts) == 2:
        config = {"model": vitlab.model.ViTConfig, "data": vitlab.config.DataConfig, "train": vitlab.config.TrainConfig,
                  "finetune": vitlab.config.FinetuneConfig}[parts[0]]
        if parts[1] in {f.name for f in dataclasses.fields(config)}:
            return True
    if re.sub(r"\.(N|i|\d+)\.", ".0.", name) in vit_names():
        return True
    return any(name in constant for constant in string_constants())  # a key another layout uses (convert.py)


@cache
def string_constants() -> tuple[str, ...]:
    """Every string literal in vitlab's source: the key names of the other weight layouts live there."""
    found = []
    for path in (REPO / "src" / "vitlab").rglob("*.py"):
        found += [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return tuple(found)


def _attribute_chain(obj, rest: list[str]) -> bool:
    for part in rest:
        if dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
            return True
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _importable(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return _attribute_chain(obj, parts[cut:])
    return False


def test_docs_links_and_names_exist():
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        for label, target in LINK.findall(text):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.exists():
                problems.append(f"{doc.name}: link to a missing file {target}")
                continue
            label = label.strip("`").removesuffix("()")
            if path.suffix == ".py" and label and re.fullmatch(r"[A-Za-z_][\w.]*", label) and not label.endswith(".py"):
                if label not in defined_names(path):
                    problems.append(f"{doc.name}: `{label}` is not defined in {target}")
        for ticked in TICKED.findall(LINK.sub("", text)):  # link labels were checked against their file above
            name = ticked.removesuffix("()").removeprefix("--")
            if DOTTED.fullmatch(name) and not resolves(name):
                problems.append(f"{doc.name}: `{name}` names nothing in the code")
    assert not problems, "\n".join(problems)
    assert "src/vitlab" in DOCS[0].read_text() and "images/architecture.png" in DOCS[1].read_text()


def test_guide_cites_real_readme_sections():
    readme = {line.lstrip("#").strip() for line in (REPO / "README.md").read_text().splitlines() if line.startswith("#")}
    guide = (REPO / "docs" / "guide.md").read_text()
    section = guide.split("## The README, section by section", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("|")]
    cited = rows[2:]  # after the header and the --- line
    assert cited, "the README map has no rows"
    assert not [c for c in cited if c not in readme], f"README sections cited by the guide but missing: {set(cited) - readme}"
