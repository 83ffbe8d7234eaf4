"""Read TensorFlow SavedModels and Keras weight files as plain arrays, without running anything they carry.

* A SavedModel directory (``saved_model.pb`` + ``variables/``) is read with TensorFlow's
  checkpoint reader (``tf.train.load_checkpoint``), never ``tf.saved_model.load`` (which
  builds and can run the graph). The ViTs on TF-Hub / Kaggle Models by Sayak Paul
  (``sayakpaul/ViT-jax2tf``) were exported from Google's JAX parameters with ``jax2tf``:
  their variables have no names, only a list ``variables/0 ... variables/N-1`` in the order
  ``tf.nest.flatten`` gives the Flax parameter tree (keys sorted at every level). The names
  are rebuilt from that order and checked against the shapes.
* Keras files (``.keras`` zip, ``.weights.h5``, legacy ``.h5``) are read with ``h5py``
  as datasets; the model config is read as JSON only (for the head count), never
  deserialised, so no Lambda layer or custom class is ever executed.

TensorFlow and h5py are imported only here, and only when such a file is read.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vitlab.pretrained.errors import WeightsError

TF_HINT = "pip install 'vitlab[tf]'"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_saved_model(path: str | Path) -> bool:
    """Whether ``path`` is a TensorFlow SavedModel directory."""
    path = Path(path)
    return path.is_dir() and (path / "saved_model.pb").is_file()


def _import(module: str, path: Path, what: str):
    if module == "tensorflow":
        _before_tensorflow()
    try:
        return __import__(module)
    except ImportError as exc:
        raise WeightsError(f"{path} is {what}; reading it needs {module}, which is not installed "
                           f"({TF_HINT}), or convert it elsewhere to .safetensors / .npz") from exc


def _before_tensorflow() -> None:
    """Import torch._dynamo (and with it Triton) before TensorFlow: Triton's native module, first imported after
    TensorFlow's libraries are loaded, crashes the process (segfault) - as torch.compile or torch's own lazy
    imports would do later in a fine-tuning run."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # an optional speed-up path; nothing to protect without it
        pass


# ----------------------------------------------------------------------------- SavedModel (jax2tf / TF-Hub)


