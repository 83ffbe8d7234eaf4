"""The learning notebooks (notebooks/*.ipynb) run top to bottom and reach what they claim.

Each notebook is executed in a fresh Jupyter kernel (nbclient, kernel ``python3`` from this environment) on tiny
sizes (``VITLAB_NOTEBOOK_FAST=1``, read by the notebook's ``parameters`` cell), in a temporary working directory;
any cell error fails the test. The last cell (tagged ``summary``) prints one JSON line that the test checks. The
stored notebooks, with their outputs from a full run, are checked too: executed, no errors, small.

The kernel ``python3`` is written for this interpreter into a temporary JUPYTER_PATH (first in Jupyter's search
order), so a ``python3`` kernel spec elsewhere on the machine cannot run the notebooks with another Python.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from conftest import REPO, shared_dir

NOTEBOOKS = REPO / "notebooks"
TINY = "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
NEEDS = {  # what each notebook reads: (kind of shared root, path inside it)
    "01_vit_from_scratch.ipynb": [("data", "MNIST/raw")],
    "02_transfer_learning.ipynb": [("data", "imagenet-samples"), ("data", "imagenette-mini"), ("weights", TINY)],
    "03_attention.ipynb": [("data", "MNIST/raw"), ("data", "imagenet-samples"), ("weights", TINY)],
}
KERNEL_CHECK = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if ".ipynb_checkpoints" not in p.parts}


def execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[nbformat.NotebookNode, dict]:
    """Run one notebook in fast mode; return it (with outputs) and its summary."""
    roots = {}
    for kind, inside in NEEDS[name]:
        root = shared_dir(kind)
        if root is None or not (root / inside).exists():
            pytest.skip(f"{name} needs {inside} in the shared {kind} folder; set VITLAB_{kind.upper()}_DIR")
        roots[kind] = root
    monkeypatch.setenv("VITLAB_NOTEBOOK_FAST", "1")
    kernels = tmp_path / "jupyter"
    write_kernel_spec(kernels / "kernels" / "python3")  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    monkeypatch.setenv("JUPYTER_PATH", str(kernels))
    for kind, root in roots.items():  # the kernel inherits this process's environment
        monkeypatch.setenv(f"VITLAB_{kind.upper()}_DIR", str(root))

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters = nb.cells[next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))]
    assert "VITLAB_NOTEBOOK_FAST" in parameters.source
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    before = tree(REPO / "notebooks") | {p.name for p in REPO.iterdir()}
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    client = NotebookClient(nb, kernel_name="python3", timeout=600, startup_timeout=120,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    assert nb.cells[0].outputs[0]["text"].strip() == f"KERNEL_PREFIX={sys.prefix}", "the kernel is not this environment's Python"
    assert tree(REPO / "notebooks") | {p.name for p in REPO.iterdir()} == before, "the notebook wrote into the repository"
    summary_cells = [c for c in nb.cells if "summary" in c.metadata.get("tags", [])]
    assert len(summary_cells) == 1
    lines = "".join(o.get("text", "") for o in summary_cells[0].outputs if o.output_type == "stream").splitlines()
    return nb, json.loads(lines[-1])


def test_01_vit_from_scratch(tmp_path, monkeypatch):
    _, summary = execute("01_vit_from_scratch.ipynb", tmp_path, monkeypatch)
    assert summary["checks_passed"] >= 12  # every hand-built piece matched vitlab's module
    assert summary["hand_built_val_acc"] == summary["val_acc"]  # the trained weights run the same in our model
    assert summary["val_acc"] > 0.15  # learning: chance is 0.1 (fast mode trains 31 steps)


def test_02_transfer_learning(tmp_path, monkeypatch):
    _, summary = execute("02_transfer_learning.ipynb", tmp_path, monkeypatch)
    assert summary["photos"] == 17 and summary["photos_correct"] == 17 and summary["photos_in_top5"] == 17
    for name in ("linear_probe", "staged_fine-tuning", "from_scratch"):
        assert 0.0 <= summary[f"{name}_val_acc"] <= 1.0
    assert summary["linear_probe_val_acc"] > max(0.3, summary["from_scratch_val_acc"])


def test_03_attention(tmp_path, monkeypatch):
    _, summary = execute("03_attention.ipynb", tmp_path, monkeypatch)
    assert summary["rollout_by_hand_ok"] is True
    assert summary["mnist_val_acc"] > 0.15  # chance is 0.1
    assert summary["tiny_photos_correct"] == summary["photos"] > 0
    # ViT-Ti/16: some heads of the first layer look locally, every head of the last looks globally
    assert summary["tiny_distance_layer0_min"] < 0.5 * summary["tiny_distance_last_min"]
    # its learned position embedding is 2-D: neighbours alike, distant patches not
    assert summary["tiny_position_near"] > 0.5 and summary["tiny_position_far"] < 0.2


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_stored_notebook_is_executed_clean_and_small(name):
    """The committed notebooks hold the outputs of one full run, top to bottom, with no errors or noise."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it top to bottom in a fresh kernel"
    for cell in code:
        for output in cell.outputs:
            assert output.output_type != "error", cell.source[:80]
            assert not (output.output_type == "stream" and output.name == "stderr"), output.text[:300]
    assert "FAST = os.environ.get(\"VITLAB_NOTEBOOK_FAST\") == \"1\"" in code[0].source
    summary = [c for c in code if "summary" in c.metadata.get("tags", [])]
    assert len(summary) == 1 and json.loads(summary[0].outputs[-1]["text"].splitlines()[-1])
    assert path.stat().st_size < 700_000
    assert sum(p.stat().st_size for p in NOTEBOOKS.glob("*.ipynb")) < 1_500_000
