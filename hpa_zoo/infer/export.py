"""Exporting zoo models for serving and sharing: TF SavedModel, ONNX and bioimage.io model packages.

* `export_saved_model`: ``model.export(format="tf_saved_model")`` — the artifact TF Serving loads; its
  ``serve`` signature maps (B, H, W, C) float32 [0, 255] to the model's float32 logits.
* `export_onnx`: ``model.export(format="onnx")`` (on the TensorFlow backend Keras converts through ``tf2onnx``,
  extra ``hpa-zoo[export]``); same input and output as the Keras model.
* `export_bioimageio`: a bioimage.io model package (format 0.5.x, ecosystem.md §5) with ``keras_v3`` weights of a
  *probability* model (`probability_model`: logits -> sigmoid), RGBY input axes in the Keras layout
  (b, y, x, c), test tensors produced by running exactly that model on the test input, a cover, README,
  citations and the class names. It is validated with ``bioimageio.spec`` before it is moved into place.

Every artifact is written into a temporary path beside the destination and renamed into place
(`hpa_zoo.atomic`), so an interrupted export never leaves something that looks complete.
"""
from __future__ import annotations

import logging
import datetime
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from hpa_zoo.atomic import atomic_dir, atomic_path, atomic_write_text
from hpa_zoo.constants import CHANNELS, CLASS_NAMES
from hpa_zoo.errors import ConfigError, HpaZooError

#: ecosystem.md §5.2: the publication every HPA zoo model derives from.
PAPER_CITATION = {"text": "Ouyang W, Winsnes CF, Hjelmare M, et al. Analysis of the Human Protein Atlas Image "
                          "Classification competition. Nature Methods 16, 1254-1261 (2019).",
                  "doi": "10.1038/s41592-019-0658-6"}

log = logging.getLogger(__name__)
#: Output id of the exported probability model (bioimage.io output tensor id and Keras layer name).
PROBABILITIES = "probabilities"
#: Attachment holding the class names, one per line (as the bioimage.io HPA Bestfitting package, ecosystem.md §5.2).
LABELS_FILE = "hpa_labels.txt"


class ExportError(HpaZooError, RuntimeError):
    """An export tool failed or produced an artifact that does not validate."""


# ---------------------------------------------------------------------------------------------- helpers
def _refuse_foreign(path: Path, marker: str) -> None:
    """Refuse to replace an existing non-empty folder that is not an earlier export (has no ``marker``)."""
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / marker).exists())):
        raise ConfigError(f"{path} exists and is not an earlier export (no {marker}); refusing to overwrite it. "
                          f"Choose a new path or remove it")


def _resolve_model(model_or_preset, *, weights=None, input_shape=None):
    """A keras.Model from a model object, a registry name, a preset folder or a ``.keras`` file."""
    import keras

    if isinstance(model_or_preset, keras.Model):
        return model_or_preset
    from hpa_zoo.zoo.models_api import load

    return load(model_or_preset, weights=weights, input_shape=input_shape)


def probability_model(model, *, name: str | None = None):
    """``model`` followed by a float32 sigmoid: (B, H, W, C) [0, 255] -> probabilities (B, num_classes) float32.

    Only stock Keras layers are added (``Activation("sigmoid")`` named `PROBABILITIES`), so the saved ``.keras``
    file loads without hpa-zoo installed (bioimage.io runners call ``keras.saving.load_model``).
    """
    import keras

    probs = keras.layers.Activation("sigmoid", dtype="float32", name=PROBABILITIES)(model.outputs[0])
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # a single tensor: no structure warning
    return keras.Model(inputs, probs, name=name or f"{model.name}_probabilities")


