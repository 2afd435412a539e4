"""Fine-tuning a zoo model on the user's own images, classes and stains.

``finetune(base, data_csv, images_dir, ...)``:

1. **Model**: any zoo model — a registry name (``weights`` None / ``"imagenet"`` / ``"hpa"`` / a file) or a preset
   folder — loaded at the user's image size.
2. **Channels** (`adapt_channels`): when the user's stains differ from the model's (3 stains, nucleus + protein
   only, an extra stain...), the model is rebuilt with the new channel count (``keras.models.clone_model`` with a
   new input) and every weight is transplanted by `zoo_models.surgery`. Stem init, per user channel: a channel that
   maps to a stain the model knows takes that stain's filter (surgery rule ``"select"``); an unknown stain takes the
   mean of the model's stem filters (surgery rule ``"mean"``). The normalisation layer inside the model
   (``input_norm``) keeps the known stains' mean/std and uses the training images' own statistics for unknown
   stains. Stain names map to the HPA stains through `STAIN_ALIASES` (``nucleus`` -> blue, ``protein`` -> green,
   ``microtubules`` -> red, ``er`` -> yellow...) or an explicit ``channel_map``.
3. **Head**: `zoo_models.surgery.replace_head` puts a fresh classifier (registry ``classifier``) for the user's
   K classes; multi-label: sigmoid / binary cross-entropy, single-label: softmax / categorical cross-entropy
   (the model still outputs float32 logits).
4. **Data**: a CSV with ``labels`` (class names separated by ``;``) and either ``filename`` (one multi-channel
   PNG/TIFF, channels in ``channels`` order) or ``filenames`` (one file per channel, ``;``-separated, in
   ``channels`` order), paths relative to ``images_dir``; 8- or 16-bit, any size (resized to ``image_size``;
   16-bit is scaled by 255/65535 as `hpa_zoo.data.images.to_uint8`). Images are decoded once into memory
   (N·S·S·C bytes) and fed by tf.data (random D4 augmentation) — no Python per example in the pipeline.
5. **Training**: a seeded validation split (``val_fraction``); the backbone is frozen (only the classifier trains)
   for ``freeze_epochs``, then everything is unfrozen and recompiled with a 10x smaller learning rate; the best
   epoch by ``val_loss`` is kept.
6. **Thresholds** (multi-label): per-class F1-optimal thresholds fitted on the validation predictions
   (`hpa_zoo.infer.thresholds`, rule ``"f1_optimal"``). A class with fewer than 5 validation positives, or whose fitted
   threshold is extreme (<= 0.01 / >= 0.99), gets `DEFAULT_THRESHOLD` instead (`hpa_zoo.infer.thresholds.check_evidence`)
   and the metadata says which and why (``threshold_fallbacks_by_class``); saved in the preset with the classes,
   channels and history
   (`hpa_zoo.zoo.models_api.save_preset`).

Every preset written here loads with ``hpa_zoo.load(preset_dir)``: one with other channels is rebuilt from its
registry row by the same channel surgery, with the normalisation its metadata recorded, before its weights are
read. It also holds ``model.keras`` (the whole model) for tools that read Keras files.
"""
from __future__ import annotations

import logging
import json
import os
import signal
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hpa_zoo.atomic import atomic_path, ensure_free_space, load_network_weights, model_bytes
from hpa_zoo.checks import open_fraction, positive_float, positive_int, reports_out_of_memory
from hpa_zoo.constants import CHANNELS
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data.images import fit_to_model
from hpa_zoo.interrupt import Interrupted, release_frames, stop_at_step_boundary
from hpa_zoo.remote import is_remote
from hpa_zoo.runlock import holds_run_lock
from zoo_models.surgery import adapt_channels  # the graph edit lives in the one surgery module
# moved to the data layer; re-exported here for callers of hpa_zoo.train.finetune
from hpa_zoo.data.user_images import (FILE_SEPARATOR, LABEL_SEPARATOR, STAIN_ALIASES, map_stains,  # noqa: F401
                                      read_image, read_table)

log = logging.getLogger(__name__)

PRESET_SUBDIR = "preset"
#: Threshold of a class without positive validation images (its F1-optimal threshold is undefined).
DEFAULT_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------- channels


# ---------------------------------------------------------------------------------------------- data


