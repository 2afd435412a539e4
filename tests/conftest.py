"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _real_samples() -> Path | None:
    env = os.environ.get("HPA_REAL_SAMPLES")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "data" / "hpa_real_samples",
                   REPO_ROOT / "shared" / "data" / "hpa_real_samples"]
    for c in candidates:
        if (c / "labels.csv").is_file():
            return c
    return None


@pytest.fixture
def server():
    """A loopback HTTP server (`tests._http.LoopbackServer`: 127.0.0.1 only), closed after the test."""
    from tests._http import LoopbackServer

    s = LoopbackServer()
    yield s
    s.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path/"disk"`` (a real full disk: writes past 1 MiB fail with ENOSPC), unmounted after
    the test; ``small_disk.read_only()`` remounts it read-only (EROFS). Skipped where tmpfs cannot be mounted
    (not root)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    class Disk(type(disk)):
        def read_only(self) -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

    try:
        yield Disk(disk)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture(scope="session")
def real_samples_dir() -> Path:
    """The three real HPA fields of view (`../shared/data/hpa_real_samples`); skips the test if absent."""
    path = _real_samples()
    if path is None:
        pytest.skip("real HPA samples not found (../shared/data/hpa_real_samples); set HPA_REAL_SAMPLES")
    return path


#: Side of the images the shared model fixtures take.
MODEL_FIXTURE_SIZE = 64


def build_tiny_rgby_model(num_classes: int = 28, size: int = MODEL_FIXTURE_SIZE, *, name: str = "tiny_rgby_test"):
    """A small model with the zoo contract and Team 1's layer kinds, for tests of model-agnostic code (export).

    image (B, size, size, 4) float32 [0, 255] -> ``input_norm`` (Team 1's RGBY ``Normalization``) -> a stem
    (``conv1_conv`` stride 2, BN, ReLU, ``pool1`` max-pool) -> one dense-block step (BN-ReLU-1x1 conv, BN-ReLU-3x3
    conv, ``block_concat`` with its input) -> transition average pool -> Team 1's head kinds (``head_gap`` +
    ``head_gmp`` -> ``head_concat`` -> BN -> dropout -> ``head_fc1`` -> ReLU -> ``head_bn2`` -> ``head_dropout2``)
    -> ``logits`` (B, num_classes) float32. About 10k parameters; Keras' random init (seed it with
    ``keras.utils.set_random_seed``).
    """
    import keras

    from zoo_models.common import input_normalization
    from zoo_models.teams.team1_bestfitting import RGBY_MEAN, RGBY_STD

    inputs = keras.Input((size, size, 4), name="image")
    x = input_normalization(RGBY_MEAN, RGBY_STD)(inputs)
    x = keras.layers.Conv2D(16, 7, strides=2, padding="same", use_bias=False, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    stem = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="block_0_bn")(stem)
    x = keras.layers.ReLU(name="block_0_relu")(x)
    x = keras.layers.Conv2D(32, 1, use_bias=False, name="block_1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="block_1_bn")(x)
    x = keras.layers.ReLU(name="block_1_relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="block_2_conv")(x)
    x = keras.layers.Concatenate(name="block_concat")([stem, x])
    x = keras.layers.AveragePooling2D(2, strides=2, name="pool2")(x)
    avg = keras.layers.GlobalAveragePooling2D(name="head_gap")(x)
    mx = keras.layers.GlobalMaxPooling2D(name="head_gmp")(x)
    x = keras.layers.Concatenate(name="head_concat")([avg, mx])
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="head_bn1")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout1")(x)
    x = keras.layers.Dense(32, name="head_fc1")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="head_bn2")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout2")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


#: Registry row of `build_tiny_rgby` (registered by the ``tiny_registry_model`` fixture only).
TINY_REGISTRY_NAME = "tiny_rgby_test"


def build_tiny_rgby(num_classes: int = 28, input_shape=None, weights=None, **kw):
    """Registry-builder signature (docs/ARCHITECTURE.md "Registry rows") around `build_tiny_rgby_model`.

    Args:
        num_classes: logits per image. input_shape: (S, S, 4); default (`MODEL_FIXTURE_SIZE`,) * 2 + (4,).
        weights: None (random init) or a ``.weights.h5`` of this model.
    """
    size = (input_shape or (MODEL_FIXTURE_SIZE, MODEL_FIXTURE_SIZE, 4))[0]
    model = build_tiny_rgby_model(num_classes, size, name=TINY_REGISTRY_NAME)
    if weights is not None:
        model.load_weights(weights)
    return model


@pytest.fixture
def tiny_registry_model():
    """Registers `build_tiny_rgby` as registry row `TINY_REGISTRY_NAME` (stem ``conv1_conv``, classifier ``logits``,
    features ``head_dropout2``, RGBY) for the test, so code that takes a registry name (`hpa_zoo.load`, fine-tuning)
    runs on a model that traces in seconds; yields the name and removes the row afterwards."""
    from hpa_zoo import registry

    registry.list_models()  # fill the table first
    registry.register(registry.ModelSpec(name=TINY_REGISTRY_NAME, team="test", builder="tests.conftest:build_tiny_rgby",
                                         input_size=MODEL_FIXTURE_SIZE, first_conv="conv1_conv", classifier="logits",
                                         feature_layer="head_dropout2"))
    yield TINY_REGISTRY_NAME
    registry.unregister(TINY_REGISTRY_NAME)


@pytest.fixture(scope="session")
def tiny_rgby_model():
    """`build_tiny_rgby_model` with 28 classes at `MODEL_FIXTURE_SIZE` px, seed 0, built once per session (treat it
    as read-only). Its BN statistics are random too (not 0 / 1), so an exported artifact that dropped or
    mis-mapped one changes the outputs."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = build_tiny_rgby_model()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                               rng.normal(0, 0.1, beta.shape).astype("float32"),
                               rng.normal(0, 0.1, mean.shape).astype("float32"),
                               rng.uniform(0.5, 1.5, var.shape).astype("float32")])
    return model


@pytest.fixture(scope="session")
def team1_model_64():
    """Team 1's DenseNet121 (`build_team1_densenet121_512`, registry name) at `MODEL_FIXTURE_SIZE` px, seed 3, random
    init, built once per session (DenseNet121 takes seconds to build; treat it as read-only)."""
    import keras

    from zoo_models.teams.team1_bestfitting import build_team1_densenet121_512

    keras.utils.set_random_seed(3)
    return build_team1_densenet121_512(input_shape=(MODEL_FIXTURE_SIZE, MODEL_FIXTURE_SIZE, 4))