# ---------------------------------------------------------------------------------------------- SavedModel / ONNX
def export_saved_model(model, path, *, verbose: bool = False) -> Path:
    """Export ``model`` as a TF SavedModel (for TF Serving) with ``model.export(format="tf_saved_model")``.

    Args:
        model: keras.Model, input (B, H, W, C) float32 [0, 255] -> logits (B, K) float32.
        path: the SavedModel folder to write (replaced if it is an earlier SavedModel).
        verbose: let Keras print the signature summary.

    Returns:
        Path of the folder. ``tf.saved_model.load(path).serve(x)`` gives the model's logits (B, K) float32.

    Raises:
        ConfigError: ``path`` is an existing folder that is not a SavedModel.
    """
    path = Path(path)
    _refuse_foreign(path, "saved_model.pb")
    with atomic_dir(path) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=verbose)
    return path


def export_onnx(model, path, *, opset_version: int | None = None, verbose: bool = False) -> Path:
    """Export ``model`` to a self-contained ONNX file.

    TensorFlow backend: the model's inference function is traced once, frozen with
    ``convert_variables_to_constants_v2`` and converted by ``tf2onnx`` (tested with 1.17.0). Freezing first matters:
    ``model.export(format="onnx")`` leaves the constants the zoo's ``Normalization`` layer captures as extra graph
    *inputs* (seen with keras 3.15 + tf2onnx 1.17), so onnxruntime would demand them at run time. Other backends
    use ``model.export(format="onnx")`` (torch: ``torch.onnx``).

    The ONNX graph has one input ``image`` (B, H, W, C) float32 [0, 255] (channels-last, as the Keras model;
    B dynamic) and one output ``logits`` (B, K) float32.

    Args:
        model: keras.Model as in `export_saved_model`.
        path: the ``.onnx`` file to write.
        opset_version: ONNX opset; None lets the converter choose.
        verbose: converter messages.

    Returns:
        Path of the file (``onnxruntime.InferenceSession(path)`` runs it).

    Raises:
        ConfigError: ``path`` does not end in ``.onnx``; the model has several inputs or outputs.
        ExportError: the converter is missing (the message says what to install) or failed.
    """
    import keras

    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"export_onnx: {path} must end in .onnx")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(f"export_onnx: {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
                          f"outputs; zoo models have one of each")
    with atomic_path(path) as tmp:
        if keras.backend.backend() != "tensorflow":
            kwargs = {} if opset_version is None else {"opset_version": int(opset_version)}
            model.export(str(tmp), format="onnx", verbose=verbose, **kwargs)
            return path
        try:
            import tf2onnx
        except ImportError as exc:
            raise ExportError("ONNX export on the TensorFlow backend needs tf2onnx: pip install 'tf2onnx==1.17.0' "
                              "(or pip install 'hpa-zoo[export]')") from exc
        import tensorflow as tf
        from keras.src.export.tf2onnx_lib import patch_tf2onnx  # Keras' own numpy>=2 shim for tf2onnx 1.17
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        patch_tf2onnx()
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")
        concrete = tf.function(lambda x: model(x, training=False), input_signature=[spec]).get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete)
        in_name, out_name = frozen.inputs[0].name, frozen.outputs[0].name
        try:
            proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=[in_name],
                                                      output_names=[out_name], opset=opset_version)
        except Exception as exc:
            raise ExportError(f"ONNX export of {model.name!r} failed in tf2onnx: {exc}") from exc
        _rename_io(proto, {in_name: "image", out_name: "logits"})
        tmp.write_bytes(proto.SerializeToString())
    return path


