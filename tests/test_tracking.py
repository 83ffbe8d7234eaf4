"""``--train.tracker``: the run read back from MLflow's own SQLite store and from W&B's offline run files."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from vitlab.cli import main
from vitlab.config import RunConfig
from vitlab.training.tracking import STEP_EVERY, flat_params

TINY = ["--preset", "mnist", "--data.dataset", "imagefolder", "--model.embed_dim", "32", "--model.depth", "2",
        "--model.num_heads", "2", "--model.img_size", "16", "--model.patch_size", "4", "--model.in_chans", "3",
        "--data.num_workers", "0", "--train.batch_size", "4", "--quiet"]  # 120 images: 30 steps per epoch


def train(folder, run_dir, *extra) -> int:
    return main(["train", "--data.path", str(folder), "--run_dir", str(run_dir), *TINY, *extra])


def test_mlflow_run_in_a_sqlite_store_holds_config_metrics_and_artifacts(pattern_folder, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact store is ./mlruns beside the database
    run_dir = tmp_path / "run"
    assert train(pattern_folder, run_dir, "--train.epochs", "1", "--train.tracker", "mlflow",
                 "--train.tracker_project", "tests") == 0
    client = MlflowClient(tracking_uri=uri)  # a fresh client reads the database file
    experiment = client.get_experiment_by_name("tests")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert found.data.params["model.embed_dim"] == "32" and found.data.params["train.tracker"] == "mlflow"
    assert found.data.params == {k: str(v) for k, v in flat_params(config).items()}
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert found.data.metrics["val_acc"] == pytest.approx(history[-1]["val_acc"])
    steps = client.get_metric_history(found.info.run_id, "step_loss")
    assert [m.step for m in steps] == list(range(0, 30 * len(history), STEP_EVERY))
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert "best.safetensors" in artifacts and "figures" in artifacts
    figures = {a.path for a in client.list_artifacts(found.info.run_id, "figures")}
    assert {"figures/curves.png", "figures/confusion.png", "figures/mistakes.png"} <= figures
    assert mlflow.get_tracking_uri() == uri


def test_a_resumed_run_continues_the_same_mlflow_run(pattern_folder, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert train(pattern_folder, run_dir, "--train.epochs", "1", "--train.tracker", "mlflow") == 0
    assert main(["train", "--resume", str(run_dir), "--train.epochs", "2", "--quiet"]) == 0
    client = MlflowClient(tracking_uri=uri)
    [found] = client.search_runs([client.get_experiment_by_name("vitlab").experiment_id])
    assert [m.step for m in client.get_metric_history(found.info.run_id, "val_acc")] == [1, 2]
    assert found.info.status == "FINISHED"


def wandb_records(path):
    """The protobuf records of a W&B run file: a 7-byte header (``:W&B``, magic, version), then LevelDB's log
    format (32 KiB blocks of records with a 7-byte header: CRC, little-endian length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_config_and_metrics(pattern_folder, tmp_path, monkeypatch):
    pytest.importorskip("wandb")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    run_dir = tmp_path / "run"
    assert train(pattern_folder, run_dir, "--train.epochs", "1", "--train.tracker", "wandb") == 0
    [log] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, artifacts = [], {}, []
    for record in wandb_records(log):
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif record.WhichOneof("record_type") == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif record.WhichOneof("record_type") == "artifact":
            artifacts.append((record.artifact.type, [entry.path for entry in record.artifact.manifest.contents]))
    assert config["model"]["embed_dim"] == 32
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(h.get("val_acc") == pytest.approx(metrics["val_acc"]) for h in history)
    assert [h["_step"] for h in history if "step/loss" in h] == [0, 20]
    assert artifacts == [("model", ["best.safetensors"])]
    assert {"curves", "confusion", "mistakes"} <= {key.split("/")[0] for key in history[-1]}  # the figures, as images
    assert json.loads((run_dir / "tracker.json").read_text())["tracker"] == "wandb"


def test_a_missing_tracker_package_is_one_message_before_training(pattern_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    assert train(pattern_folder, tmp_path / "run", "--train.epochs", "1", "--train.tracker", "mlflow") == 2
    err = capsys.readouterr().err
    assert 'pip install "vitlab[mlflow]"' in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_an_old_config_with_tensorboard_true_means_the_tensorboard_tracker():
    cfg = RunConfig().to_dict()
    cfg["train"].pop("tracker")
    cfg["train"]["tensorboard"] = True
    assert RunConfig.from_dict(cfg).train.tracker == "tensorboard"
