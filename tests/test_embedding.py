"""hpa_zoo.analysis.embedding (``hpa-zoo embed``): one forward pass gives the features and the explorer's
predictions, and those predictions are ``predict``'s.

References: `hpa_zoo.infer.predict_images.predict_images` with ``tta="none"`` on the same folder and weights file
(its own reader and `predict_tta`), the classifier layer applied in NumPy to the features, and a real Keras layer
in the model's graph that records every eager forward pass (its batch size), so the count is the model's own.
"""
from __future__ import annotations

import math
import warnings

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from hpa_zoo import registry
from hpa_zoo.analysis.embedding import embed_folder
from hpa_zoo.analysis.explorer import read_explorer_data
from hpa_zoo.constants import CHANNELS
from hpa_zoo.infer.predict_images import predict_images

SIZE = 32
ROW = "counting_embed_test"
#: Batch sizes of the eager forward passes through `CountPasses` (the builder's model), in order.
PASSES: list[int] = []


class CountPasses(keras.layers.Layer):
    """Identity layer that appends the batch size of every eager call to `PASSES` (tracing is not counted)."""

    def call(self, x):
        if tf.executing_eagerly():
            PASSES.append(int(x.shape[0]))
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def build_counting(num_classes: int = 28, input_shape=None, weights=None, **kw):
    """Registry builder: image -> `CountPasses` -> BN-free conv trunk -> ``feat_fc`` (16) -> ``logits``."""
    size = (input_shape or (SIZE, SIZE, 4))[0]
    inp = keras.Input((size, size, 4), name="image")
    x = CountPasses(name="count")(inp)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(16, activation="tanh", name="feat_fc")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    model = keras.Model(inp, logits, name=ROW)
    if weights is not None:
        model.load_weights(weights)
    return model


@pytest.fixture
def row(tmp_path):
    registry.list_models()
    registry.register(registry.ModelSpec(name=ROW, team="test", builder="tests.test_embedding:build_counting",
                                         input_size=SIZE, first_conv="conv1", classifier="logits",
                                         feature_layer="feat_fc", cam_layer="conv2"))
    keras.utils.set_random_seed(5)
    model = build_counting()
    model.get_layer("logits").set_weights([np.random.default_rng(1).normal(0, 2, (16, 28)).astype("float32"),
                                           np.linspace(-1, 1, 28, dtype=np.float32)])
    weights = tmp_path / "w.weights.h5"
    model.save_weights(weights)
    yield weights, model
    registry.unregister(ROW)


def _folder(path, n=10, seed=0):
    rng = np.random.default_rng(seed)
    path.mkdir()
    ids = [f"img{k:02d}" for k in range(n)]
    for k, image_id in enumerate(ids):
        image = rng.integers(0, 256, (SIZE, SIZE, 4)).astype(np.uint8)
        image[..., k % 4] = np.uint8(230)  # images that differ in their class scores
        for j, colour in enumerate(CHANNELS):
            cv2.imwrite(str(path / f"{image_id}_{colour}.png"), image[..., j])
    targets = [str(k % 28) if k % 3 else f"{k % 28} 5" for k in range(n)]
    pd.DataFrame({"Id": ids, "Target": targets}).to_csv(path / "labels.csv", index=False)
    return ids


def test_embed_html_runs_the_model_once_and_its_top_classes_are_predicts(row, tmp_path):
    weights, model = row
    ids = _folder(tmp_path / "data")
    PASSES.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 10 images <= n_neighbors: the documented PCA fallback
        result = embed_folder(ROW, tmp_path / "data", out_dir=tmp_path / "emb", weights=str(weights),
                              batch_size=4, html=True, data_label="synthetic test images")
    # one forward pass per batch of 4: 3 passes over 10 images (the old command ran a second pass: 6)
    assert PASSES == [4, 4, 2]
    assert result["ids"] == ids and result["method"] == "pca"

    # the features are the classifier's input: its Dense applied in NumPy gives the same probabilities
    kernel, bias = (w.numpy() for w in model.get_layer("logits").weights)
    np.testing.assert_allclose(result["probabilities"], 1 / (1 + np.exp(-(result["features"] @ kernel + bias))),
                               atol=1e-5)

    predicted = predict_images(ROW, tmp_path / "data", out_dir=tmp_path / "pred", weights=str(weights), tta="none",
                               verbose=0)
    probs = pd.read_csv(predicted["probabilities"]).set_index("Id").loc[ids].to_numpy(np.float64)
    np.testing.assert_allclose(result["probabilities"], probs, atol=2e-6)  # CSV keeps 6 decimals
    page = read_explorer_data(result["files"]["explorer"])
    assert page["ids"] == ids and page["data_label"] == "synthetic test images"
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    assert [[c for c, _ in t] for t in page["top"]] == top.tolist()
    np.testing.assert_allclose([[p for _, p in t] for t in page["top"]],
                               np.take_along_axis(probs, top, axis=1), atol=1e-4)
    assert page["labels"][1] == [1] and page["labels"][0] == [0, 5]  # labels.csv by id
    assert np.load(tmp_path / "emb" / "features.npy").shape == (10, 16)


def test_embed_without_html_makes_no_predictions(row, tmp_path):
    weights, _ = row
    _folder(tmp_path / "data", n=5)
    PASSES.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = embed_folder(ROW, tmp_path / "data", out_dir=tmp_path / "emb", weights=str(weights), batch_size=8)
    assert PASSES == [5] and result["probabilities"] is None and result["explorer"] is None
    assert not (tmp_path / "emb" / "explorer.html").exists()
    assert len(pd.read_csv(tmp_path / "emb" / "projection.csv")) == 5 and math.isfinite(result["xy"].sum())
