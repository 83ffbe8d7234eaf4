"""One owner for configuration: data-aware defaults, every value checked before any work, resume rules,
aliases and suggestions, and the Python API on par with the CLI."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import pytest
import torch
import yaml

import vitlab
import vitlab.training.trainer as trainer_module
from conftest import write_pattern_folder
from vitlab.cli import main, parse_train_flags, train_parser
from vitlab.config import RunConfig
from vitlab.resolve import ConfigError, image_size_for, patch_size_for, resolve_config

SMALL = ["--data.num_workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """RGB 'photos' of 72x96 pixels in train/ and val/: no preset was made for them."""
    root = tmp_path_factory.mktemp("photos")
    write_pattern_folder(root, {"train": 8, "val": 4}, size=72)
    return root


def test_a_photo_folder_alone_gets_a_model_made_for_it(photo_folder, pattern_folder):
    args, cfg = parse_train_flags(["--data.dataset", "imagefolder", "--data.path", str(photo_folder)])
    assert args.preset == "photos"
    assert cfg.model.in_chans == 3 and cfg.model.num_classes == 3  # from the data, not the digits preset's 1 and 10
    assert cfg.model.img_size == (64, 64) and cfg.model.patch_size == (8, 8)  # 72-px photos -> 64 px, 8x8 patches
    assert cfg.data.augment == "crop_flip"  # never digit affine on photos
    _, small = parse_train_flags(["--data.dataset", "imagefolder", "--data.path", str(pattern_folder)])
    assert small.model.img_size == (16, 16) and small.model.patch_size == (2, 2)  # 16-px images keep their size
    # what the user sets wins, and the patch follows an image size given without one
    _, given = parse_train_flags(["--data.dataset", "imagefolder", "--data.path", str(photo_folder), "--model.img_size", "32",
                                  "--data.augment", "flip", "--model.in_chans", "1"])
    assert given.model.img_size == (32, 32) and given.model.patch_size == (4, 4)
    assert given.data.augment == "flip" and given.model.in_chans == 1
    # a preset made for this very data keeps its input size; the head still follows the data
    _, mnist = parse_train_flags(["--preset", "mnist_5min"])
    assert mnist.model.patch_size == (4, 4) and mnist.model.in_chans == 1 and mnist.model.num_classes == 10


def test_a_preset_for_other_data_takes_the_datas_shape(tmp_path):
    cfg = resolve_config("mnist", overrides={"data.dataset": "cifar10"})
    assert cfg.model.in_chans == 3 and cfg.model.img_size == (32, 32) and cfg.model.patch_size == (4, 4)
    assert cfg.data.augment == "crop_flip" and cfg.model.embed_dim == 64  # the preset's architecture stays
    assert resolve_config(overrides={"data.dataset": "cifar100"}).model.num_classes == 100  # the cifar100 preset
    fashion = resolve_config("mnist", overrides={"data.dataset": "fashion_mnist"})
    assert fashion.model.patch_size == (7, 7) and fashion.data.augment == "flip"  # same image size: the preset's patch
    assert image_size_for((150, 150)) == 64 and image_size_for((40, 50)) == 32 and image_size_for((30, 30)) == 28
    assert patch_size_for(64) == 8 and patch_size_for(28) == 4 and patch_size_for((32, 48)) == 4
    assert patch_size_for(28, power_of_two=True) == 4 and patch_size_for(96, power_of_two=True) == 16


def test_a_photo_folder_alone_trains(photo_folder, tmp_path):
    run = tmp_path / "photos"
    argv = ["train", "--data.dataset", "imagefolder", "--data.path", str(photo_folder), "--train.epochs", "1",
            "--model.depth", "1", "--run_dir", str(run), *SMALL]
    assert main(argv) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["in_chans"] == 3 and saved["model"]["num_classes"] == 3 and saved["data"]["augment"] == "crop_flip"
    assert saved == resolve_config("photos", overrides={"data.dataset": "imagefolder", "data.path": str(photo_folder),
                                                        "train.epochs": 1, "model.depth": 1,
                                                        "data.num_workers": 0}).to_dict()  # config.yaml is what was resolved


@pytest.mark.parametrize("flags, named", [
    (["--train.epochs", "0"], "--train.epochs"),
    (["--train.batch_size", "0"], "--train.batch_size"),
    (["--data.val_subset", "0"], "--data.val_subset"),
    (["--train.lr", "-1"], "--train.lr"),
    (["--data.val_fraction", "1.5"], "--data.val_fraction"),
    (["--train.ema_decay", "1"], "--train.ema_decay"),
    (["--model.patch_size", "5"], "--model.patch_size"),
    (["--model.num_heads", "5"], "--model.num_heads"),
    (["--model.num_classes", "7"], "--model.num_classes"),
    (["--train.device", "tpu:0"], "--train.device"),
])
def test_bad_values_are_refused_before_anything_is_written(pattern_folder, tmp_path, capsys, flags, named):
    run = tmp_path / "r"
    argv = ["train", "--data.dataset", "imagefolder", "--data.path", str(pattern_folder), *SMALL, "--run_dir", str(run),
            *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()


def test_cuda_on_a_machine_without_it_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_config("mnist", overrides={"train.device": "cuda"}, facts=False)


def test_a_start_that_fails_leaves_no_run_directory(pattern_folder, tmp_path, monkeypatch):
    from test_training import tiny_run

    def broken(*args, **kwargs):
        raise RuntimeError("optimizer could not be built")

    monkeypatch.setattr(trainer_module, "build_optimizer", broken)
    with pytest.raises(RuntimeError, match="could not be built"):
        vitlab.training.train(tiny_run(pattern_folder), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_resume_without_the_training_state_refuses_and_keeps_the_run(pattern_folder, tmp_path, capsys):
    from test_training import tiny_run

    run = tmp_path / "r"
    vitlab.training.train(tiny_run(pattern_folder, epochs=2), run, progress=False, stop_after_epoch=1)
    (run / "resume.pt").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "resume.pt" in err and "1 finished epochs" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing replaced


def test_a_finished_run_trains_longer_with_resume_and_more_epochs(pattern_folder, tmp_path, capsys):
    from test_training import tiny_run

    run = tmp_path / "r"
    vitlab.training.train(tiny_run(pattern_folder, epochs=2), run, progress=False)
    assert main(["train", "--resume", str(run), "--train.epochs", "4", "--quiet"]) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    # the cosine re-planned over 4 epochs from the step reached: after epoch 3 the rate is not the old end's min_lr
    assert history[1]["lr"] == pytest.approx(1e-6) and history[2]["lr"] > 100 * 1e-6
    assert main(["train", "--resume", str(run), "--train.epochs", "3", "--quiet"]) == 2
    assert "already trained 4 epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--train.lr", "0.1", "--quiet"]) == 2
    assert "only --train.epochs" in capsys.readouterr().err


def test_common_spellings_work_or_name_the_flag(pattern_folder, capsys):
    args, cfg = parse_train_flags(["--epochs", "3", "--lr", "0.01", "--batch-size", "16", "--output", "runs/x", "--seed", "4"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.train.seed, args.run_dir) == (3, 0.01, 16, 4, "runs/x")
    _, tiny = parse_train_flags(["--model", "vit_tiny", "--data.dataset", "imagefolder", "--data.path", str(pattern_folder),
                                 "--model.depth", "2"])
    assert tiny.model.embed_dim == 192 and tiny.model.num_heads == 3 and tiny.model.depth == 2  # the flag wins
    assert tiny.model.img_size == (224, 224) and tiny.model.in_chans == 3 and tiny.model.num_classes == 3
    for wrong, right in (("--epoch", "--train.epochs"), ("--learning_rat", "--train.lr"), ("--train.epoch", "--train.epochs"),
                         ("--depth", "--model.depth")):
        assert main(["train", wrong, "3"]) == 2
        err = capsys.readouterr().err
        assert f"did you mean {right}?" in err and len(err.strip().splitlines()) == 1, err


def test_help_describes_every_flag():
    text = train_parser().format_help()
    for described in ("Peak learning rate", "Token width", "Images per optimisation step", "Stochastic depth"):
        assert described in text
    parser = train_parser()
    undocumented = [a.option_strings[0] for a in parser._actions
                    if a.option_strings and a.option_strings[0].startswith(("--model.", "--data.", "--train."))
                    and not (a.help or "").strip()]
    assert not undocumented, undocumented


def test_unknown_names_list_the_closest(capsys, tmp_path):
    assert main(["predict", "vit_tinyy", str(tmp_path / "x.png")]) == 2
    assert "did you mean vit_tiny" in capsys.readouterr().err
    assert main(["train", "--preset", "mnist_5mins"]) == 2
    assert "mnist_5min" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        resolve_config(overrides={"train.epoch": 3}, facts=False)


def test_the_configuration_is_frozen_and_the_python_defaults_are_the_clis():
    _, cli_default = parse_train_flags([])
    assert RunConfig() == cli_default == resolve_config()
    with pytest.raises(FrozenInstanceError):
        cli_default.train.epochs = 3  # type: ignore[misc]


def test_the_python_api_trains_in_three_lines(pattern_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = vitlab.train(dataset="imagefolder", path=str(pattern_folder), epochs=2, depth=1, num_workers=0, progress=False)
    assert isinstance(result.model, torch.nn.Module) and len(result.history) == 2
    assert result.run_dir.parent.name == "runs" and result.classes == ["circle", "cross", "stripes"]
    image = next((pattern_folder / "val" / "cross").iterdir())
    from PIL import Image

    for item in (image, Image.open(image), torch.from_numpy(__import__("numpy").array(Image.open(image))).permute(2, 0, 1)):
        (top,) = vitlab.predict(result, [item], topk=2)
        assert len(top["classes"]) == 2 and top["classes"][0] in result.classes
    with pytest.raises(ConfigError, match="img_size.*model and finetune"):
        vitlab.train(img_size=32)


def test_every_flag_a_message_names_exists():
    """Error messages and help texts name only flags that vitlab (or the tool they quote) accepts."""
    import ast
    import re
    from pathlib import Path

    from vitlab.flags import ALIASES, TRAIN_ONLY_ALIASES, finetune_parser

    src = Path(vitlab.__file__).parent
    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9_]*(?:[.-][a-z0-9_]+)*")
    known = {*train_parser()._option_string_actions, *finetune_parser()._option_string_actions, *ALIASES,
             *TRAIN_ONLY_ALIASES, "--logdir", "--nproc_per_node", "--version"}  # the last three: tensorboard's, torchrun's, ours
    unknown = {}
    for path in src.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                known |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in flag.findall(node.value):
                    unknown.setdefault(name, set()).add(path.name)
    assert "--finetune.pretrained_file" in unknown  # the scan sees the messages
    assert not {name: where for name, where in unknown.items() if name not in known}


def test_a_fine_tuning_preset_is_the_base_that_flags_change(pattern_folder):
    from vitlab.flags import parse_finetune_flags

    _, cfg = parse_finetune_flags(["--preset", "scenes", "--data.path", str(pattern_folder), "--train.epochs", "2"])
    assert (cfg.finetune.mode, cfg.finetune.layer_decay, cfg.finetune.head_epochs) == ("staged", 0.75, 1)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.dataset) == (2, 32, "imagefolder")  # the flag wins
    assert cfg.model.num_classes == 3 and cfg.model.embed_dim == 192 and cfg.data.crop_pct == round(224 / 248, 4)
    _, default = parse_finetune_flags(["--data.path", str(pattern_folder), "--dataset", "imagefolder"])
    assert default.finetune.mode == "full" and default.train.epochs == 5  # no preset: vitlab finetune's defaults
    with pytest.raises(ConfigError, match="did you mean scenes"):
        resolve_config("scene", finetune=True, overrides={"data": {"dataset": "imagefolder", "path": str(pattern_folder)}})