def read_saved_model(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Flax-named arrays (``Transformer/encoderblock_0/...``) of a jax2tf-exported ViT SavedModel."""
    path = Path(path)
    index = path / "variables" / "variables.index"
    if not index.is_file():
        raise WeightsError(f"SavedModel {path} has no variables/variables.index; is the download complete?")
    tf = _import("tensorflow", path, "a TensorFlow SavedModel")
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    try:
        reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    except Exception as exc:
        raise WeightsError(f"the variables of SavedModel {path} could not be read ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); it may be truncated or corrupt") from exc
    listed = _variable_list(graph)
    if listed is None:
        paths = sorted(_variable_paths(graph))[:6]
        raise WeightsError(
            f"SavedModel {path} is not a ViT exported from JAX with jax2tf (the TF-Hub / Kaggle ViTs by Sayak Paul "
            f"keep their parameters as a list 'variables/0...'); its variables are {paths}. A Keras ViT: save its "
            "weights with model.save('vit.keras') or model.save_weights('vit.weights.h5') and pass that file")
    arrays = [np.asarray(reader.get_tensor(key)) for key in listed]
    names = flax_names([a.shape for a in arrays])
    if names is None:
        shapes = [tuple(a.shape) for a in arrays[:6]]
        raise WeightsError(f"SavedModel {path} holds {len(arrays)} variables (first shapes {shapes}) that do not form "
                           "a ViT's Flax parameters (Transformer/encoderblock_N/..., cls, embedding, head)")
    return dict(zip(names, arrays)), {"source_format": "tf_hub"}


def _variable_list(graph) -> list[str] | None:
    """Checkpoint keys of the root's ``variables`` list, in list order (None if there is none)."""
    root = {c.local_name: c.node_id for c in graph.nodes[0].children}
    if "variables" not in root:
        return None
    items = {c.local_name: c.node_id for c in graph.nodes[root["variables"]].children}
    if not items or not all(name.isdigit() for name in items):
        return None
    keys = []
    for i in range(len(items)):
        node = graph.nodes[items[str(i)]] if str(i) in items else None
        attrs = {a.name: a.checkpoint_key for a in node.attributes} if node is not None else {}
        if "VARIABLE_VALUE" not in attrs:
            return None
        keys.append(attrs["VARIABLE_VALUE"])
    return keys


def _variable_paths(graph) -> list[str]:
    """Object paths of the variables (breadth-first, first path wins), for error messages."""
    seen, queue, out = {0}, [(0, "")], []
    while queue:
        node, prefix = queue.pop(0)
        if any(a.name == "VARIABLE_VALUE" for a in graph.nodes[node].attributes):
            out.append(prefix)
        for child in graph.nodes[node].children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                queue.append((child.node_id, f"{prefix}/{child.local_name}".lstrip("/")))
    return out


_BLOCK_PARAMS = {  # Flax names inside Transformer/encoderblock_N -> shape template
    "LayerNorm_0/scale": ("D",), "LayerNorm_0/bias": ("D",), "LayerNorm_2/scale": ("D",), "LayerNorm_2/bias": ("D",),
    "MlpBlock_3/Dense_0/kernel": ("D", "M"), "MlpBlock_3/Dense_0/bias": ("M",),
    "MlpBlock_3/Dense_1/kernel": ("M", "D"), "MlpBlock_3/Dense_1/bias": ("D",),
    **{f"MultiHeadDotProductAttention_1/{p}/kernel": ("D", "H", "hd") for p in ("query", "key", "value")},
    **{f"MultiHeadDotProductAttention_1/{p}/bias": ("H", "hd") for p in ("query", "key", "value")},
    "MultiHeadDotProductAttention_1/out/kernel": ("H", "hd", "D"), "MultiHeadDotProductAttention_1/out/bias": ("D",),
}


def _flax_templates(depth: int, head: bool, pre_logits: bool) -> dict[str, tuple]:
    """Every Flax parameter of a ViT of that depth, with its shape template (letters must agree)."""
    out: dict[str, tuple] = {
        "embedding/kernel": ("ph", "pw", "C", "D"), "embedding/bias": ("D",), "cls": (1, 1, "D"),
        "Transformer/posembed_input/pos_embedding": (1, "T", "D"),
        "Transformer/encoder_norm/scale": ("D",), "Transformer/encoder_norm/bias": ("D",),
    }
    for i in range(depth):
        out.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in _BLOCK_PARAMS.items()})
    if pre_logits:
        out.update({"pre_logits/kernel": ("D", "R"), "pre_logits/bias": ("R",)})
    if head:
        out.update({"head/kernel": ("R" if pre_logits else "D", "K"), "head/bias": ("K",)})
    return out


def _fits(templates: list[tuple], shapes: list[tuple]) -> bool:
    bound: dict[str, int] = {}
    for template, shape in zip(templates, shapes):
        if len(template) != len(shape):
            return False
        for want, got in zip(template, shape):
            if isinstance(want, int):
                if want != got:
                    return False
            elif bound.setdefault(want, got) != got:
                return False
    return bound.get("H", 0) * bound.get("hd", 0) == bound.get("D", -1)