def encode_labels(label_lists: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """(N, K) float32 multi-hot (one-hot for single labels) of class-name lists, K = len(classes)."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(label_lists), len(classes)), np.float32)
    for n, names in enumerate(label_lists):
        y[n, [index[c] for c in names]] = 1.0
    return y


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (train, val) index split; at least one image in each part. int64 arrays."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction}: use a fraction in (0, 1), e.g. 0.2")
    if n < 2:
        raise HpaDataError(f"{n} image(s): fine-tuning needs at least 2 (one to train, one to validate)")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(min(max(1, round(n * val_fraction)), n - 1))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ---------------------------------------------------------------------------------------------- model
def _load_base(base, weights, image_size: int):
    """(model with the base's channels, registry spec, its stains) for a registry name or a preset folder."""
    from hpa_zoo.zoo.models_api import CONFIG_FILE, load, load_metadata
    from hpa_zoo.registry import get_spec

    path = Path(os.fspath(base))
    if path.is_dir():
        meta = load_metadata(path)
        config = json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).is_file() else {}
        spec = get_spec(config.get("model_name") or meta.get("model_name", ""))
        stains = list(meta.get("stains") or CHANNELS)
        if weights is not None:
            raise ConfigError(f"finetune({str(path)!r}, weights={weights!r}): a preset brings its own weights")
        if (path / "model.keras").is_file():  # a fine-tuned preset with other channels (module docstring)
            model = load(path / "model.keras")
            if tuple(model.input_shape[1:3]) != (image_size, image_size):
                raise ConfigError(f"{path} was fine-tuned at {model.input_shape[1]} px; pass image_size="
                                  f"{model.input_shape[1]}")
            return model, spec, stains
        return load(path, input_shape=(image_size, image_size, len(stains))), spec, stains
    spec = get_spec(str(base))
    shape = (image_size, image_size, spec.num_channels)
    return load(spec.name, weights=weights, input_shape=shape), spec, registry_stains(spec)


def _base_pixel_size(base) -> float | None:
    """µm per pixel the base model was trained at: a preset's record, or the registry row's."""
    from hpa_zoo.zoo.models_api import preset_info
    from hpa_zoo.registry import get_spec

    path = Path(os.fspath(base))
    return preset_info(path)["pixel_size_um"] if path.is_dir() else get_spec(str(base)).pixel_size_um


def registry_stains(spec) -> list[str]:
    """The HPA stain of each input channel of a registry row (``"RGBY"`` -> red, green, blue, yellow)."""
    names = {"R": "red", "G": "green", "B": "blue", "Y": "yellow"}
    return [names[c] for c in spec.channels]


def _set_backbone_trainable(model, trainable: bool, classifier: str) -> None:
    """Freeze (or unfreeze) every layer but the classifier."""
    for layer in model.layers:
        layer.trainable = trainable or layer.name == classifier


def _compile(model, multi_label: bool, lr: float) -> None:
    import keras

    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if multi_label
            else keras.losses.CategoricalCrossentropy(from_logits=True))
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, jit_compile=False)


# ---------------------------------------------------------------------------------------------- finetune
def _read_images(table, data_csv, images_dir, n_channels: int, image_size: int, pixel_size_um, model_pixel,
                 say) -> np.ndarray:
    """Every CSV row's image at the network size: uint8 (N, image_size, image_size, n_channels); rescaled to the
    model's µm per pixel first when both pixel sizes are known (`hpa_zoo.data.images.fit_to_model`)."""
    start = time.perf_counter()
    images = np.zeros((len(table), image_size, image_size, n_channels), np.uint8)
    for n, files in enumerate(table["files"]):
        where = f"{data_csv}, line {n + 2}: "
        native = read_image(images_dir, files, n_channels, None if model_pixel else image_size, where=where)
        images[n] = (fit_to_model(native, image_size, pixel_size_um=pixel_size_um, model_pixel_size_um=model_pixel)
                     if model_pixel else native)
        if (n + 1) % 100 == 0 or n + 1 == len(table):
            say(f"read {n + 1}/{len(table)} images ({time.perf_counter() - start:.1f}s)")
    return images


