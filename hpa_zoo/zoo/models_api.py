"""Loading models by name, preset directory or ``.keras`` file; saving presets; feature extractors.

``hpa_zoo.load(x)`` accepts:

* a **registry name** (``"team1_densenet121_1024"``): the row's builder, with ``weights`` None (random),
  ``"imagenet"`` (3-channel ImageNet weights transplanted into the RGBY stem), a named published set such as
  ``"hpa"`` (downloaded with sha256 verification by `hpa_zoo.zoo.weights`, ONNX converted once by
  `hpa_zoo.zoo.onnx_convert` and cached next to the download as ``.weights.h5``), or a file (``.weights.h5``, or an
  ``.onnx`` export of the same architecture);
* a **preset directory** in the keras-hub layout (ecosystem.md §2.2), written by `save_preset`::

      config.json        {"format": "hpa_zoo.preset", "model_name": ..., "build_config": {num_classes, input_shape}}
      model.weights.h5   the weights
      metadata.json      class names, thresholds, normalisation, training data, recipe, keras version, date ...

* a ``.keras`` file (``model.save("x.keras")``).

Every preset hpa-zoo writes loads back as the model it was saved from: RGBY or other channels (fine-tuned on other
stains), 28 or other classes, multi- or single-label, Team 3's training model with its auxiliary output.
`preset_info` reads what it says about itself (classes, thresholds, stains, normalisation, pixel size).

Every model takes raw [0, 255] images (B, H, W, C) float32 and returns float32 logits (B, num_classes).
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from hpa_zoo.atomic import atomic_dir, ensure_free_space, model_bytes, save_network_weights
from hpa_zoo.constants import CLASS_NAMES, NUM_CLASSES
from hpa_zoo.errors import ConfigError, WeightsError
from hpa_zoo.registry import get_spec, pixel_size_of
from hpa_zoo.remote import is_remote

PRESET_FORMAT = "hpa_zoo.preset"
PRESET_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"


# ---------------------------------------------------------------------------------------------- load
def load(name_or_path, weights=None, num_classes: int | None = None, input_shape=None, *, local_path=None):
    """A Keras model from a registry name, a preset directory or a ``.keras`` file.

    Args:
        name_or_path: registry name, preset directory, or ``.keras`` file; a preset folder or ``.keras`` file may
            be a URL (``gs://``, ``s3://``, ``memory://``...), copied first into the hpa-zoo cache
            (`hpa_zoo.zoo.weights.stage_remote`: locked, atomic, reused while the remote is unchanged).
        weights: for a registry name: None, ``"imagenet"``, a published set of the row (``"hpa"``), or a path to a
            ``.weights.h5`` / ``.onnx`` file. For a preset: None (its own weights). Not used for ``.keras``.
        num_classes: logits per image; default the preset's own count (28 for a registry name). With published or
            preset weights trained for another count, the classifier (registry row ``classifier``) is replaced by
            a fresh one of this size (fine-tuning).
        input_shape: (H, W, C); default the row's ``(input_size, input_size, channels)`` or the preset's shape.
            Convolutional weights do not depend on H, W, so any size >= the backbone's minimum works.
        local_path: with a published set (``weights="hpa"``): a copy of the file you already have (verified
            against the registry sha256 when it has one; the only way to use a set without one).

    Returns:
        keras.Model: (B, H, W, C) float32 in [0, 255] -> logits (B, num_classes) float32. Its ``name`` is the
        registry name (used by `save_preset` and `feature_extractor`).

    Raises:
        UnknownModelError: not a registry name, preset directory or ``.keras`` file (suggests close names).
        WeightsError: unknown or unusable weights (says which are available).
    """
    if is_remote(name_or_path):
        from hpa_zoo.zoo.weights import stage_remote

        name_or_path = stage_remote(name_or_path)
    path = Path(os.fspath(name_or_path))
    if path.is_dir():
        if weights is not None:
            raise ConfigError(f"load({str(path)!r}, weights={weights!r}): a preset brings its own weights; "
                              f"pass weights=None, or load the registry name with weights=...")
        return _load_preset(path, num_classes=num_classes, input_shape=input_shape)
    if path.suffix == ".keras" and path.is_file():
        import keras

        _import_custom_objects()
        return keras.saving.load_model(path, compile=False)
    if path.suffix == ".keras" or (os.sep in str(name_or_path) and not path.exists()):
        raise ConfigError(f"{str(path)!r} does not exist; pass a registry name (hpa_zoo.list_models()), a preset "
                          f"directory or an existing .keras file")
    return _load_registered(str(name_or_path), weights, NUM_CLASSES if num_classes is None else num_classes,
                            input_shape, local_path)


def _load_registered(name: str, weights, num_classes: int, input_shape, local_path):
    spec = get_spec(name)  # UnknownModelError with suggestions
    shape = tuple(input_shape) if input_shape is not None else (spec.input_size, spec.input_size, spec.num_channels)
    build = spec.build_fn()
    if weights is None or weights == "imagenet":
        return build(num_classes=num_classes, input_shape=shape, weights=weights, **spec.builder_kwargs)
    if str(weights).endswith(".weights.h5"):
        return _build_with_weights_file(spec, build, Path(os.fspath(weights)), shape, num_classes)
    if str(weights).endswith(".onnx"):  # a local export of this architecture (e.g. the 512 model's release file)
        return _with_onnx(spec, Path(os.fspath(weights)), shape, num_classes, cache=None)[0]
    wspec = spec.weights_spec(str(weights))
    if wspec is None:
        sets = ", ".join(repr(w.name) for w in spec.weights) or "none"
        raise WeightsError(f"model {name!r} has no weights {weights!r}; use None, 'imagenet', a published set "
                           f"({sets}) or a path to a .weights.h5/.onnx file")
    from hpa_zoo.zoo import weights as weights_mod

    file = Path(weights_mod.fetch(wspec, local_path=local_path))
    if wspec.format == "onnx":
        return _with_onnx(spec, file, shape, num_classes, cache=converted_cache_path(file, spec.name))[0]
    if wspec.format == "keras_weights_h5":
        model = build(num_classes=NUM_CLASSES, input_shape=shape, weights=str(file), **spec.builder_kwargs)
        return _fit_classes(model, spec, num_classes)
    raise WeightsError(f"weights {wspec.name!r} of {name!r} are in format {wspec.format!r}, which hpa-zoo cannot "
                       f"load yet (onnx and keras_weights_h5 are supported)")


def _build_with_weights_file(spec, build, path: Path, shape, num_classes: int):
    """``build(weights=path)``, with Keras' loading errors turned into a `WeightsError` naming the file and fix."""
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist; pass the .weights.h5 written by "
                           f"model.save_weights / hpa-zoo train (preset/model.weights.h5)")
    try:
        return build(num_classes=num_classes, input_shape=shape, weights=str(path), **spec.builder_kwargs)
    except (ValueError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: does not match model {spec.name!r} with num_classes={num_classes}, input_shape={shape} "
            f"({first}). It was saved from another model, or with another class count / channel count: load "
            f"it with the registry name and num_classes it was trained with (a preset folder records both), "
            f"then replace the head (hpa_zoo.load(preset, num_classes=...))") from exc


