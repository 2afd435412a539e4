"""Inference through onnxruntime on the project's own ONNX export (``predict --runtime onnx``).

On a CPU, onnxruntime runs the zoo's convolutional networks faster than Keras' ``predict_on_batch`` on the
TensorFlow backend (benchmarks/cpu_inference.py). `OnnxModel` wraps an ``onnxruntime.InferenceSession`` of the
file `hpa_zoo.infer.export.export_onnx` writes, with the interface prediction code uses (``predict_on_batch``,
``__call__``, ``name``, ``input_shape``, ``output_shape``), and is accepted only if its logits equal the Keras
model's to `TOLERANCE` on a probe. `for_model` caches the export in the hpa-zoo cache (``onnx/<weights sha256>/``),
so it is made once per weights file and input size (an export takes about 30 s for DenseNet121 on 2 cores).

`choose_runtime("auto")` picks onnxruntime on a CPU-only TensorFlow machine with onnxruntime and tf2onnx
installed, else Keras.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from hpa_zoo.errors import ConfigError

log = logging.getLogger(__name__)

#: max |logit difference| between Keras and the ONNX export for the export to be used
TOLERANCE = 1e-5
RUNTIMES = ("auto", "keras", "onnx")


def onnx_available() -> bool:
    """onnxruntime and tf2onnx importable and the Keras backend is TensorFlow."""
    import importlib.util

    import keras

    return (keras.backend.backend() == "tensorflow" and importlib.util.find_spec("onnxruntime") is not None
            and importlib.util.find_spec("tf2onnx") is not None)


def choose_runtime(runtime: str) -> str:
    """``"keras"`` or ``"onnx"`` for a requested ``"auto"`` / ``"keras"`` / ``"onnx"``.

    ``auto``: onnx on a machine without a GPU where `onnx_available`; keras otherwise.

    Raises:
        ConfigError: an unknown name, or ``"onnx"`` without onnxruntime/tf2onnx (says what to install).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r}: use one of {RUNTIMES}")
    if runtime == "keras":
        return "keras"
    available = onnx_available()
    if runtime == "onnx":
        if not available:
            raise ConfigError("runtime='onnx' needs the TensorFlow backend with onnxruntime and tf2onnx: pip install "
                              "'hpa-zoo[export]'")
        return "onnx"
    if not available:
        return "keras"
    import tensorflow as tf

    return "keras" if tf.config.list_physical_devices("GPU") else "onnx"


class OnnxModel:
    """An onnxruntime session of a zoo model's ONNX export: (B, H, W, C) float32 [0, 255] -> logits (B, K).

    Attributes:
        name, input_shape, output_shape: as the Keras model's.
        path: the ONNX file.
    """

    def __init__(self, path, *, name: str, input_shape, output_shape, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        self.name, self.input_shape, self.output_shape = name, tuple(input_shape), tuple(output_shape)

    def predict_on_batch(self, x) -> np.ndarray:
        """Logits (B, K) float32 of images (B, H, W, C) float32 in [0, 255]."""
        return self.session.run(None, {self._input: np.asarray(x, np.float32)})[0]

    def __call__(self, x, training: bool = False) -> np.ndarray:
        return self.predict_on_batch(x)

    @classmethod
    def from_keras(cls, model, path, *, threads: int | None = None, probe=None) -> "OnnxModel":
        """Export ``model`` to ``path`` (`hpa_zoo.infer.export.export_onnx`) and check it against Keras.

        Raises:
            ConfigError: the export's logits differ from Keras' by more than `TOLERANCE` (the file is removed).
        """
        from hpa_zoo.infer.export import export_onnx

        export_onnx(model, path)
        onnx_model = cls(path, name=model.name, input_shape=model.input_shape, output_shape=model.output_shape,
                         threads=threads)
        diff = onnx_model.check_against(model, probe)
        if diff > TOLERANCE:
            Path(path).unlink(missing_ok=True)
            raise ConfigError(f"the ONNX export of {model.name} differs from Keras by {diff:.3g} (> {TOLERANCE:g}) on "
                              f"a probe; use runtime='keras'")
        log.info("ONNX export of %s: %s (max |logit diff| to Keras %.2g)", model.name, path, diff)
        return onnx_model

    def check_against(self, model, probe=None) -> float:
        """max |logits_keras - logits_onnx| on ``probe`` (default two seeded random images), float."""
        import keras

        if probe is None:
            shape = (2,) + tuple(int(d) for d in model.input_shape[1:])
            probe = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        ref = np.asarray(keras.ops.convert_to_numpy(model(probe, training=False)), np.float64)
        return float(np.max(np.abs(ref - self.predict_on_batch(probe).astype(np.float64))))


def for_model(model, *, weights_file=None, threads: int | None = None) -> OnnxModel:
    """The `OnnxModel` of a Keras model, exported once and cached.

    Args:
        model: keras.Model (B, H, W, C) -> logits (B, K).
        weights_file: the file its weights came from (a preset's ``model.weights.h5``); its sha256 keys the cache
            (``<hpa-zoo cache>/onnx/<sha256[:16]>/``). None: no cache (exported to a temporary file every call).
        threads: onnxruntime intra-op threads (default its own choice).

    Returns:
        `OnnxModel`.
    """
    import tempfile

    from hpa_zoo.atomic import atomic_write_text

    h, w, c = (int(d) for d in model.input_shape[1:])
    if weights_file is None:
        folder = Path(tempfile.mkdtemp(prefix="hpa_zoo_onnx_"))
        return OnnxModel.from_keras(model, folder / "model.onnx", threads=threads)
    from hpa_zoo.zoo.weights import cache_dir as default_cache, sha256_file

    digest = sha256_file(weights_file)
    folder = default_cache() / "onnx" / digest[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.{h}x{w}x{c}.onnx"
    record = path.with_suffix(".json")
    if path.is_file() and record.is_file():
        try:
            same = json.loads(record.read_text()).get("weights_sha256") == digest
        except (OSError, ValueError):
            same = False
        if same:
            return OnnxModel(path, name=model.name, input_shape=model.input_shape, output_shape=model.output_shape,
                             threads=threads)
    onnx_model = OnnxModel.from_keras(model, path, threads=threads)
    atomic_write_text(record, json.dumps({"weights_sha256": digest, "weights_file": os.fspath(weights_file),
                                          "input_shape": [h, w, c], "tolerance": TOLERANCE}, indent=2))
    return onnx_model


def with_runtime(model, runtime: str, weights_file=None):
    """``model`` itself (runtime keras) or its `OnnxModel` (onnx); ``auto`` uses onnx only where the export can
    be cached (``weights_file`` given, e.g. a preset's) on a CPU-only machine with onnxruntime (`choose_runtime`).

    Returns:
        the Keras model or an `OnnxModel` with the same prediction interface.
    """
    chosen = choose_runtime(runtime)
    if chosen == "keras" or (runtime == "auto" and weights_file is None):
        return model
    return for_model(model, weights_file=weights_file)