def _prepare_model(base, weights, image_size: int, stains, train_images: np.ndarray, n_classes: int, say):
    """The base model rebuilt for the user's stains (`zoo_models.surgery.adapt_channels`, unknown stains
    normalised by their training mean / std) with a new ``n_classes`` head; returns (model, registry spec)."""
    from zoo_models.surgery import replace_head

    model, spec, source_stains = _load_base(base, weights, image_size)
    if list(stains) != list(source_stains):
        imgs = train_images.astype(np.float64)
        stats = [(float(imgs[..., i].mean()), float(max(imgs[..., i].std(), 1.0))) for i in range(len(stains))]
        model = adapt_channels(model, stains, source_stains=source_stains, first_conv=spec.first_conv,
                               unknown_stats=stats)
        say(f"rebuilt {spec.name} for {len(stains)} channels (stem: known stains keep their filter, unknown take "
            f"the mean filter)")
    return replace_head(model, n_classes, classifier=spec.classifier or "logits"), spec


def _fit_phases(model, train_ds, val_ds, out_dir: Path, *, classifier: str, multi_label: bool, epochs: int,
                freeze_epochs: int, learning_rate: float, verbose: int, say):
    """The two phases (backbone frozen at ``learning_rate``, then all layers at a tenth), the best ``val_loss``
    weights loaded back at the end; returns (history dict, the `AtomicBestCheckpoint`). A signal stops at a step
    boundary and raises `Interrupted` (no preset is written)."""
    from hpa_zoo.train.callbacks import AtomicBestCheckpoint

    best = AtomicBestCheckpoint(out_dir / "best.weights.h5", "val_loss", verbose=0)
    for stale in (best.path, best.info_path):  # never resume a best value from an earlier run
        stale.unlink(missing_ok=True)
    history: dict = {"loss": [], "val_loss": []}
    phases = [(0, freeze_epochs, False, learning_rate), (freeze_epochs, epochs, True, learning_rate / 10)]
    for first, last, trainable, lr in phases:
        if last <= first:
            continue
        _set_backbone_trainable(model, trainable, classifier)
        _compile(model, multi_label, lr)
        if "initial_val_loss" not in history:
            history["initial_val_loss"] = float(model.evaluate(val_ds, verbose=0))
            say(f"initial val_loss {history['initial_val_loss']:.4f}")
        say(f"epochs {first + 1}-{last}: {'all layers' if trainable else 'classifier only (backbone frozen)'}, "
            f"lr {lr:g}")
        interrupted = None
        try:
            with stop_at_step_boundary() as stopper:  # SIGINT/SIGTERM: stop after the current step
                fit = model.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first,
                                callbacks=[stopper, best], verbose=2 if verbose else 0)
        except KeyboardInterrupt as exc:
            release_frames(exc)  # the pipeline's iterator is freed now, not at interpreter exit (hpa_zoo.interrupt)
            interrupted = Interrupted(f"{'interrupted' if not isinstance(exc, Interrupted) else exc}: no preset was "
                                      f"written (fine-tuning does not resume; the best weights so far are in "
                                      f"{best.path}); re-run the command to start again",
                                      getattr(exc, "signum", signal.SIGINT))
        if interrupted is not None:
            raise interrupted
        for key in ("loss", "val_loss"):
            history[key] += [float(v) for v in fit.history[key]]
    load_network_weights(model, best.path)  # the checkpoint holds the layers only (no optimiser state)
    history["best_epoch"] = int(best.best["epoch"])
    return history, best


def _validation_thresholds(model, val_ds, y_val: np.ndarray, classes, multi_label: bool, say):
    """Multi-label: per-class F1-optimal thresholds on the validation images, a class without evidence kept at
    `DEFAULT_THRESHOLD` (`hpa_zoo.infer.thresholds.check_evidence`); returns (K floats or None, fallbacks)."""
    from hpa_zoo.infer.thresholds import check_evidence, fit_thresholds

    logits = np.asarray(model.predict(val_ds, verbose=0), np.float64)
    fallbacks: dict = {}
    if multi_label:
        probs = 1.0 / (1.0 + np.exp(-logits))
        fitted = fit_thresholds(probs, "f1_optimal", y_true=y_val)
        fitted, fallbacks = check_evidence(fitted, y_val, default=DEFAULT_THRESHOLD, class_names=classes)
        thresholds = fitted.tolist()
        if fallbacks:
            say(f"threshold {DEFAULT_THRESHOLD} (not fitted) for {len(fallbacks)} classes: "
                + "; ".join(f"{c}: {r}" for c, r in fallbacks.items()))
    else:
        thresholds = None
    return thresholds, fallbacks