def build_from_onnx(name: str, onnx_path, *, input_shape=None, num_classes: int = NUM_CLASSES,
                    cache=None):
    """Registry model ``name`` with its weights converted from an ONNX export of the same architecture.

    Args:
        name: registry row (e.g. ``"team1_densenet121_1024"``).
        onnx_path: the ONNX file (the published package, or a faithful re-export).
        input_shape: (H, W, C) of the Keras model; default the row's.
        num_classes: logits; another count than the file's gets a fresh head (fine-tuning).
        cache: a ``.weights.h5`` path to reuse / write (see `_with_onnx`); None converts every time.

    Returns:
        (keras.Model (B, H, W, C) [0, 255] -> logits (B, num_classes) float32, the
        `hpa_zoo.zoo.onnx_convert.ConversionCheck` or None when the weights came from the cache).

    Raises:
        WeightsError: a missing file or a conversion that the numeric check refuses (nothing is cached then).
    """
    spec = get_spec(name)
    shape = tuple(input_shape) if input_shape is not None else (spec.input_size, spec.input_size, spec.num_channels)
    return _with_onnx(spec, Path(os.fspath(onnx_path)), shape, num_classes,
                      cache=Path(cache) if cache is not None else None)


def converted_cache_path(onnx_file: Path, name: str) -> Path:
    """Where the converted weights of ``onnx_file`` for registry model ``name`` are cached (next to it)."""
    return onnx_file.parent / f"{onnx_file.stem}.{name}.weights.h5"


