"""`vitlab push`: a run as a Hub folder that timm loads with the same logits, and that vitlab loads back."""

from __future__ import annotations

import json

import pytest
import torch

from vitlab import ViT
from vitlab.cli import main
from vitlab.hub import load_hub_folder
from vitlab.training import load_checkpoint

TINY = ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2", "--data.num_workers", "0",
        "--train.epochs", "1", "--quiet", "--model.img_size", "16", "--model.patch_size", "4"]


def trained(folder, run, *extra):
    assert main(["train", "--data.dataset", "imagefolder", "--data.path", str(folder), *TINY, "--run_dir", str(run),
                 *extra]) == 0
    return run


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_a_pushed_folder_loads_in_timm_and_vitlab_with_the_same_logits(pattern_folder, tmp_path, pool):
    timm = pytest.importorskip("timm")
    flags = ["--preset", "mnist", "--model.in_chans", "3"] + (["--model.pool", "gap", "--model.class_token", "false"]
                                                               if pool == "gap" else [])
    run = trained(pattern_folder, tmp_path / "run", *flags)
    out = tmp_path / "hub"
    assert main(["push", str(run), "--dir", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md", "run_config.yaml",
                                               "curves.png", "confusion.png"}
    config = json.loads((out / "config.json").read_text())
    ours, trained_with = load_checkpoint(run)
    assert config["label_names"] == ["circle", "cross", "stripes"]
    assert config["pretrained_cfg"]["mean"] == trained_with["preprocessing"]["mean"] != [0.485, 0.456, 0.406]
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    again, info = load_hub_folder(out)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
        assert torch.equal(again(x), ours(x))
    assert info["classes"] == ["circle", "cross", "stripes"]
    assert "validation accuracy" in (out / "README.md").read_text()
    image = next((pattern_folder / "val" / "cross").iterdir())
    assert main(["predict", str(out), str(image), "--topk", "1"]) == 0  # vitlab predicts from the folder too
    assert main(["push", str(run), "--dir", str(out)]) == 2  # never overwritten silently


def test_a_model_timm_cannot_build_is_written_for_vitlab_only(pattern_folder, tmp_path):
    run = trained(pattern_folder, tmp_path / "run", "--preset", "mnist", "--model.in_chans", "3", "--model.patch_embed",
                  "conv_stem")
    out = tmp_path / "hub"
    assert main(["push", str(run), "--dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "architecture" not in config and config["vitlab"]["model"]["patch_embed"] == "conv_stem"
    assert "timm cannot build this model" in (out / "README.md").read_text()
    model, _ = load_hub_folder(out)
    ours, _ = load_checkpoint(run)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))


def test_push_needs_a_destination(pattern_folder, tmp_path, capsys):
    assert main(["push", str(tmp_path)]) == 2
    assert "--dir DIR" in capsys.readouterr().err


def test_an_upload_that_cannot_happen_is_one_message_and_keeps_the_folder(pattern_folder, tmp_path, monkeypatch, capsys):
    """huggingface_hub's own offline mode refuses the upload: the folder written with --dir stays, one clear line."""
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = trained(pattern_folder, tmp_path / "run", "--preset", "mnist", "--model.in_chans", "3")
    out = tmp_path / "hub"
    assert main(["push", str(run), "--dir", str(out), "--repo", "someone/vit-test"]) == 2
    err = capsys.readouterr().err
    assert "could not upload to the Hub repository someone/vit-test" in err and "Traceback" not in err
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_from_pretrained_reads_a_pushed_folder_and_its_run_reproduces(pattern_folder, tmp_path):
    run = trained(pattern_folder, tmp_path / "run", "--preset", "mnist", "--model.in_chans", "3")
    out = tmp_path / "hub"
    assert main(["push", str(run), "--dir", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "![curves](curves.png)" in card and "vitlab train --config run_config.yaml" in card
    model = ViT.from_pretrained(out)
    ours, _ = load_checkpoint(run)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))
    assert model.pretrained_cfg["classes"] == ["circle", "cross", "stripes"] and not model.training
    # the card's command trains the same recipe again (a fresh folder: the data path is the one the run used)
    assert main(["train", "--config", str(out / "run_config.yaml"), "--run_dir", str(tmp_path / "again"), "--quiet"]) == 0
    again = (tmp_path / "again" / "config.yaml").read_text()
    assert again == (run / "config.yaml").read_text()


def hub_cache_with(folder, cache, repo: str):
    """``folder`` as huggingface_hub's cache holds a downloaded snapshot of ``repo`` (refs/main -> snapshots/<commit>)."""
    import shutil

    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_a_hub_repo_loads_by_name_from_the_hub_cache_offline(pattern_folder, tmp_path, monkeypatch, capsys):
    """``ViT.from_pretrained("user/name")`` and ``vitlab predict hf-hub:user/name`` go through huggingface_hub's
    snapshot_download; offline, it answers from its cache, which here holds the pushed folder."""
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    run = trained(pattern_folder, tmp_path / "run", "--preset", "mnist", "--model.in_chans", "3")
    assert main(["push", str(run), "--dir", str(tmp_path / "hub")]) == 0
    cache = tmp_path / "hf-cache"
    hub_cache_with(tmp_path / "hub", cache, "someone/vit-test")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = ViT.from_pretrained("someone/vit-test")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), load_checkpoint(run)[0](x))
    image = next((pattern_folder / "val" / "cross").iterdir())
    capsys.readouterr()
    assert main(["predict", "hf-hub:someone/vit-test", str(image), "--topk", "1"]) == 0
    assert str(image) in capsys.readouterr().out
    assert main(["predict", "hf-hub:someone/not-there", str(image)]) == 2
    err = capsys.readouterr().err
    assert "could not download the Hub repo someone/not-there" in err and "Traceback" not in err


def test_the_card_of_a_fine_tuned_model_names_the_weights_and_their_licence():
    from vitlab.hub import model_card

    info = {"run_config": {"data": {"dataset": "imagefolder"}, "train": {"epochs": 3},
                           "finetune": {"pretrained": "vit_tiny", "mode": "staged"}},
            "classes": ["a", "b"], "metrics": {"val_acc": 0.9}, "epoch": 3, "preprocessing": {}}
    card = model_card("runs/scenes", info, None, ["run_config.yaml"])
    assert "license: apache-2.0" in card.split("---")[1]  # in the card's metadata, where the Hub reads it
    assert "Fine-tuned from `vit_tiny` (How to train your ViT?" in card and "licence **apache-2.0**" in card
    assert "vitlab finetune --config run_config.yaml" in card
    scratch = model_card("runs/x", {**info, "run_config": {**info["run_config"], "finetune": None}}, None, [])
    assert "license:" not in scratch and "from scratch" in scratch