def _rename_io(proto, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs of an ONNX ModelProto in place (``image:0`` -> ``image``)."""
    graph = proto.graph
    for value in list(graph.input) + list(graph.output):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]


# ---------------------------------------------------------------------------------------------- bioimage.io
def _require_bioimageio_spec():
    try:
        import bioimageio.spec as spec
    except ImportError as exc:
        raise ExportError("bioimage.io export needs bioimageio.spec: pip install 'bioimageio.spec==0.5.14.3' "
                          "(or pip install 'hpa-zoo[bioimageio]')") from exc
    return spec


def _cover_png(path: Path, image_rgby: np.ndarray, probs: np.ndarray, class_names: Sequence[str], top: int = 6):
    """A 2:1 cover: the field of view rendered as RGB (left) and the top predicted classes as bars (right)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from hpa_zoo.infer.explain import rgby_to_rgb

    order = np.argsort(probs)[::-1][:top]
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    ax_img.imshow(rgby_to_rgb(image_rgby))
    ax_img.set_axis_off()
    ax_bar.barh(range(len(order))[::-1], probs[order], color="tab:green")
    ax_bar.set_yticks(range(len(order))[::-1], [class_names[i] for i in order], fontsize=9)
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel("probability")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _readme(name: str, description: str, class_names: Sequence[str], input_hw, keras_version: str,
            backend: str) -> str:
    classes = "\n".join(f"{i}. {c}" for i, c in enumerate(class_names))
    return f"""# {name}

{description}

## Input
One float32 tensor `image`, shape (batch, y, x, channel) with channels red (microtubules), green (protein of
interest), blue (nucleus), yellow (endoplasmic reticulum), raw intensities in [0, 255] (8-bit HPA images).
Normalisation is part of the network; the only declared preprocessing is a cast to float32. Test input size:
{input_hw[0]} x {input_hw[1]}.

## Output
`probabilities`: (batch, {len(class_names)}) float32 sigmoid probabilities, one per class (multi-label):

{classes}

Labels are usually `probability > threshold` per class; thresholds are not part of this package.

## Weights
Keras v3 (`.keras`), saved with Keras {keras_version} on the {backend} backend; exported with hpa-zoo.

# Validation
The test tensors were produced by running this exact model on the test input. The package validates with
`bioimageio.spec` (`load_description` -> `valid-format`) and `bioimageio test rdf.yaml`. The test image is one
real HPA field of view; no accuracy claim is made by this package. Published scores of the architecture are in
Ouyang et al. 2019 (doi:10.1038/s41592-019-0658-6).
"""


def export_bioimageio(model_or_preset, out_dir, *, name: str, class_names: Sequence[str] | None = None,
                      test_image=None, cover=None, description: str | None = None,
                      authors: Sequence[dict] | None = None, license: str = "MIT",
                      citations: Sequence[dict] | None = None, tags: Sequence[str] = (),
                      weights=None, input_shape=None, channel_names: Sequence[str] = CHANNELS,
                      validate: bool = True, verbose: bool = True) -> Path:
    """Write a bioimage.io model package (format 0.5.x, ``keras_v3`` weights) and validate it.

    The package folder holds ``rdf.yaml``, ``model.keras`` (the `probability_model` of the model),
    ``test_input.npy`` / ``test_output.npy`` (test tensors: the output is this model run on exactly the
    input, which only passes through the declared ``ensure_dtype: float32``), sample tensors for people
    (bioimage.io requires imageio-readable files, not .npy: ``sample_input.png``, the test input as an
    (H, W, C) uint8 PNG for C <= 4, and ``sample_output.tif``, the (1, K) float32 probabilities),
    ``cover.png``, ``README.md`` (with a "# Validation" section) and `LABELS_FILE`.

    Args:
        model_or_preset: keras.Model (logits), registry name, preset folder or ``.keras`` file (`hpa_zoo.load`).
        out_dir: the package folder (replaced if it is an earlier package; any other existing folder is refused).
        name: the model's display name.
        class_names: K names of the outputs; default the 28 HPA classes (`CLASS_NAMES`) when K = 28.
        test_image: (H, W, C) uint8/float [0, 255] image, or (1, H, W, C); default a mid-grey image of the
            model's input size (pass a real field of view for a meaningful package).
        cover: a PNG to use as cover; default a rendering of the test image with the top predicted classes.
        description: one paragraph; default from the registry row when known.
        authors: ``[{"name": ..., "affiliation": ..., "github_user": ...}]``; default the hpa-zoo contributors.
        license: SPDX id of the weights' licence.
        citations: ``[{"text": ..., "doi": ...}]``; Ouyang et al. 2019 is always included.
        tags: extra tags.
        weights, input_shape: passed to `hpa_zoo.load` for a name or preset.
        channel_names: input channel names (C).
        validate: run ``bioimageio.spec.load_description`` and require ``valid-format``.
        verbose: print progress.

    Returns:
        Path of ``rdf.yaml`` inside the package folder.

    Raises:
        ConfigError: wrong class name count, test image shape, or a foreign ``out_dir``.
        ExportError: bioimageio.spec missing, or the package does not validate (the message has the errors).
    """
    import keras

    spec_lib = _require_bioimageio_spec()
    from bioimageio.spec.model.v0_5 import ModelDescr

    out_dir = Path(out_dir)
    _refuse_foreign(out_dir, "rdf.yaml")
    model = _resolve_model(model_or_preset, weights=weights, input_shape=input_shape)
    n_out = int(model.output_shape[-1])
    n_in = int(model.input_shape[-1])
    if class_names is None:
        if n_out != len(CLASS_NAMES):
            raise ConfigError(f"the model has {n_out} outputs; pass class_names= with {n_out} names")
        class_names = CLASS_NAMES
    class_names = [str(c) for c in class_names]
    if len(class_names) != n_out:
        raise ConfigError(f"{len(class_names)} class_names for a model with {n_out} outputs")
    if len(channel_names) != n_in:
        raise ConfigError(f"{len(channel_names)} channel_names for a model with {n_in} input channels")

    x = _test_tensor(test_image, model)
    prob_model = probability_model(model)
    y = np.asarray(prob_model.predict(x, verbose=0), dtype=np.float32)
    backend = keras.backend.backend()
    backend_version = _backend_version(backend)
    spec_row = _registry_row(model)
    description = description or (spec_row.description if spec_row else f"{model.name}: HPA subcellular "
                                  f"location classifier (multi-label, {n_out} classes).")
    cites = [PAPER_CITATION] + [dict(c) for c in (citations or []) if c.get("doi") != PAPER_CITATION["doi"]]

    with atomic_dir(out_dir) as pkg:
        if verbose:
            log.info("export_bioimageio: saving model.keras (%s parameters)", f"{prob_model.count_params():,}")
        with atomic_path(pkg / "model.keras") as tmp:
            prob_model.save(tmp)
        for stem, arr in (("test_input", x), ("test_output", y)):
            with atomic_path(pkg / f"{stem}.npy") as tmp:
                np.save(tmp, arr)
        _write_samples(pkg, x, y)
        atomic_write_text(pkg / LABELS_FILE, "\n".join(class_names) + "\n")
        if cover is None:
            _cover_png(pkg / "cover.png", x[0], y[0], class_names)
        else:
            shutil.copyfile(cover, pkg / "cover.png")
        atomic_write_text(pkg / "README.md", _readme(name, description, class_names, x.shape[1:3],
                                                     keras.__version__, backend))
        rdf = {
            "type": "model",
            "format_version": str(ModelDescr.implemented_format_version),
            "name": name,
            "description": description,
            "authors": list(authors or [{"name": "hpa-zoo contributors"}]),
            "cite": cites,
            "license": license,
            "documentation": {"source": "README.md"},  # ecosystem.md §5.1: a plain string is rejected
            "covers": [{"source": "cover.png"}],
            "tags": sorted({"human-protein-atlas", "classification", "fluorescence-light-microscopy", "keras",
                            "2d", "cells", *tags}),
            "attachments": [{"source": LABELS_FILE}],
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "inputs": [{
                "id": "image",
                "description": "RGBY field of view, raw intensities [0, 255], channels last",
                "axes": [{"type": "batch"},
                         {"type": "space", "id": "y", "size": int(x.shape[1])},
                         {"type": "space", "id": "x", "size": int(x.shape[2])},
                         {"type": "channel", "channel_names": [str(c) for c in channel_names]}],
                "test_tensor": {"source": "test_input.npy"},
                "sample_tensor": {"source": "sample_input.png"},
                "data": {"type": "float32", "range": [0.0, 255.0]},
                # the zoo models normalise inside the network (ARCHITECTURE.md conventions): only a cast
                "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
            }],
            "outputs": [{
                "id": PROBABILITIES,
                "description": "sigmoid probability per class (multi-label)",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": class_names}],
                "test_tensor": {"source": "test_output.npy"},
                "sample_tensor": {"source": "sample_output.tif"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }],
            "weights": {"keras_v3": {"source": "model.keras", "keras_version": keras.__version__,
                                     "backend": [backend, backend_version]}},
        }
        if spec_row is not None:
            rdf["config"] = {"hpa_zoo": {"registry_name": spec_row.name, "team": spec_row.team}}
        with atomic_path(pkg / "rdf.yaml") as tmp:
            spec_lib.save_bioimageio_yaml_only(rdf, tmp)
        if validate:
            if verbose:
                log.info("export_bioimageio: validating with bioimageio.spec ...")
            check_bioimageio(pkg / "rdf.yaml")
    if verbose:
        log.info("export_bioimageio: wrote %s", out_dir / "rdf.yaml")
    return out_dir / "rdf.yaml"


def _write_samples(pkg: Path, x: np.ndarray, y: np.ndarray) -> None:
    """sample_input.png ((H, W, C) uint8, channel order kept) and sample_output.tif ((1, K) float32), via imageio
    (a bioimageio.spec dependency; the validator reads them with imageio too)."""
    import imageio.v3 as iio

    if x.shape[-1] > 4:
        raise ConfigError(f"sample_input.png holds at most 4 channels; the model takes {x.shape[-1]}")
    with atomic_path(pkg / "sample_input.png") as tmp:
        iio.imwrite(tmp, np.clip(np.round(x[0]), 0, 255).astype(np.uint8), extension=".png")
    with atomic_path(pkg / "sample_output.tif") as tmp:
        iio.imwrite(tmp, y.astype(np.float32), extension=".tif")


def check_bioimageio(rdf_path) -> str:
    """Validate a bioimage.io package with ``bioimageio.spec.load_description`` (format + file hashes).

    Args:
        rdf_path: the package's ``rdf.yaml``.

    Returns:
        the validation status, ``"valid-format"``.

    Raises:
        ExportError: any other status; the message carries the validation summary.
    """
    spec_lib = _require_bioimageio_spec()
    descr = spec_lib.load_description(Path(rdf_path), perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status != "valid-format":
        errors = [f"{'.'.join(map(str, e.loc)) or '<root>'}: {e.msg}" for d in summary.details for e in d.errors]
        raise ExportError(f"{rdf_path} does not validate ({summary.status}):\n  " + "\n  ".join(errors or [str(summary)]))
    return summary.status


def _test_tensor(test_image, model) -> np.ndarray:
    """(1, H, W, C) float32 test input in [0, 255]."""
    h, w, c = (_dim_or(d, 64) for d in model.input_shape[1:])
    if test_image is None:
        return np.full((1, h, w, c), 127.0, np.float32)
    x = np.asarray(test_image, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] != c:
        raise ConfigError(f"test_image must be (H, W, {c}) or (1, H, W, {c}); got {np.shape(test_image)}")
    fixed = [(i, d) for i, d in ((1, model.input_shape[1]), (2, model.input_shape[2])) if d is not None]
    for i, d in fixed:
        if x.shape[i] != d:
            raise ConfigError(f"test_image is {x.shape[1]}x{x.shape[2]} but the model takes {model.input_shape[1]}x"
                              f"{model.input_shape[2]}; resize it (cv2.resize) or load the model with that size")
    return np.ascontiguousarray(x)


def _dim_or(d, default: int) -> int:
    return default if d is None else int(d)


def _backend_version(backend: str) -> str:
    import importlib

    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return importlib.import_module(module).__version__.split("+")[0]


def _registry_row(model):
    from hpa_zoo.errors import UnknownModelError
    from hpa_zoo.registry import get_spec

    try:
        return get_spec(model.name)
    except UnknownModelError:
        return None
