"""TensorFlow-Hub SavedModels and Keras ViT weights into vitlab's ViT: same logits as the source framework.

The source models are built here at a tiny size (width 32, depth 2, 4 heads, 32x32 images, patch 8) with
random weights and the variable / layer names of the published artefacts, saved the way those were, read
back by vitlab (checkpoint reader / h5py: nothing in the files runs) and compared with TensorFlow's or
Keras's own forward pass.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import torch._dynamo  # noqa: E402,F401  (before TensorFlow: see vitlab.pretrained.tf._before_tensorflow)

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from vitlab.pretrained import WeightsError, load_pretrained  # noqa: E402
from vitlab.pretrained.tf import extract_saved_model, flax_names  # noqa: E402

SIZE, PATCH, DIM, HEADS, MLP, DEPTH, CLASSES = 32, 8, 32, 4, 64, 2, 5
ATOL = 1e-4


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    """Inputs as the sources take them: NHWC float32 in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def ours(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


# ----------------------------------------------------------------------------- (b) jax2tf SavedModel (TF-Hub / Kaggle)


def flax_params(head: bool = True, seed: int = 0) -> dict:
    """Google's Flax parameter tree (the .npz the TF-Hub models were exported from), tiny, random."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: (rng.normal(0, 0.2, shape)).astype(np.float32)
    hd = DIM // HEADS
    block = lambda: {
        "LayerNorm_0": {"scale": 1 + r(DIM), "bias": r(DIM)}, "LayerNorm_2": {"scale": 1 + r(DIM), "bias": r(DIM)},
        "MlpBlock_3": {"Dense_0": {"kernel": r(DIM, MLP), "bias": r(MLP)}, "Dense_1": {"kernel": r(MLP, DIM), "bias": r(DIM)}},
        "MultiHeadDotProductAttention_1": {
            **{n: {"kernel": r(DIM, HEADS, hd), "bias": r(HEADS, hd)} for n in ("query", "key", "value")},
            "out": {"kernel": r(HEADS, hd, DIM), "bias": r(DIM)}},
    }
    params = {
        "embedding": {"kernel": r(PATCH, PATCH, 3, DIM), "bias": r(DIM)}, "cls": r(1, 1, DIM),
        "Transformer": {"posembed_input": {"pos_embedding": r(1, 1 + (SIZE // PATCH) ** 2, DIM)},
                        "encoder_norm": {"scale": 1 + r(DIM), "bias": r(DIM)},
                        **{f"encoderblock_{i}": block() for i in range(DEPTH)}},
    }
    if head:
        params["head"] = {"kernel": r(DIM, CLASSES), "bias": r(CLASSES)}
    return params


def flax_vit(p: dict, x):
    """The JAX ViT's forward pass (vit_jax.models.VisionTransformer, eval mode) in TensorFlow ops."""
    def norm(t, ln):
        mean, var = tf.nn.moments(t, axes=[-1], keepdims=True)
        return (t - mean) * tf.math.rsqrt(var + 1e-6) * ln["scale"] + ln["bias"]

    y = tf.nn.conv2d(x, p["embedding"]["kernel"], strides=PATCH, padding="VALID") + p["embedding"]["bias"]
    batch = tf.shape(y)[0]
    y = tf.reshape(y, [batch, -1, DIM])
    y = tf.concat([tf.tile(p["cls"], [batch, 1, 1]), y], axis=1) + p["Transformer"]["posembed_input"]["pos_embedding"]
    for i in range(DEPTH):
        b = p["Transformer"][f"encoderblock_{i}"]
        a, h = b["MultiHeadDotProductAttention_1"], norm(y, b["LayerNorm_0"])
        q, k, v = (tf.einsum("bnd,dhk->bnhk", h, a[n]["kernel"]) + a[n]["bias"] for n in ("query", "key", "value"))
        w = tf.nn.softmax(tf.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(DIM // HEADS), axis=-1)
        y = y + tf.einsum("bqhk,hkd->bqd", tf.einsum("bhqs,bshk->bqhk", w, v), a["out"]["kernel"]) + a["out"]["bias"]
        m = b["MlpBlock_3"]
        h = tf.nn.gelu(norm(y, b["LayerNorm_2"]) @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"], approximate=False)
        y = y + h @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]
    y = norm(y, p["Transformer"]["encoder_norm"])[:, 0]
    return y @ p["head"]["kernel"] + p["head"]["bias"] if "head" in p else y


class _ReusableSavedModelWrapper(tf.train.Checkpoint):
    """The wrapper sayakpaul/ViT-jax2tf's conversion.ipynb saves (jax2tf's reusable-SavedModel example)."""

    def __init__(self, fn, param_vars):
        super().__init__()
        self.variables = tf.nest.flatten(param_vars)
        self.trainable_variables = [v for v in self.variables if v.trainable]
        self.regularization_losses = []
        self.__call__ = fn


def save_jax2tf(params: dict, folder: Path) -> tf.types.experimental.ConcreteFunction:
    """Save as the TF-Hub ViTs were: unnamed tf.Variables of the flattened tree, the forward as serving_default."""
    trainable = "head" not in params  # feature extractors were exported with gradients
    param_vars = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=trainable), params)
    fn = tf.function(lambda x: flax_vit(param_vars, x), autograph=False)
    serving = fn.get_concrete_function(tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32))
    tf.saved_model.save(_ReusableSavedModelWrapper(fn, param_vars), str(folder), signatures={"serving_default": serving})
    return serving


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A tiny stand-in for Kaggle spsayakpaul/vision-transformer/tensorFlow2/vit-b16-classification
    (tfhub.dev/sayakpaul/vit_b16_classification/1), and TensorFlow's logits for images()."""
    folder = tmp_path_factory.mktemp("tfhub") / "vit_tiny_classification"
    serving = save_jax2tf(flax_params(), folder)
    return folder, serving(tf.constant(images())).numpy()