def _with_onnx(spec, onnx_path: Path, shape, num_classes: int, *, cache: Path | None):
    """Build ``spec`` with the published class count and fill it from an ONNX file, or from its converted cache;
    returns (model, ConversionCheck or None when read from the cache).

    The conversion is accepted only when its numeric check passes (`hpa_zoo.zoo.onnx_convert`); only then are the
    weights cached, with the measured differences in ``<cache stem>.check.json`` beside them. A cache without
    that record, or older than the ONNX file, is converted (and checked) again.
    """
    from hpa_zoo.atomic import atomic_write_text, save_weights_atomic

    model = spec.build_fn()(num_classes=NUM_CLASSES, input_shape=shape, weights=None, **spec.builder_kwargs)
    record = conversion_record_path(cache) if cache is not None else None
    if not onnx_path.is_file():
        raise WeightsError(f"ONNX weights file {str(onnx_path)!r} does not exist")
    if (cache is not None and cache.is_file() and record.is_file()
            and min(cache.stat().st_mtime, record.stat().st_mtime) >= onnx_path.stat().st_mtime):
        model.load_weights(cache)
        return _fit_classes(model, spec, num_classes), None
    from hpa_zoo.zoo.onnx_convert import onnx_to_keras_weights

    check = onnx_to_keras_weights(onnx_path, model)  # WeightsError (nothing cached) unless the numbers agree
    if cache is not None:
        save_weights_atomic(model, cache, hint="set HPA_ZOO_CACHE to a folder with room")
        details = check.as_dict() if check is not None else {"passed": True}
        atomic_write_text(record, json.dumps({**details, "model_name": spec.name}, indent=2))
    return _fit_classes(model, spec, num_classes), check


def conversion_record_path(cache: Path) -> Path:
    """The ``.check.json`` beside a converted-weights cache ``X.weights.h5``: ``X.check.json``."""
    name = cache.name[:-len(".weights.h5")] if cache.name.endswith(".weights.h5") else cache.stem
    return cache.with_name(f"{name}.check.json")


def _fit_classes(model, spec, num_classes: int):
    out = model.output
    current = out["logits"].shape[-1] if isinstance(out, dict) else model.output_shape[-1]
    if int(current) == int(num_classes):
        return model
    from zoo_models.surgery import replace_head

    return replace_head(model, num_classes, classifier=spec.classifier or "logits")


def _import_custom_objects() -> None:
    """Import the modules that register hpa-zoo's Keras serialisables (``hpa_zoo>...``)."""
    import importlib

    from hpa_zoo.registry import ROWS

    for module in sorted({row.builder.partition(":")[0] for row in ROWS}):
        importlib.import_module(module)


