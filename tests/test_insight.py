"""Attention maps, rollout, the paper's figures, run pictures and the HTML report (opened in Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, shared_dir
from vitlab.cli import main
from vitlab.insight import attention_maps, attention_rollout, mean_attention_distance, patch_filter_components
from vitlab.insight.attention import fuse_heads, token_map
from vitlab.insight.figures import patch_distances, position_similarity
from vitlab.model import ViT, ViTConfig

TINY_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
SMALL = dict(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=3, num_heads=2)


def random_attention(b: int, h: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, t, t, generator=g, dtype=torch.float64).softmax(-1)


# ----------------------------------------------------------------------------- attention API


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_attention_maps_whatever_the_backend(impl):
    torch.manual_seed(0)
    model = ViT(ViTConfig(**SMALL, attn_impl=impl)).train()  # left in training mode on purpose
    x = torch.randn(2, 3, 16, 16)
    logits, maps = attention_maps(model, x)
    assert model.training  # restored
    assert sorted(maps) == [0, 1, 2]
    for attention in maps.values():
        assert attention is not None and attention.shape == (2, 2, 17, 17)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2, 17))
    torch.testing.assert_close(logits, model.eval()(x), atol=1e-5, rtol=1e-5)
    _, only_last = attention_maps(model, x, layers=[-1])
    assert list(only_last) == [2]
    torch.testing.assert_close(only_last[2], maps[2])


def test_rollout_by_hand():
    a1, a2 = random_attention(1, 3, 5, 1), random_attention(1, 3, 5, 2)
    eye = torch.eye(5, dtype=torch.float64)

    def step(a, fuse):
        m = fuse(a[0]) + eye
        return m / m.sum(-1, keepdim=True)

    expected = step(a2, lambda a: a.mean(0)) @ step(a1, lambda a: a.mean(0))
    torch.testing.assert_close(attention_rollout({0: a1, 1: a2})[0], expected)
    expected_max = step(a2, lambda a: a.amax(0)) @ step(a1, lambda a: a.amax(0))
    torch.testing.assert_close(attention_rollout([a1, a2], head_fusion="max")[0], expected_max)
    rows = attention_rollout([a1, a2], head_fusion="min")
    torch.testing.assert_close(rows.sum(-1), torch.ones(1, 5, dtype=torch.float64))  # still a flow: rows sum to 1


def test_rollout_discard_ratio_drops_the_weakest_but_keeps_cls():
    a = random_attention(2, 2, 6, 3)
    a[:, :, 0, 0] = 1e-9  # the weakest weight of all, but CLS -> CLS is protected
    fused = fuse_heads(a)
    k = int(36 * 0.5)
    kept = attention_rollout([a], discard_ratio=0.5)
    for b in range(2):
        flat = fused[b].flatten().clone()
        flat[0] = float("inf")
        dropped = flat.topk(k, largest=False).indices
        manual = fused[b].flatten().clone()
        manual[dropped] = 0
        manual = manual.view(6, 6) + torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close(kept[b], manual / manual.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout([a], discard_ratio=1.0)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([a], head_fusion="median")


def test_token_map_cls_and_average_pooling():
    m = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    torch.testing.assert_close(token_map(m, (2, 2), 1), m[:, 0, 1:].view(2, 2, 2))
    gap = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)
    torch.testing.assert_close(token_map(gap, (2, 2), 0), gap.mean(1).view(2, 2, 2))
    model = ViT(ViTConfig(**{**SMALL, "class_token": False, "pool": "gap"}))
    logits, maps = attention_maps(model, torch.randn(1, 3, 16, 16))
    assert maps[0].shape == (1, 2, 16, 16) and logits.shape == (1, 3)


# ----------------------------------------------------------------------------- the paper's figures


def test_mean_attention_distance_known_cases():
    grid, patch = (3, 3), (4, 4)
    distances = patch_distances(grid, patch)
    assert distances[0, 8].item() == pytest.approx(np.hypot(8, 8))
    eye = torch.eye(10).expand(2, 4, 10, 10)  # every patch attends to itself only
    assert mean_attention_distance({0: eye}, grid, patch).abs().max() < 1e-6
    uniform = torch.full((1, 2, 10, 10), 0.1)  # CLS gets 0.1, the 9 patches the rest: renormalised to 1/9
    expected = distances.mean().item()
    torch.testing.assert_close(mean_attention_distance({3: uniform, 5: uniform}, grid, patch),
                               torch.full((2, 2), expected))


def test_filter_components_are_orthonormal():
    model = ViT(ViTConfig(**SMALL))
    components, explained = patch_filter_components(model, count=6)
    assert components.shape == (6, 3, 4, 4)
    flat = components.flatten(1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(6), atol=1e-5, rtol=0)
    assert torch.all(explained[:-1] >= explained[1:]) and 0 < explained.sum() <= 1 + 1e-6


def test_conv_stem_has_no_filter_figure(tmp_path):
    from vitlab.insight.explain import write_model_figures

    model = ViT(ViTConfig(**{**SMALL, "patch_embed": "conv_stem"}))
    with pytest.raises(ValueError, match="conv_stem"):
        patch_filter_components(model)
    written = write_model_figures(model, {}, tmp_path)
    assert "filters" not in written and "position_similarity" in written
    assert not (tmp_path / "patch_embedding_pca.png").exists()


def locality(similarity: torch.Tensor) -> tuple[float, float]:
    """Mean similarity of 4-neighbours and of patches at least half the grid apart."""
    gh, gw = similarity.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    dist = torch.cdist(pos, pos)
    flat = similarity.reshape(gh * gw, gh * gw)
    return flat[dist == 1].mean().item(), flat[dist >= max(gh, gw) / 2].mean().item()


def test_sincos_position_embedding_is_local():
    model = ViT(ViTConfig(**{**SMALL, "img_size": 32, "pos_embed": "sincos"}))
    near, far = locality(position_similarity(model))
    assert near > far + 0.1
    with pytest.raises(ValueError, match="no position embedding"):
        position_similarity(ViT(ViTConfig(**{**SMALL, "pos_embed": "none"})))


@pytest.fixture(scope="module")
def tiny_weights() -> Path:
    root = shared_dir("weights")
    if root is None or not (root / f"{TINY_NAME}.safetensors").exists():
        pytest.skip("shared pretrained ViT-Ti/16 not available; set VITLAB_WEIGHTS_DIR")
    return root / f"{TINY_NAME}.safetensors"


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    root = shared_dir("data")
    if root is None or not (root / "imagenet-samples").is_dir():
        pytest.skip("shared imagenet-samples not available; set VITLAB_DATA_DIR")
    return sorted(p for p in (root / "imagenet-samples").iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def test_pretrained_position_embeddings_show_2d_locality(tiny_weights):
    from vitlab.pretrained import load_pretrained

    model, _ = load_pretrained(TINY_NAME, file=tiny_weights)
    similarity = position_similarity(model)
    assert similarity.shape == (14, 14, 14, 14)
    near, far = locality(similarity)
    assert near > 0.5 and far < 0.2 and near > far + 0.4, (near, far)
    # each patch is most like itself, then like its own row/column neighbours
    for y, x in [(3, 4), (7, 7), (10, 2)]:
        row = similarity[y, x].clone()
        row[y, x] = -2
        best = divmod(int(row.argmax()), 14)
        assert abs(best[0] - y) + abs(best[1] - x) <= 2, (y, x, best)


def test_cli_attention_and_inspect_on_pretrained(tiny_weights, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITLAB_WEIGHTS_DIR", str(tiny_weights.parent))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    picks = [str(p) for p in photos[:2]]
    assert main(["attention", TINY_NAME, *picks, "--out", str(tmp_path / "att"), "--discard_ratio", "0.5"]) == 0
    out = capsys.readouterr().out
    for p in photos[:2]:
        png = tmp_path / "att" / f"attention_{p.stem}.png"
        assert png.exists() and Image.open(png).size[0] > 600
    assert out.count("->") == 2
    assert main(["inspect", TINY_NAME, "--out", str(tmp_path / "fig"), "--images", *picks]) == 0
    names = {p.name for p in (tmp_path / "fig").iterdir()}
    assert {"patch_embedding_pca.png", "position_similarity.png", "attention_distance.png"} <= names


# ----------------------------------------------------------------------------- a trained run, its pictures and report

TINY_RUN = ["--model.embed_dim", "32", "--model.depth", "2", "--model.num_heads", "2", "--quiet",
            "--preset", "mnist", "--data.dataset", "imagefolder", "--model.img_size", "16", "--model.patch_size", "4",
            "--model.in_chans", "3", "--data.num_workers", "0", "--train.epochs", "3", "--train.batch_size", "32",
            "--train.tracker", "tensorboard", "--train.eval_every", "2"]  # validated after epochs 2 and 3 (the last)


@pytest.fixture(scope="module")
def trained_run(pattern_folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("insight") / "run"
    assert main(["train", "--run_dir", str(run_dir), "--data.path", str(pattern_folder), *TINY_RUN]) == 0
    return run_dir


def png_is_not_blank(path: Path) -> bool:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return pixels.std() > 5


def test_every_run_leaves_its_pictures(trained_run):
    figures = trained_run / "figures"
    for name in ("curves", "confusion", "mistakes"):
        assert png_is_not_blank(figures / f"{name}.png"), name
    assert (figures / "mistakes.json").exists()


def test_tensorboard_logs_the_same_numbers(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    history = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("val_acc")
    assert [e.step for e in logged] == [2, 3] and "val_acc" not in history[0]  # --train.eval_every 2
    assert [e.value for e in logged] == pytest.approx([h["val_acc"] for h in history[1:]])
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2, 3]


def test_cli_attention_inspect_report_on_a_run(trained_run, pattern_folder, tmp_path, capsys):
    image = next((pattern_folder / "val" / "circle").iterdir())
    assert main(["attention", str(trained_run), str(image), "--out", str(tmp_path / "att")]) == 0
    assert "circle" in capsys.readouterr().out  # the class names come from the checkpoint
    assert png_is_not_blank(tmp_path / "att" / f"attention_{image.stem}.png")
    assert main(["inspect", str(trained_run), "--out", str(tmp_path / "fig"), "--num_images", "8"]) == 0
    assert len(list((tmp_path / "fig").glob("*.png"))) == 3
    assert main(["report", str(trained_run), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "http://" not in page and "https://" not in page
    assert "final validation accuracy" in page


def test_report_redraws_missing_figures_and_names_bad_input(trained_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    shutil.rmtree(copy / "figures")
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").exists() and (copy / "figures" / "confusion.png").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    """Open the report as a user would; the screenshot stays in build/test-artifacts for a developer to look at."""
    browser = chromium()
    if browser is None:
        if os.environ.get("VITLAB_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but VITLAB_REQUIRE_BROWSER is set (CI installs it with apt-get)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    report = tmp_path / "report.html"
    assert main(["report", str(trained_run), "--out", str(report)]) == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--window-size=1280,2400",
             "--enable-logging=stderr", "--v=0"]
    url = report.resolve().as_uri()
    dom = subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'profile1'}", "--virtual-time-budget=5000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = report.read_text().count("<img ")
    assert f'data-images-rendered="{images}/{images}"' in dom.stdout  # every <img> decoded, none broken
    assert "Uncaught" not in dom.stderr  # no script error on the page
    artifacts = Path(os.environ.get("VITLAB_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report-screenshot.png"
    result = subprocess.run([browser, *flags, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 20  # not a blank page
    top = pixels[:60].mean(axis=(0, 1))
    assert top.max() < 80  # the dark header is drawn