def test_tf_hub_saved_model_same_logits(saved_model) -> None:
    """Kaggle / TF-Hub ``vit-b16-classification`` / ``vit-b8-classification`` layout: a jax2tf SavedModel whose
    variables are a list in tf.nest order. The logits equal the SavedModel's own serving function's."""
    folder, expected = saved_model
    model, info = load_pretrained(folder)
    assert info.source_format == "tf_hub" and info.dropped == {}
    cfg = info.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size, cfg.num_classes) == (
        DIM, DEPTH, HEADS, (PATCH, PATCH), (SIZE, SIZE), CLASSES)
    assert info.preprocessing.mean == (0.5, 0.5, 0.5) and info.preprocessing.interpolation == "bilinear"
    assert np.abs(ours(model, images()) - expected).max() <= ATOL
    # what the published serving signature computes, read back by TensorFlow itself
    restored = tf.saved_model.load(str(folder)).signatures["serving_default"]
    assert np.abs(list(restored(tf.constant(images())).values())[0].numpy() - expected).max() <= 1e-6


def test_tf_hub_feature_extractor(tmp_path: Path) -> None:
    """Kaggle / TF-Hub ``vit-b16-fe`` layout: the same export without a head (trainable variables); our model
    has no head and gives the same CLS features."""
    serving = save_jax2tf(flax_params(head=False, seed=1), tmp_path / "fe")
    model, info = load_pretrained(tmp_path / "fe")
    assert info.config.num_classes == 0
    assert np.abs(ours(model, images()) - serving(tf.constant(images())).numpy()).max() <= ATOL


def test_flax_names_follow_tf_nest_order() -> None:
    """The names the reader gives a variable list are tf.nest.flatten's order of the Flax tree."""
    params = flax_params()
    flat = tf.nest.flatten(params)
    assert flax_names([a.shape for a in flat]) == [path for path, _ in _paths(params)]
    assert all(a is b for a, (_, b) in zip(flat, _paths(params)))
    assert flax_names([(3,), (4, 4)]) is None


