"""`vitlab export`: a checkpoint or pretrained weights as ONNX, TorchScript or a torch.export program.

Every format takes any batch size (the batch dimension is dynamic); image size and channels
are fixed by the model. A JSON sidecar (``FILE.json``) carries what a deployment needs besides
the graph: class names, preprocessing (size, mean/std, interpolation, crop) and the input name.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

import torch

from vitlab.atomic import atomic_write

ExportFormat = Literal["onnx", "torchscript", "exported-program"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "exported-program")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def _export(model: torch.nn.Module, tmp: Path, fmt: str, example: torch.Tensor, opset: int, exporter: str) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter chatter about shape checks
        if fmt == "onnx":
            if exporter == "dynamo":
                torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=opset,
                                  dynamo=True, verbose=False)
            else:
                torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                                  opset_version=opset, dynamo=False)
        elif fmt == "torchscript":
            traced = torch.jit.trace(model, example, check_inputs=[(torch.zeros(3, *example.shape[1:]),)])
            traced.save(str(tmp))
        else:
            program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
            torch.export.save(program, str(tmp))


def export_model(model: torch.nn.Module, out: str | Path, fmt: ExportFormat = "onnx", info: dict | None = None,
                 opset: int = 18, exporter: Literal["dynamo", "torchscript"] = "dynamo", overwrite: bool = False) -> Path:
    """Write ``model`` (in eval mode, on the CPU) to ``out`` in ``fmt``, plus ``out.json``; returns ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if fmt == "onnx":
        import importlib.util

        needed = ["onnx"] + (["onnxscript"] if exporter == "dynamo" else [])
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"ONNX export needs {missing}: pip install \"vitlab[export]\"")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    model = model.cpu().eval()
    cfg = model.cfg
    example = torch.zeros(2, cfg.in_chans, *cfg.img_size)
    atomic_write(out, lambda tmp: _export(model, tmp, fmt, example, opset, exporter))
    info = info or {}
    sidecar = {"format": fmt, "input": INPUT_NAME, "output": OUTPUT_NAME,
               "input_shape": ["batch", cfg.in_chans, *cfg.img_size], "classes": info.get("classes"),
               "preprocessing": info.get("preprocessing"), "model": cfg.to_dict(), "torch": torch.__version__}
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return out


def load_exported(path: str | Path):
    """A callable ``images -> logits`` for a file written by :func:`export_model` (checks and tests)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path), map_location="cpu")