# ---------------------------------------------------------------------------------------------- presets
def save_preset(model, directory, *, model_name: str | None = None, build_config: dict | None = None,
                metadata: dict | None = None) -> Path:
    """Save ``model`` as a preset directory (keras-hub layout), atomically: written into a temporary folder beside
    ``directory`` and renamed into place, so a crash never leaves a half-written preset.

    Args:
        model: a keras.Model built by a registry builder (input (B, H, W, C), logits (B, num_classes)).
        directory: the preset folder; an existing preset there is replaced, any other existing folder is refused.
        model_name: registry name; default ``metadata["model_name"]``, else ``model.name`` if registered.
        build_config: builder kwargs to store; default ``{"num_classes", "input_shape"}`` read off the model.
        metadata: extra JSON-serialisable entries for ``metadata.json`` (thresholds, recipe, data, fold...);
            they override the defaults (class names, normalisation, keras version, date, parameter count).

    Returns:
        Path of the preset directory.

    Raises:
        ConfigError: no registry name can be determined, ``directory`` is a non-preset folder, or a ``metadata``
            value is not JSON-serialisable (the message names its key; nothing is written).
    """
    import keras

    directory = Path(directory)
    meta_in = dict(metadata or {})
    name = _preset_model_name(model, model_name or meta_in.get("model_name"))
    if directory.exists() and not (directory / CONFIG_FILE).is_file():
        raise ConfigError(f"{directory} exists and is not an hpa-zoo preset; refusing to overwrite it. Choose a new "
                          f"folder or remove it")
    build = dict(build_config) if build_config is not None else _build_config_of(model)
    config = {"format": PRESET_FORMAT, "format_version": PRESET_FORMAT_VERSION, "model_name": name,
              "builder": get_spec(name).builder, "build_config": build}
    meta = {
        "model_name": name,
        "class_names": list(CLASS_NAMES) if build.get("num_classes", NUM_CLASSES) == NUM_CLASSES else None,
        "thresholds": None,
        "normalization": _normalization_of(model),
        "training_data": None,
        "recipe": None,
        "keras_version": keras.__version__,
        "parameter_count": int(model.count_params()),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),  # keras-hub's format
    }
    meta.update(meta_in)
    meta_text = _metadata_json(meta)

    ensure_free_space(directory, model_bytes(model))  # h5py crashes on a disk that fills up mid-write
    with atomic_dir(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        (tmp / METADATA_FILE).write_text(meta_text)
        save_network_weights(model, tmp / WEIGHTS_FILE)  # the layers only: no optimizer state in a preset
    return directory


def load_metadata(preset_dir) -> dict:
    """The ``metadata.json`` of a preset as a dict (``{}`` if the file is absent)."""
    path = Path(preset_dir) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _load_preset(directory: Path, *, num_classes: int | None, input_shape):
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise ConfigError(f"{directory} is not an hpa-zoo preset (no {CONFIG_FILE}); pass a folder written by "
                          f"hpa_zoo.save_preset / `hpa-zoo train`, a registry name or a .keras file")
    config = _read_json(cfg_path)
    if config.get("format") != PRESET_FORMAT:
        raise ConfigError(f"{cfg_path}: format {config.get('format')!r} is not {PRESET_FORMAT!r}")
    weights_file = directory / WEIGHTS_FILE
    if not weights_file.is_file():
        raise WeightsError(f"{directory}: no {WEIGHTS_FILE}; the preset is incomplete (an interrupted save?). "
                           f"Save it again")
    spec = get_spec(config.get("model_name", ""))
    meta = load_metadata(directory)
    build = dict(config.get("build_config", {}))
    if input_shape is not None:
        build["input_shape"] = tuple(input_shape)
    shape = tuple(build.get("input_shape") or (spec.input_size, spec.input_size, spec.num_channels))
    build["input_shape"] = shape
    model = _build_preset_model(spec, build, meta, directory)
    try:
        model.load_weights(weights_file)
    except Exception as exc:
        raise WeightsError(f"{weights_file} does not fit {spec.name} built with {build}: {exc}") from exc
    return _fit_classes(model, spec, num_classes) if num_classes is not None else model


def _build_preset_model(spec, build: dict, meta: dict, directory: Path):
    """The registry builder's model for a preset's build config; for a preset whose input channels are not the
    row's (fine-tuned on other stains), the row's model put through the same channel surgery as fine-tuning
    (`zoo_models.surgery.adapt_channels`) with the normalisation the preset recorded."""
    registry_channels = [{"R": "red", "G": "green", "B": "blue", "Y": "yellow"}[c] for c in spec.channels]
    stains = meta.get("stains")
    channels = int(build["input_shape"][-1])
    if stains is None and channels != len(registry_channels):
        raise ConfigError(f"{directory}: the preset takes {channels} channels but its metadata records no "
                          f"'stains'; hpa-zoo cannot tell which stain each channel is (re-save it with "
                          f"metadata={{'stains': [...]}})")
    if stains is None or list(stains) == registry_channels:
        return spec.build_fn()(weights=None, **{**spec.builder_kwargs, **build})
    from zoo_models.surgery import adapt_channels

    if len(stains) != channels:
        raise ConfigError(f"{directory}: metadata 'stains' {stains} does not fit the {channels}-channel input")
    h, w = build["input_shape"][:2]
    base = spec.build_fn()(weights=None, **{**spec.builder_kwargs, **build,
                                            "input_shape": (h, w, len(registry_channels))})
    norm = meta.get("normalization") or {}
    stats = None
    if norm.get("mean") is not None:
        stats = [(255.0 * m, 255.0 * sd) for m, sd in zip(norm["mean"], norm["std"])]
    return adapt_channels(base, stains, source_stains=registry_channels, first_conv=spec.first_conv,
                          norm_stats=stats)


def preset_info(preset_dir) -> dict:
    """What a preset says about itself, without building the model.

    Args:
        preset_dir: a folder written by `save_preset` (``hpa-zoo train`` / ``finetune``); a URL is staged first,
            as in `load`.

    Returns:
        dict with ``model_name``, ``num_classes``, ``input_shape`` ([H, W, C]), ``class_names`` (list of str, or
        None for the 28 HPA classes), ``thresholds`` (list of float or None), ``activation`` (``"sigmoid"`` or
        ``"softmax"``), ``stains`` (HPA stain per input channel, None = unknown), ``channels`` (the user's channel
        names), ``normalization`` (mean/std in [0, 1] units, inside the model), ``pixel_size_um`` (µm per pixel
        of the training images, or None), ``threshold_fallbacks`` and the rest of ``metadata.json`` under
        ``metadata``.

    Raises:
        ConfigError: not a preset folder, or an unreadable config/metadata file (names it).
    """
    if is_remote(preset_dir):
        from hpa_zoo.zoo.weights import stage_remote

        preset_dir = stage_remote(preset_dir)
    directory = Path(preset_dir)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise ConfigError(f"{directory} is not an hpa-zoo preset (no {CONFIG_FILE})")
    config = _read_json(cfg_path)
    meta = load_metadata(directory)
    build = config.get("build_config", {})
    spec = get_spec(config.get("model_name", meta.get("model_name", "")))
    num_classes = int(build.get("num_classes", NUM_CLASSES))
    names = meta.get("class_names") or (list(CLASS_NAMES) if num_classes == NUM_CLASSES else None)
    return {
        "model_name": spec.name,
        "num_classes": num_classes,
        "input_shape": list(build.get("input_shape") or (spec.input_size, spec.input_size, spec.num_channels)),
        "class_names": names,
        "thresholds": meta.get("thresholds"),
        "threshold_fallbacks": meta.get("threshold_fallbacks_by_class") or {},
        "activation": meta.get("activation") or ("sigmoid" if meta.get("multi_label", True) else "softmax"),
        "stains": meta.get("stains") or [{"R": "red", "G": "green", "B": "blue", "Y": "yellow"}[c]
                                         for c in spec.channels],
        "channels": meta.get("channels"),
        "normalization": meta.get("normalization"),
        "pixel_size_um": (meta["pixel_size_um"] if "pixel_size_um" in meta else
                          pixel_size_of(int((meta.get("recipe") or {}).get("image_size")
                                            or (build.get("input_shape") or [spec.input_size])[0]))),
        "metadata": meta,
    }


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); the preset is damaged, save it again") from exc