@holds_run_lock("finetune")
@reports_out_of_memory("finetune")
def finetune(base, data_csv, images_dir, *, out_dir, classes: Sequence[str] | None = None, multi_label: bool = True,
             channels: Sequence[str] = CHANNELS, channel_map: Mapping[str, str | None] | None = None,
             weights=None, epochs: int = 10, freeze_epochs: int = 2, image_size: int = 512, batch_size: int = 8,
             learning_rate: float = 1e-3, val_fraction: float = 0.2, seed: int = 0, verbose: int = 1,
             pixel_size_um: float | None = None) -> Path:
    """Fine-tune a zoo model on a folder of images + CSV (module docstring); return the preset folder.

    Args:
        base: registry name (``"team1_densenet121_512"``) or a preset folder (a path or a URL).
        data_csv: CSV with ``labels`` and ``filename`` or ``filenames`` (module docstring, item 4); a path or a
            URL (``gs://``, ``s3://``, ``memory://``...).
        images_dir: folder the CSV's paths are relative to (a path or a URL). Remote parts (the base preset, the
            CSV, the listed images) are copied into the hpa-zoo cache first (`hpa_zoo.zoo.weights.stage_table`,
            `stage_remote`: locked, atomic, reused while unchanged).
        out_dir: output folder; the preset is written to ``out_dir/preset`` (best weights by ``val_loss``).
        classes: class names in output order; default the sorted names in the CSV.
        multi_label: sigmoid + BCE and fitted thresholds (True) or softmax + CE, argmax (False).
        channels: the user's channel names, in file order (``("nucleus", "protein")``...).
        channel_map: ``{channel: HPA stain or None}`` overriding `STAIN_ALIASES`.
        weights: for a registry name: None, ``"imagenet"``, ``"hpa"`` or a weights file (`hpa_zoo.load`).
        epochs: total epochs (>= 1), the first ``freeze_epochs`` (>= 0, <= epochs) with the backbone frozen.
        image_size: side the images are resized to (the network input).
        batch_size: images per step.
        learning_rate: Adam learning rate of the frozen phase; the unfrozen phase uses a tenth of it.
        val_fraction: validation share of the images (seeded split).
        seed: split, shuffling, augmentation and head initialisation seed.
        verbose: 0 silent, 1 progress lines and Keras per-epoch lines.
        pixel_size_um: µm per pixel of your images: each is rescaled to the base model's scale (registry
            ``pixel_size_um``) and centred on the ``image_size`` canvas (`hpa_zoo.data.images.fit_to_model`), and the
            preset records that scale, so `predict_images` can do the same; default off (images resized whole,
            the preset's pixel size unknown).

    Returns:
        Path of the preset folder. ``metadata.json`` holds ``class_names``, ``activation``, ``thresholds``
        (K floats, multi-label) , ``channels``, ``stains``, ``history`` (``initial_val_loss``, per-epoch ``loss`` /
        ``val_loss``, ``best_epoch``), ``val_indices`` (CSV row numbers, 0-based) and the settings.

    Raises:
        ConfigError / HpaDataError / UnknownModelError: bad arguments or data (the message names the fix).
    """
    import keras
    import tensorflow as tf

    from hpa_zoo.zoo.models_api import save_preset
    from hpa_zoo.data.pipeline import batch_pipeline
    from hpa_zoo.data.image_ops import random_d4, to_float

    positive_int(epochs, "epochs", hint="CLI: --epochs")
    positive_int(image_size, "image_size", hint="CLI: --image-size")
    positive_int(batch_size, "batch_size", hint="CLI: --batch-size")
    positive_float(learning_rate, "learning_rate", hint="CLI: --lr")
    open_fraction(val_fraction, "val_fraction", hint="the validation share of the images")
    positive_float(pixel_size_um, "pixel_size_um", allow_none=True, hint="µm per pixel, CLI: --pixel-size")
    if not 0 <= freeze_epochs <= epochs:
        raise ConfigError(f"epochs={epochs}, freeze_epochs={freeze_epochs}: need epochs >= 1 and "
                          f"0 <= freeze_epochs <= epochs")
    say = (lambda msg: log.info("finetune: %s", msg)) if verbose else (lambda msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = tuple(str(c) for c in channels)
    stains = map_stains(channels, channel_map)
    given_data = {"csv": str(data_csv), "images_dir": str(images_dir)}  # recorded as given (URLs included)
    if is_remote(base) or is_remote(data_csv) or (images_dir is not None and is_remote(images_dir)):
        from hpa_zoo.zoo.weights import stage_remote, stage_table

        base = stage_remote(base) if is_remote(base) else base
        data_csv, images_dir = stage_table(data_csv, images_dir)

    table, classes = read_table(data_csv, classes=classes, multi_label=multi_label, n_channels=len(channels))
    model_pixel = _base_pixel_size(base) if pixel_size_um is not None else None
    if pixel_size_um is None:
        say("note: no --pixel-size: images are resized whole to the input (give the µm per pixel to rescale them "
            "to the model's scale)")
    elif model_pixel is None:
        raise ConfigError(f"{base}: its training pixel size is unknown (fine-tuned without a pixel size); drop "
                          f"pixel_size_um")
    images = _read_images(table, data_csv, images_dir, len(channels), image_size, pixel_size_um, model_pixel, say)
    y = encode_labels(table["labels"], classes)
    train_idx, val_idx = split_indices(len(table), val_fraction, seed)
    say(f"{len(train_idx)} train / {len(val_idx)} validation images, {len(classes)} classes, channels "
        f"{dict(zip(channels, stains))}")

    keras.utils.set_random_seed(seed)
    model, spec = _prepare_model(base, weights, image_size, stains, images[train_idx], len(classes), say)
    classifier = spec.classifier or "logits"

    def train_map(ex, s):
        return random_d4(to_float(ex["image"]), s), ex["y"]

    def eval_map(ex):
        return to_float(ex["image"]), ex["y"]

    def source(idx):
        return tf.data.Dataset.from_tensor_slices({"image": images[idx], "y": y[idx]})

    train_ds = batch_pipeline(source(train_idx), train_map, batch_size=batch_size, training=True, seed=seed,
                              drop_remainder=len(train_idx) >= batch_size)
    val_ds = batch_pipeline(source(val_idx), eval_map, batch_size=batch_size, training=False)

    history, best = _fit_phases(model, train_ds, val_ds, out_dir, classifier=classifier, multi_label=multi_label,
                                epochs=epochs, freeze_epochs=freeze_epochs, learning_rate=learning_rate,
                                verbose=verbose, say=say)
    thresholds, fallbacks = _validation_thresholds(model, val_ds, y[val_idx], classes, multi_label, say)
    say(f"best epoch {history['best_epoch']}: val_loss {min(history['val_loss']):.4f} "
        f"(initial {history['initial_val_loss']:.4f})")

    metadata = {
        "model_name": spec.name, "class_names": list(classes), "thresholds": thresholds,
        "threshold_rule": "f1_optimal (validation)" if multi_label else None,
        "threshold_fallbacks_by_class": fallbacks,
        "pixel_size_um": model_pixel, "input_pixel_size_um": pixel_size_um,
        "activation": "sigmoid" if multi_label else "softmax", "multi_label": bool(multi_label),
        "channels": list(channels), "stains": stains, "base": str(base),
        "base_weights": None if weights is None else str(weights),
        "history": history, "val_indices": [int(i) for i in val_idx],
        "training_data": {**given_data, "n_images": int(len(table))},
        "recipe": {"epochs": epochs, "freeze_epochs": freeze_epochs, "image_size": image_size,
                   "batch_size": batch_size, "learning_rate": learning_rate, "val_fraction": val_fraction,
                   "seed": seed, "loss": "binary_crossentropy" if multi_label else "categorical_crossentropy"},
    }
    preset = save_preset(model, out_dir / PRESET_SUBDIR, model_name=spec.name, metadata=metadata)
    if list(stains) != registry_stains(spec):  # the registry builder cannot rebuild these (module docstring)
        ensure_free_space(preset / "model.keras", model_bytes(model), hint="pass another --out")
        with atomic_path(preset / "model.keras") as tmp:
            model.save(tmp)
    say(f"preset written to {preset}")
    return preset
