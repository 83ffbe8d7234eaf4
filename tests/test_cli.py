"""The ``vitlab`` command line, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vitlab.cli import budget_overrides_epochs, main, parse_train_flags, train_parser
from vitlab.training import load_checkpoint

TINY = ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2", "--quiet"]


def folder_args(folder: Path) -> list[str]:
    return ["--preset", "mnist", "--data.dataset", "imagefolder", "--data.path", str(folder), "--model.img_size", "16",
            "--model.patch_size", "4", "--model.in_chans", "3", "--data.num_workers", "0"]


def test_info_prints_parameters_and_flops(capsys):
    assert main(["info", "vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "5,717,416" in out and "GFLOPs" in out and "blocks" in out
    assert main(["info", "seed"]) == 0
    assert "patch 7" not in capsys.readouterr().err


def test_unknown_command_and_preset(capsys):
    assert main(["fly"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["info", "vit_huge_patch99"]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_preset_then_yaml_then_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 7, "lr": 0.01}, "model": {"depth": 3}}))
    args = train_parser("seed").parse_args(["--config", str(config), "--train.lr", "0.02"])
    assert args.model.embed_dim == 16 and args.model.patch_size == [7, 7]  # from the preset
    assert args.train.epochs == 7 and args.model.depth == 3  # from the YAML file
    assert args.train.lr == 0.02  # the flag wins
    assert args.train.optimizer == "adam"


def test_epochs_under_a_time_budget_get_a_note():
    def note(argv):
        return budget_overrides_epochs(argv, parse_train_flags(argv)[1])

    assert note(["--preset", "cifar10_60min"]) is None  # the preset's own budget, no --train.epochs: nothing to say
    assert note(["--preset", "cifar10", "--train.epochs", "3"]) is None  # no budget: the epochs are what runs
    message = note(["--preset", "cifar10_60min", "--train.epochs", "30"])
    assert "3500 s (from the preset or config file)" in message and "--train.time_budget_s null" in message
    assert "--train.epochs 30 " in message
    assert "from --train.time_budget_s" in note(["--train.epochs=4", "--train.time_budget_s", "60"])
    assert note(["--preset", "cifar10_60min", "--train.epochs", "30", "--train.time_budget_s", "null"]) is None


def test_resume_refuses_new_settings(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--train.epochs", "5"]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_bad_option_values_are_reported(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--train.optimizer", "lion"])
    assert "lion" in capsys.readouterr().err


def test_patch_that_does_not_divide_the_image_is_a_clear_error(pattern_folder, tmp_path, capsys):
    argv = ["train", *folder_args(pattern_folder), *TINY, "--model.patch_size", "5", "--run_dir", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "does not divide" in capsys.readouterr().err


def test_train_eval_predict(pattern_folder, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *folder_args(pattern_folder), *TINY, "--train.epochs", "4", "--train.batch_size", "8", "--data.augment", "flip",
            "--train.lr", "0.001", "--run_dir", str(run)]
    assert main(argv) == 0
    assert "val acc" in capsys.readouterr().out
    assert main(argv) == 2  # the same run directory again: refused
    assert "already exists" in capsys.readouterr().err

    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "stripes" in out and "confusion matrix" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 30 and metrics["accuracy"] > 0.6
    header = (tmp_path / "eval" / "confusion.csv").read_text().splitlines()[0]
    assert header.split(",")[1:] == ["circle", "cross", "stripes"]
    assert main(["eval", str(run), "--tta", "flip"]) == 0  # trained with flips: mirror-image averaging allowed
    assert "(30 images, test-time augmentation: flip)" in capsys.readouterr().out

    images = sorted((pattern_folder / "val" / "cross").glob("*.png"))[:2]
    assert main(["predict", str(run / "best.safetensors"), *map(str, images), "--topk", "2", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 2 and len(predictions[0]["classes"]) == 2
    assert predictions[0]["classes"][0] == "cross" and predictions[0]["probs"][0] > 1 / 3  # above uniform
    assert predictions[0]["probs"] == sorted(predictions[0]["probs"], reverse=True)

    assert main(["predict", str(run), str(tmp_path / "nope.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_short_mnist_run_beats_chance(shared_data, tmp_path, capsys):
    run = tmp_path / "mnist"
    argv = ["train", "--data.data_dir", str(shared_data), "--data.train_subset", "10000", "--data.val_subset",
            "1000", "--data.augment", "none", "--train.epochs", "3", "--train.batch_size", "64", "--quiet",
            "--run_dir", str(run)]
    assert main(argv) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_acc"] > 0.6, history  # chance is 0.1


def test_kill_and_resume_matches_an_uninterrupted_run(pattern_folder, tmp_path):
    """A real SIGKILL in the middle of training, then `--resume`: same final weights as no kill."""
    common = ["train", *folder_args(pattern_folder), *TINY, "--train.epochs", "4", "--train.batch_size", "8",
              "--model.drop_path_rate", "0.1"]
    assert main([*common, "--run_dir", str(tmp_path / "full")]) == 0

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vitlab.cli", *common, "--run_dir", str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "resume.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["train", "--resume", str(tmp_path / "killed"), "--quiet"]) == 0

    full, _ = load_checkpoint(tmp_path / "full" / "last.safetensors")
    resumed, _ = load_checkpoint(tmp_path / "killed" / "last.safetensors")
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]


def test_commands_that_compute_take_threads(capsys):
    threads = torch.get_num_threads()
    try:
        assert main(["predict", "nope", "x.png", "--threads", "0"]) == 2
        assert "--threads must be at least 1" in capsys.readouterr().err
        for command in ("eval", "predict", "attention", "inspect", "report", "export"):
            with pytest.raises(SystemExit):
                main([command, "--help"])
            assert "--threads" in capsys.readouterr().out, command
        main(["predict", "missing-checkpoint", "x.png", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_a_long_command_shows_its_steps():
    import io

    from vitlab.progress import steps

    out = io.StringIO()
    with steps("vitlab report", 3, enabled=True, file=out) as step:
        step("loading")
        step("evaluating")
        step("writing")
    shown = out.getvalue()
    assert "vitlab report" in shown and "evaluating" in shown and "3/3" in shown
    quiet = io.StringIO()
    with steps("vitlab report", 3, file=quiet) as step:  # not a terminal: nothing
        step("loading")
    assert quiet.getvalue() == ""
