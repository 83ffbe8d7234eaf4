"""``vitlab demo``: the Gradio page, served on localhost and used in a real headless Chromium (Playwright)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitlab.cli import main
from vitlab.insight.demo import example_images, explain_image
from vitlab.predict import load_model

REPO = Path(__file__).resolve().parents[1]
TINY = ["--preset", "mnist", "--data.dataset", "imagefolder", "--model.embed_dim", "32", "--model.depth", "2",
        "--model.num_heads", "2", "--model.img_size", "16", "--model.patch_size", "4", "--model.in_chans", "3",
        "--data.num_workers", "0", "--train.epochs", "2", "--train.batch_size", "16", "--quiet"]
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@pytest.fixture(scope="module")
def run(pattern_folder, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    assert main(["train", "--data.path", str(pattern_folder), "--run_dir", str(run_dir), *TINY]) == 0
    return run_dir


def test_explain_image_gives_probabilities_overlay_and_head_maps(run, pattern_folder):
    model, info = load_model(run)
    image = Image.open(next((pattern_folder / "val" / "cross").iterdir()))
    result = explain_image(model, info, image, layer=0, topk=2)
    assert len(result.probabilities) == 2 and set(result.probabilities) <= {"circle", "cross", "stripes"}
    assert sum(result.probabilities.values()) <= 1 + 1e-6
    assert result.overlay.shape == (16, 16, 3) and 0 <= result.overlay.min() and result.overlay.max() <= 1
    assert result.heads.dtype == np.uint8 and result.heads.ndim == 3 and result.heads.std() > 5  # two drawn maps


def test_a_pushed_folder_and_a_registry_name_explain_like_predict(run, pattern_folder, tmp_path, monkeypatch):
    """The page works for every kind of source: a pushed folder gives the run's numbers; a registry name (the real
    ViT-Ti/16 when the shared weights are here) gives the top-1 that ``vitlab.predict`` gives."""
    from conftest import shared_dir
    from vitlab import predict

    image = next((pattern_folder / "val" / "stripes").iterdir())
    assert main(["push", str(run), "--dir", str(tmp_path / "hub")]) == 0
    from_run = explain_image(*load_model(run), Image.open(image))
    from_folder = explain_image(*load_model(tmp_path / "hub"), Image.open(image))
    assert from_folder.probabilities == pytest.approx(from_run.probabilities)
    weights, data = shared_dir("weights"), shared_dir("data")
    if weights is None or not (weights / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors").is_file() or data is None:
        pytest.skip("the shared ViT-Ti/16 weights or ImageNet samples are not here")
    monkeypatch.setenv("VITLAB_WEIGHTS_DIR", str(weights))
    photo = sorted((data / "imagenet-samples").glob("*.JPEG"))[0]
    loaded = load_model("vit_tiny")
    result = explain_image(*loaded, Image.open(photo), topk=1)
    [expected] = predict(loaded, [str(photo)], topk=1, device="cpu")
    assert list(result.probabilities) == expected["classes"]
    assert result.overlay.shape == (224, 224, 3)


def test_examples_default_to_one_image_per_class_of_the_run(pattern_folder, tmp_path):
    shown = example_images([], str(pattern_folder))
    assert [Path(p).parent.name for p in shown] == ["circle", "cross", "stripes"]
    assert example_images([str(pattern_folder / "val" / "cross")], None) == sorted(
        str(p) for p in (pattern_folder / "val" / "cross").iterdir())
    with pytest.raises(FileNotFoundError, match="--examples"):
        example_images([str(tmp_path / "missing.png")])


def test_demo_without_gradio_is_one_message(run, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["demo", str(run)]) == 2
    assert 'pip install "vitlab[demo]"' in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_page_predicts_an_example_in_headless_chromium(run, pattern_folder, tmp_path):
    """Open the page as a user would: pick an example, press Predict, see the label and the overlay."""
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("VITLAB_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but VITLAB_REQUIRE_BROWSER is set (CI installs it with apt-get)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from vitlab.insight.demo import launch_demo

    port = free_port()
    demo = launch_demo(str(run), host="127.0.0.1", port=port, block=False, topk=3)
    try:
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=browser, headless=True, args=BROWSER_FLAGS,
                viewport={"width": 1280, "height": 1400})
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            page.get_by_text("vitlab demo: run").wait_for(timeout=60_000)
            page.locator(".gallery-item, button.gallery-item, [data-testid='examples'] button").first.click()
            page.locator("#input-image img").first.wait_for(timeout=30_000)  # the example is in the input
            page.locator("#predict").click()
            label = page.locator("#prediction")
            label.get_by_text("%").first.wait_for(timeout=60_000)  # probabilities shown
            text = label.inner_text()
            assert any(name in text for name in ("circle", "cross", "stripes")), text
            page.locator("#rollout img").first.wait_for(timeout=30_000)
            page.locator("#heads img").first.wait_for(timeout=30_000)
            artifacts = Path(os.environ.get("VITLAB_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
            artifacts.mkdir(parents=True, exist_ok=True)
            shot = artifacts / "demo-screenshot.png"
            page.screenshot(path=str(shot), full_page=True)
            context.close()
        assert np.asarray(Image.open(shot).convert("L"), dtype=np.float32).std() > 10
    finally:
        demo.close()


def test_the_demo_command_listens_on_this_machine_only_and_shares_nothing_by_default(run, monkeypatch):
    pytest.importorskip("gradio")
    import vitlab.insight.demo as demo_module

    seen = {}
    monkeypatch.setattr(demo_module, "launch_demo", lambda *args: seen.update(args=args))
    assert main(["demo", str(run)]) == 0
    source, examples, host, port, share, topk, device = seen["args"]
    assert (source, examples, host, port, share) == (str(run), [], "127.0.0.1", None, False)
    assert main(["demo", str(run), "--share", "--host", "0.0.0.0", "--port", "7999"]) == 0
    assert seen["args"][2:5] == ("0.0.0.0", 7999, True)