def _build_config_of(model) -> dict:
    """``{"num_classes", "input_shape"}`` read off a model (+ ``with_aux`` for a Team 3 training model whose
    outputs are ``{"logits", "aux_logits"}``)."""
    out = model.output
    if isinstance(out, dict):
        if "logits" not in out:
            raise ConfigError(f"model {model.name!r} has outputs {sorted(out)}; a preset needs a 'logits' output")
        build = {"num_classes": int(out["logits"].shape[-1]), "with_aux": "aux_logits" in out}
    else:
        build = {"num_classes": int(model.output_shape[-1])}
    build["input_shape"] = [_dim(d) for d in model.input_shape[1:]]
    return build


def _preset_model_name(model, given: str | None) -> str:
    """The registry name a preset records: ``given`` (must be registered) or ``model.name``."""
    from hpa_zoo.errors import UnknownModelError

    if given:
        return get_spec(given).name  # UnknownModelError with suggestions
    try:
        return get_spec(model.name).name
    except UnknownModelError as exc:
        raise ConfigError(f"cannot tell which registry model {model.name!r} is; pass save_preset(..., "
                          f"model_name=...) (models from hpa_zoo.load are named after their registry row)") from exc


def _normalization_of(model) -> dict | None:
    """Mean/std (in [0, 1] units) of the model's ``input_norm`` layer, if it has one."""
    import numpy as np

    try:
        layer = model.get_layer("input_norm")
    except ValueError:
        return None
    cfg = layer.get_config()
    if cfg.get("mean") is None:
        return None
    mean = np.ravel(np.asarray(cfg["mean"], np.float64)) / 255.0
    std = np.sqrt(np.ravel(np.asarray(cfg["variance"], np.float64))) / 255.0
    return {"inside_model": True, "input_range": [0, 255], "mean": mean.round(6).tolist(),
            "std": std.round(6).tolist(), "formula": "(x / 255 - mean) / std"}


