"""`vitlab export`: ONNX (checked with onnxruntime), TorchScript and torch.export programs, dynamic batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import shared_dir
from vitlab.cli import main
from vitlab.export import export_model, load_exported
from vitlab.model import ViT, ViTConfig
from vitlab.training import load_checkpoint

TINY_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
RUN = ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2", "--quiet",
       "--preset", "mnist", "--data.dataset", "imagefolder", "--model.img_size", "16", "--model.patch_size", "4",
       "--model.in_chans", "3", "--data.num_workers", "0", "--train.epochs", "2", "--train.batch_size", "32"]


@pytest.fixture(scope="module")
def trained_checkpoint(pattern_folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--run_dir", str(run_dir), "--data.path", str(pattern_folder), *RUN]) == 0
    return run_dir / "best.safetensors"


def max_difference(exported, model: torch.nn.Module, batch: int, seed: int = 0) -> float:
    x = torch.randn(batch, model.cfg.in_chans, *model.cfg.img_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (exported(x) - model(x)).abs().max().item()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_of_a_trained_checkpoint_matches_pytorch(trained_checkpoint, tmp_path, capsys, exporter):
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_checkpoint), "--format", "onnx", "--out", str(out), "--exporter", exporter]) == 0
    assert "max |difference|" in capsys.readouterr().out
    model, info = load_checkpoint(trained_checkpoint)
    session = load_exported(out)
    for batch in (1, 3, 8):  # dynamic batch size
        assert max_difference(session, model, batch, seed=batch) <= 1e-4
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["classes"] == info["classes"] == ["circle", "cross", "stripes"]
    assert sidecar["input_shape"] == ["batch", 3, 16, 16] and sidecar["preprocessing"]["mean"] == info["preprocessing"]["mean"]


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_torchscript_and_exported_program(trained_checkpoint, tmp_path, fmt):
    model, info = load_checkpoint(trained_checkpoint)
    out = export_model(model, tmp_path / f"m.{'pt' if fmt == 'torchscript' else 'pt2'}", fmt, info)
    exported = load_exported(out)
    for batch in (1, 5):
        assert max_difference(exported, model, batch) <= 1e-5


def test_export_never_overwrites_and_names_bad_formats(trained_checkpoint, tmp_path, capsys):
    model, _ = load_checkpoint(trained_checkpoint)
    out = tmp_path / "m.onnx"
    out.write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(model, out, "onnx")
    assert out.read_text() == "precious"
    with pytest.raises(ValueError, match="choose one of"):
        export_model(model, tmp_path / "x", "tflite")
    assert main(["export", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_onnx_of_a_sin_cos_gap_model(tmp_path):
    torch.manual_seed(0)
    model = ViT(ViTConfig(img_size=(16, 24), patch_size=8, in_chans=1, num_classes=4, embed_dim=24, depth=1, num_heads=3,
                          pos_embed="sincos", class_token=False, pool="gap", patch_embed="manual")).eval()
    with torch.no_grad():
        model.head.weight.normal_()
    out = export_model(model, tmp_path / "g.onnx", "onnx", exporter="torchscript")
    assert max_difference(load_exported(out), model, 4) <= 1e-4


def test_onnx_of_a_conv_stem_model(tmp_path):
    torch.manual_seed(0)
    model = ViT(ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=4, embed_dim=24, depth=1, num_heads=3,
                          patch_embed="conv_stem"))
    model.train()
    with torch.no_grad():
        model.head.weight.normal_()
        for _ in range(3):  # BatchNorm statistics that are not the identity
            model(torch.randn(8, 3, 16, 16) * 2 + 1)
    model.eval()
    out = export_model(model, tmp_path / "s.onnx", "onnx", exporter="torchscript")
    assert max_difference(load_exported(out), model, 3) <= 1e-4


def test_onnx_of_the_converted_pretrained_vit_tiny(tmp_path):
    root = shared_dir("weights")
    if root is None or not (root / f"{TINY_NAME}.safetensors").exists():
        pytest.skip("shared pretrained ViT-Ti/16 not available; set VITLAB_WEIGHTS_DIR")
    from vitlab.pretrained import load_pretrained

    model, pinfo = load_pretrained(TINY_NAME, file=root / f"{TINY_NAME}.safetensors")
    out = export_model(model, tmp_path / "vit_tiny.onnx", "onnx", {"classes": pinfo.classes})
    session = load_exported(out)
    assert max_difference(session, model, 2) <= 1e-4
    assert json.loads(Path(f"{out}.json").read_text())["classes"][0] == pinfo.classes[0]


def test_onnx_of_a_cnn_baseline_checkpoint(pattern_folder, tmp_path, capsys):
    """`--arch cnn` checkpoints export like ViT ones (the sidecar's arch picks the model)."""
    run_dir = tmp_path / "cnn"
    argv = ["train", "--arch", "cnn", "--run_dir", str(run_dir), "--data.path", str(pattern_folder), *RUN]
    argv[argv.index("--train.epochs") + 1] = "1"
    assert main(argv) == 0
    out = tmp_path / "cnn.onnx"
    assert main(["export", str(run_dir / "best.safetensors"), "--format", "onnx", "--out", str(out)]) == 0
    model, info = load_checkpoint(run_dir / "best.safetensors")
    assert info["arch"] == "cnn" and type(model).__name__ == "SmallCNN"
    session = load_exported(out)
    for batch in (1, 4):
        assert max_difference(session, model, batch, seed=batch) <= 1e-4