def flax_names(shapes: list[tuple]) -> list[str] | None:
    """The Flax names of a ``tf.nest.flatten``-ed ViT parameter tree with these shapes, or None.

    ``tf.nest`` sorts dict keys at every level, so the order is fixed by the depth and by
    whether there is a head and a pre-logits layer. A head-only and a pre-logits-only tree
    have the same shapes; the head-only one (every published classifier) is preferred.
    """
    shapes = [tuple(s) for s in shapes]
    for head, pre_logits in ((True, False), (False, False), (True, True), (False, True)):
        rest = len(shapes) - 6 - 2 * head - 2 * pre_logits
        if rest <= 0 or rest % len(_BLOCK_PARAMS):
            continue
        templates = _flax_templates(rest // len(_BLOCK_PARAMS), head, pre_logits)
        names = sorted(templates, key=lambda n: n.split("/"))
        if _fits([templates[n] for n in names], shapes):
            return names
    return None


# ----------------------------------------------------------------------------- Keras (.keras, .weights.h5, .h5)


def read_keras(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays of a Keras file named ``layer/sublayer/variable`` (Keras 3 files: ``layer/sublayer/<index>``)."""
    path = Path(path)
    h5py = _import("h5py", path, "a Keras weights file")
    config: dict | None = None
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if "model.weights.h5" not in names:
                    raise WeightsError(f"{path} is a zip archive without model.weights.h5; not a Keras 3 .keras file")
                if "config.json" in names:
                    config = json.loads(archive.read("config.json"))
                data = io.BytesIO(archive.read("model.weights.h5"))
            with h5py.File(data, "r") as f:
                arrays = _read_h5(f)
        else:
            with h5py.File(path, "r") as f:
                arrays = _read_h5(f)
                raw = f.attrs.get("model_config")
                if raw is not None:
                    config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except WeightsError:
        raise
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable Keras weights file ({type(exc).__name__}: {exc})") from exc
    if not any(re.match(r"(?:.*/)?(?:embedding|class_token)/", k) for k in arrays) or \
            not any(re.search(r"Transformer[/_]encoderblock_\d+/", k) for k in arrays):
        layers = sorted({k.split("/")[0] for k in arrays})[:8]
        raise WeightsError(
            f"{path} is a Keras file but not a ViT in the vit-keras layout: its layers are {layers}; expected layers "
            "named embedding, class_token, Transformer_encoderblock_N (MultiHeadDotProductAttention_1, MlpBlock_3, "
            "LayerNorm_0/2), Transformer_encoder_norm and head")
    metadata = {"source_format": "keras"}
    heads = _find_num_heads(config)
    if heads:
        metadata["num_heads"] = str(heads)
    return arrays, metadata


def _read_h5(f) -> dict[str, np.ndarray]:
    """A Keras HDF5 file: legacy (``layer_names`` / ``weight_names`` attributes) or Keras 3 (``layers/.../vars/i``)."""
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" in root.attrs:
        out = {}
        for layer in root.attrs["layer_names"]:
            group = root[_text(layer)]
            for weight in group.attrs.get("weight_names", []):
                name = _text(weight)
                out[re.sub(r":\d+$", "", name)] = np.asarray(group[name])
        return out
    out = {}
    _walk_keras3(f, [], out, top=True)
    return out


def _walk_keras3(group, chain: list[str], out: dict[str, np.ndarray], top: bool = False) -> None:
    """Keras 3 ``saving_lib`` layout: each layer is a group whose ``vars`` subgroup (attribute ``name``: the
    layer's name) holds its variables as datasets ``0, 1, ...``; sub-layers are subgroups, lists in ``layers``."""
    here = chain
    if "vars" in group and not top:
        name = _text(group["vars"].attrs.get("name", group.name.rsplit("/", 1)[-1]))
        here = [*chain, name]
        for index in sorted(group["vars"], key=int):
            out["/".join(here) + f"/{index}"] = np.asarray(group["vars"][index])
    for key, child in group.items():
        if key != "vars" and hasattr(child, "items") and not (top and key in ("optimizer", "metrics")):
            _walk_keras3(child, here, out)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _find_num_heads(config: Any) -> int | None:
    """The first ``num_heads`` in a Keras model config (read as JSON, never deserialised)."""
    if isinstance(config, dict):
        if isinstance(config.get("num_heads"), int):
            return config["num_heads"]
        values = config.values()
    elif isinstance(config, list):
        values = config
    else:
        return None
    for value in values:
        if (found := _find_num_heads(value)) is not None:
            return found
    return None


# ----------------------------------------------------------------------------- downloads (.tar.gz SavedModels)


def extract_saved_model(archive: Path, target: Path) -> Path:
    """Unpack a ``.tar.gz`` SavedModel into ``target`` (a new directory), refusing paths that leave it.

    Unpacks into a temporary directory beside ``target`` and renames it, so ``target`` is
    either complete or absent. Returns ``target``.
    """
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                _safe_extract(tar, tmp)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise WeightsError(f"{archive} is not a readable .tar.gz archive ({exc})") from exc
        roots = sorted(p.parent for p in tmp.rglob("saved_model.pb"))
        if not roots:
            raise WeightsError(f"{archive} holds no saved_model.pb; not a SavedModel archive")
        if target.exists():  # another process finished first
            return target
        roots[0].rename(target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """``tar.extractall`` with the ``data`` filter: no absolute paths, no ``..``, no links out, no devices."""
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as exc:
            raise WeightsError(f"archive member refused ({exc}); the archive tries to write outside its folder") from exc
        return
    root = dest.resolve()
    for member in tar.getmembers():  # Pythons without extraction filters: plain files and folders only
        where = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or root not in (where, *where.parents):
            raise WeightsError(f"archive member {member.name!r} refused: only plain files and folders inside the archive")
    tar.extractall(dest)