def _dim(d):
    return None if d is None else int(d)


def _metadata_json(meta: dict[str, Any]) -> str:
    """``metadata.json``'s text; NumPy values and paths become JSON, anything else is refused naming its key."""
    try:
        return json.dumps(meta, indent=2, default=_json_default)
    except (TypeError, ValueError):
        pass
    for key, value in meta.items():
        try:
            json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"save_preset: metadata[{key!r}] cannot be written to {METADATA_FILE}: {exc}. Pass "
                              f"JSON values (numbers, strings, lists, dicts, NumPy arrays, paths) or convert it "
                              f"first") from None
    raise ConfigError(f"save_preset: the metadata cannot be written to {METADATA_FILE} (its keys must be strings); "
                      f"keys: {sorted(map(repr, meta))}")


def _json_default(obj: Any):
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata value {obj!r} ({type(obj).__name__}) is not JSON-serialisable")


# ---------------------------------------------------------------------------------------------- features
def feature_extractor(model, *, layer: str | None = None):
    """A model sharing ``model``'s layers whose output is the registry row's ``feature_layer``.

    Args:
        model: a model from `load` (its name is the registry name), or any functional model with ``layer`` given.
        layer: layer name; default the row's ``feature_layer`` (Team 1: ``head_dropout2``, 1024-d).

    Returns:
        keras.Model: (B, H, W, C) [0, 255] -> features (B, D) in the model's compute dtype (float32 unless mixed
        precision). Dropout is inactive at inference.
    """
    import keras

    if layer is None:
        from hpa_zoo.errors import UnknownModelError

        try:
            layer = get_spec(model.name).feature_layer
        except UnknownModelError:
            layer = None
        if not layer:
            raise ConfigError(f"model {model.name!r} is not named after a registry row with a feature_layer; pass "
                              f"feature_extractor(model, layer=...)")
    try:
        out = model.get_layer(layer).output
    except ValueError as exc:
        raise ConfigError(f"model {model.name!r} has no layer {layer!r}") from exc
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # a lone tensor: no structure warning
    return keras.Model(inputs, out, name=f"{model.name}_features")