def _paths(tree: dict, prefix: str = ""):
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            yield from _paths(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def test_saved_model_without_tensorflow_is_a_clear_error(saved_model, monkeypatch) -> None:
    """Without TensorFlow the message names the path and the fix."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(WeightsError, match=r"saved_model|SavedModel") as err:
        load_pretrained(saved_model[0])
    assert "pip install 'vitlab[tf]'" in str(err.value) and str(saved_model[0]) in str(err.value)


def test_saved_model_of_another_kind_refused(tmp_path: Path) -> None:
    """A SavedModel that is not a jax2tf ViT (here: a bare tf.Module) is refused, naming what it holds."""
    module = tf.Module()
    module.w = tf.Variable(np.zeros((3, 3), np.float32))
    tf.saved_model.save(module, str(tmp_path / "other"))
    with pytest.raises(WeightsError, match="not a ViT exported from JAX"):
        load_pretrained(tmp_path / "other")


def test_finetune_from_saved_model_dir(saved_model, pattern_folder, tmp_path: Path, capsys) -> None:
    """``vitlab finetune --pretrained <saved_model_dir>``: one tiny staged epoch, the weights' preprocessing."""
    from vitlab.cli import main

    run = tmp_path / "ft"
    code = main(["finetune", "--pretrained", str(saved_model[0]), "--dataset", "imagefolder", "--data.path",
                 str(pattern_folder), "--mode", "staged", "--finetune.head_epochs", "1", "--train.epochs", "1",
                 "--train.batch_size", "64", "--data.num_workers", "0", "--run_dir", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    info = json.loads((run / "best.json").read_text())
    assert info["model"]["embed_dim"] == DIM and info["model"]["num_classes"] == 3
    assert info["preprocessing"]["mean"] == pytest.approx([0.5] * 3)
    assert "tf_hub layout" in info["data_notes"]["pretrained"]


def test_registry_download_unpacks_saved_model(saved_model, tmp_path: Path, monkeypatch) -> None:
    """A registry entry in the TF-Hub format: its ``.tar.gz`` (as Kaggle serves it) is downloaded and unpacked
    into the weights cache as a directory, then reused without downloading."""
    from dataclasses import replace

    from vitlab.pretrained import find_weights_file, registry

    folder, expected = saved_model
    archive = tmp_path / "served" / "download.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:  # Kaggle's archives hold saved_model.pb at the top
        for item in sorted(folder.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(folder)), recursive=False)
    base = registry.get_weights("vit_base_patch16_224.tfhub_sayakpaul_augreg_in21k_ft_in1k")
    entry = replace(base, name="test_tfhub", url=archive.as_uri(), config=load_pretrained(folder)[1].config)
    monkeypatch.setitem(registry.WEIGHTS, "test_tfhub", entry)
    monkeypatch.delenv("VITLAB_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("VITLAB_CACHE_DIR", str(tmp_path / "cache"))
    model, info = load_pretrained("test_tfhub")
    assert Path(info.file) == tmp_path / "cache" / "weights" / "test_tfhub"
    assert (Path(info.file) / "saved_model.pb").is_file() and info.name == "test_tfhub"
    assert np.abs(ours(model, images()) - expected).max() <= ATOL
    assert not [p for p in Path(info.file).parent.iterdir() if p.name.startswith(".")]  # no temporary left
    archive.unlink()
    assert find_weights_file(entry, download=False) == Path(info.file)


def test_archive_escaping_its_folder_refused(tmp_path: Path) -> None:
    """A member path leaving the target (``../``) is refused and nothing is unpacked."""
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("saved_model.pb", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(WeightsError, match="refused"):
        extract_saved_model(archive, tmp_path / "cache" / "model")
    assert not (tmp_path / "cache" / "model").exists() and not (tmp_path / "cache" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()


# ----------------------------------------------------------------------------- (a) vit-keras (.keras, .h5)


def mirror_layers():
    """vit-keras's layers (vit_keras/layers.py, 0.2.0 for Keras 3), rebuilt with the same layer and attribute names."""

    @keras.utils.register_keras_serializable(package="vitlab_test")
    class ClassToken(keras.layers.Layer):
        def build(self, input_shape):
            self.hidden_size = input_shape[-1]
            self.cls = self.add_weight(shape=(1, 1, self.hidden_size), initializer="zeros", name="cls")

        def call(self, inputs):
            return keras.ops.concatenate([keras.ops.broadcast_to(self.cls, [keras.ops.shape(inputs)[0], 1, self.hidden_size]),
                                          inputs], 1)

    @keras.utils.register_keras_serializable(package="vitlab_test")
    class AddPositionEmbs(keras.layers.Layer):
        def build(self, input_shape):
            self.pe = self.add_weight(shape=(1, input_shape[1], input_shape[2]), initializer="random_normal",
                                      name="pos_embedding")

        def call(self, inputs):
            return inputs + self.pe

    class MultiHeadSelfAttention(keras.layers.Layer):
        def __init__(self, *args, num_heads, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_heads = num_heads

        def build(self, input_shape):
            d = input_shape[-1]
            self.query_dense, self.key_dense, self.value_dense, self.combine_heads = (
                keras.layers.Dense(d, name=n) for n in ("query", "key", "value", "out"))

        def call(self, x):
            b, d = keras.ops.shape(x)[0], x.shape[-1]
            split = lambda t: keras.ops.transpose(keras.ops.reshape(t, (b, -1, self.num_heads, d // self.num_heads)), (0, 2, 1, 3))
            q, k, v = split(self.query_dense(x)), split(self.key_dense(x)), split(self.value_dense(x))
            w = keras.ops.softmax(keras.ops.matmul(q, keras.ops.transpose(k, (0, 1, 3, 2))) / np.sqrt(d // self.num_heads))
            o = keras.ops.reshape(keras.ops.transpose(keras.ops.matmul(w, v), (0, 2, 1, 3)), (b, -1, d))
            return self.combine_heads(o), w

    @keras.utils.register_keras_serializable(package="vitlab_test")
    class TransformerBlock(keras.layers.Layer):
        def __init__(self, *args, num_heads, mlp_dim, dropout, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_heads, self.mlp_dim, self.dropout = num_heads, mlp_dim, dropout

        def build(self, input_shape):
            self.att = MultiHeadSelfAttention(num_heads=self.num_heads, name="MultiHeadDotProductAttention_1")
            self.mlpblock = keras.Sequential([
                keras.layers.Dense(self.mlp_dim, name=f"{self.name}_Dense_0"),
                keras.layers.Activation(lambda t: keras.activations.gelu(t, approximate=False)),
                keras.layers.Dropout(self.dropout),
                keras.layers.Dense(input_shape[-1], name=f"{self.name}_Dense_1"),
                keras.layers.Dropout(self.dropout)], name="MlpBlock_3")
            self.layernorm1 = keras.layers.LayerNormalization(epsilon=1e-6, name="LayerNorm_0")
            self.layernorm2 = keras.layers.LayerNormalization(epsilon=1e-6, name="LayerNorm_2")

        def call(self, inputs):
            x, w = self.att(self.layernorm1(inputs))
            x = x + inputs
            return x + self.mlpblock(self.layernorm2(x)), w

        def get_config(self):
            return {**super().get_config(), "num_heads": self.num_heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout}

    return ClassToken, AddPositionEmbs, TransformerBlock


def build_vit_keras(layers, representation_size: int | None = None, seed: int = 0):
    """vit_keras.vit.build_model (0.2.0) at a tiny size, with random weights (including the zero-initialised ones)."""
    class_token, add_position_embs, transformer_block = layers
    keras.utils.set_random_seed(seed)
    x = keras.layers.Input(shape=(SIZE, SIZE, 3))
    y = keras.layers.Conv2D(DIM, PATCH, strides=PATCH, padding="valid", name="embedding")(x)
    y = keras.layers.Reshape((y.shape[1] * y.shape[2], DIM))(y)
    y = class_token(name="class_token")(y)
    y = add_position_embs(name="Transformer_posembed_input")(y)
    for n in range(DEPTH):
        y, _ = transformer_block(num_heads=HEADS, mlp_dim=MLP, dropout=0.0, name=f"Transformer_encoderblock_{n}")(y)
    y = keras.layers.LayerNormalization(epsilon=1e-6, name="Transformer_encoder_norm")(y)
    y = keras.layers.Lambda(lambda v: v[:, 0], name="ExtractToken")(y)
    if representation_size is not None:
        y = keras.layers.Dense(representation_size, name="pre_logits", activation="tanh")(y)
    y = keras.layers.Dense(CLASSES, name="head")(y)
    model = keras.models.Model(inputs=x, outputs=y, name="vit-b16")
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, 0.2, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def vit_keras_layers():
    layers = pytest.importorskip("vit_keras.layers")
    return layers.ClassToken, layers.AddPositionEmbs, layers.TransformerBlock


@pytest.fixture(scope="module", params=["mirror", "vit_keras"])
def keras_vit(request):
    """The vit-keras ViT (its vit_b16 etc. at a tiny size): with the package's own layers when it is installed."""
    layers = mirror_layers() if request.param == "mirror" else vit_keras_layers()
    model = build_vit_keras(layers)
    return model, model.predict(images(), verbose=0)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_vit_keras_same_logits(keras_vit, suffix: str, tmp_path: Path) -> None:
    """``vit-keras`` (faustomorales/vit-keras; vit_b16 / vit_b32 / vit_l16 models) saved by Keras 3 as ``.keras``,
    ``.weights.h5`` (save_weights) and legacy ``.h5``: the logits equal Keras's. A ``.weights.h5`` has no config,
    so its head count is given (a ``.keras`` / ``.h5`` config says it)."""
    model, expected = keras_vit
    path = tmp_path / f"vit{suffix}"
    (model.save_weights if suffix == ".weights.h5" else model.save)(str(path))
    loaded, info = load_pretrained(path, **({"num_heads": HEADS} if suffix == ".weights.h5" else {}))
    assert info.source_format == "keras" and info.dropped == {} and info.config.num_heads == HEADS
    assert np.abs(ours(loaded, images()) - expected).max() <= ATOL


def test_vit_keras_legacy_keras2_h5_with_pre_logits(tmp_path: Path) -> None:
    """vit-keras <= 0.1.2 on tf.keras 2 (``vit_b16(weights="imagenet21k")`` then ``model.save("vit.h5")``): layer
    names with ``/`` (``Transformer/encoderblock_0``), weight names ``...:0``, a tanh pre-logits layer. The file is
    written here with h5py in that layout from a Keras 3 model; the pre-logits layer is dropped with a reason and
    the features before it equal Keras's."""
    model = build_vit_keras(mirror_layers(), representation_size=DIM, seed=2)  # vit-keras: 768 for B
    path = tmp_path / "vit_keras2.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights")
        layers = [layer for layer in model.layers if layer.weights]
        group.attrs["layer_names"] = [_keras2_name(layer.name).encode() for layer in layers]
        for layer in layers:
            sub = group.create_group(_keras2_name(layer.name))
            names = [_keras2_name(w.path) + ":0" for w in layer.weights]
            sub.attrs["weight_names"] = [n.encode() for n in names]
            for name, w in zip(names, layer.weights):
                sub.create_dataset(name, data=np.asarray(w.numpy()))
        f.attrs["model_config"] = json.dumps({"config": {"layers": [{"config": {"num_heads": HEADS}}]}})
    loaded, info = load_pretrained(path)
    assert set(info.dropped) == {"pre_logits/kernel", "pre_logits/bias"}
    features = keras.Model(model.input, model.get_layer("ExtractToken").output).predict(images(), verbose=0)
    loaded.reset_classifier(0)
    assert np.abs(ours(loaded, images()) - features).max() <= ATOL


def _keras2_name(name: str) -> str:
    """tf.keras 2 names of vit-keras 0.1.x: ``Transformer/encoderblock_0/MlpBlock_3/Transformer/encoderblock_0/Dense_0``."""
    return name.replace("Transformer_", "Transformer/").replace("_Dense_", "/Dense_")


def test_non_vit_keras_file_refused(tmp_path: Path) -> None:
    """A Keras file of another architecture is refused, naming its layers and the layout expected."""
    cnn = keras.Sequential([keras.layers.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
                            keras.layers.Flatten(), keras.layers.Dense(2, name="logits")])
    cnn.save(str(tmp_path / "cnn.keras"))
    with pytest.raises(WeightsError, match="not a ViT in the vit-keras layout") as err:
        load_pretrained(tmp_path / "cnn.keras")
    assert "cnn.keras" in str(err.value) and "conv" in str(err.value)
