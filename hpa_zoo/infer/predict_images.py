"""Predictions (and features) on the user's own images: any folder, file list or CSV, any zoo model or preset.

``predict_images(models, inputs, out_dir=...)`` is `hpa_zoo.infer.predict` without the Kaggle assumptions (a
``sample_submission.csv``, 28 classes, RGBY):

1. **Models**: preset folders (`hpa-zoo train` / `finetune`, any channels and classes) or registry names
   (``weights="hpa"``...). Each brings its class names, stains, normalisation (inside the model), TTA, thresholds,
   activation (sigmoid, or softmax for a single-label preset) and pixel size (`hpa_zoo.preset_info`). Several
   models are averaged (the folds of one model); they must agree on classes and stains.
2. **Inputs** (`discover`), one of:

   * a folder in the Kaggle / HPAv18 layout, no CSV needed: ids come from the file names
     ``{id}_{red,green,blue,yellow}.{png,jpg,jpeg,tif,tiff}`` (the stains the model needs; HPAv18's false-coloured
     RGB JPEGs give their stain's plane). Ids with an incomplete set are listed and refused, or skipped with
     ``skip_bad=True``;
   * a list of image files, each one multi-channel image in the model's channel order (PNG/TIFF, 8 or 16 bit);
   * the fine-tuning CSV (`hpa_zoo.train.finetune.read_table`: ``filename`` or ``filenames``, ``labels`` optional),
     paths relative to ``images_dir`` (default the CSV's folder).
3. **Images**: decoded in a thread pool, 16-bit scaled to 8-bit, brought to the model's image size by
   `hpa_zoo.data.images.fit_to_model` (rescaled to the model's µm per pixel first when ``pixel_size_um`` is given),
   then the model's TTA (`hpa_zoo.infer.tta.predict_tta`).
4. **Outputs** in ``out_dir`` (atomic writes): ``probabilities.csv`` (``Id`` + one column per class name, with
   the `hpa_zoo.infer.ensemble` sidecar), ``predictions.csv`` (``Id``, ``Labels`` = class names joined by ``;``),
   with ``features=True`` ``features.npy`` (N, F) float32 + ``features_ids.csv`` (the ``hpa_densenet`` contract:
   Team 1's 1024-d features), with labels in the CSV ``evaluation.csv`` (per-class precision, recall, F1,
   support) + ``evaluation.json`` (macro F1), and ``skipped.csv`` for what ``skip_bad`` left out.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpa_zoo.atomic import atomic_path, atomic_to_csv, atomic_write_text
from hpa_zoo.checks import reports_out_of_memory
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.recipe import TTAConfig
from hpa_zoo.remote import is_remote
from hpa_zoo.runlock import holds_run_lock
# moved to the data layer; re-exported here for callers of hpa_zoo.infer.predict_images
from hpa_zoo.data.user_images import IMAGE_EXTENSIONS, Item, discover, read_item  # noqa: F401

log = logging.getLogger(__name__)

#: ``tta="d4"``: the 8 dihedral transforms of the whole image, averaged.
D4_MEAN = TTAConfig(transforms="d4", n_random_crops=0, n_random_passes=0, aggregate="mean")
NO_TTA = TTAConfig(transforms="identity", n_random_crops=0, n_random_passes=0, aggregate="mean")
LABEL_SEPARATOR = ";"
CHUNK = 32
DEFAULT_THRESHOLD = 0.5


@dataclass
class Member:
    """One model with what inference needs from its preset / registry row."""

    model: Any
    name: str
    model_name: str
    class_names: list[str]
    stains: list
    image_size: int
    input_size: int
    tta: TTAConfig
    thresholds: np.ndarray
    activation: str
    pixel_size_um: float | None
    feature_layer: str | None = None
    info: dict = field(default_factory=dict)
    keras_model: Any = None


# ---------------------------------------------------------------------------------------------- models
def load_member(item, *, weights=None, tta: str | TTAConfig = "default", runtime: str = "keras") -> Member:
    """A preset folder or registry name with its inference settings.

    Args:
        item: preset folder (written by `hpa-zoo train` / `finetune`; a URL is copied into the hpa-zoo cache first,
            `hpa_zoo.zoo.weights.stage_remote`) or registry name.
        weights: for a registry name (``"hpa"``, a file...); must be None for a preset.
        tta: ``"default"`` (a training preset's recipe TTA; none for a fine-tuned preset or a bare registry
            model), ``"none"``, ``"d4"`` (8 dihedral views, mean) or a `TTAConfig`.
        runtime: ``"keras"``, ``"onnx"`` (onnxruntime on the project's own export, `hpa_zoo.infer.onnx_runtime`) or
            ``"auto"``: onnx on a CPU-only machine with onnxruntime for a preset (its export is cached by the
            weights' sha256), keras otherwise.

    Returns:
        `Member` (``model`` runs the predictions; ``keras_model`` is the Keras model, for features).
    """
    from hpa_zoo.infer import onnx_runtime
    from hpa_zoo.zoo import models_api
    from hpa_zoo.constants import CLASS_NAMES
    from hpa_zoo.registry import get_spec

    path = _local_preset(item)
    if path.is_dir():
        if weights is not None:
            raise ConfigError(f"{path}: a preset brings its own weights; drop --weights")
        info = models_api.preset_info(path)
        model = models_api.load(path)
        meta = info["metadata"]
        recipe = meta.get("recipe") or {}
        spec = get_spec(info["model_name"])
        classes = list(info["class_names"] or CLASS_NAMES)
        th = info["thresholds"]
        input_size = int(recipe.get("input_size") or info["input_shape"][0])
        image_size = int(recipe.get("image_size") or input_size)
        default_tta = TTAConfig(**recipe["tta"]) if isinstance(recipe.get("tta"), dict) else NO_TTA
        name, stains, activation, pixel = str(path), list(info["stains"]), info["activation"], info["pixel_size_um"]
    else:
        spec = get_spec(str(item))
        model = models_api.load(spec.name, weights=weights)
        info, classes, th = {}, list(CLASS_NAMES), None
        image_size, input_size = _recipe_sizes(spec)
        default_tta = NO_TTA  # like the HPA lab's hpa_densenet tool: the whole image at the input size
        name, activation, pixel = spec.name, "sigmoid", spec.pixel_size_um
        stains = [{"R": "red", "G": "green", "B": "blue", "Y": "yellow"}[c] for c in spec.channels]
    if isinstance(model.output, dict):
        from zoo_models.common import main_output_model

        model = main_output_model(model)
    keras_model = model
    model = onnx_runtime.with_runtime(model, runtime, path / models_api.WEIGHTS_FILE if path.is_dir() else None)
    if isinstance(tta, TTAConfig):
        cfg = tta
    elif tta in (None, "default"):
        cfg = default_tta
    elif tta in ("none", "d4"):
        cfg = NO_TTA if tta == "none" else D4_MEAN
    else:
        raise ConfigError(f"tta={tta!r}: use 'default', 'none', 'd4' or a hpa_zoo.recipe.TTAConfig")
    thresholds = (np.asarray(th, np.float32) if th is not None
                  else np.full(len(classes), DEFAULT_THRESHOLD, np.float32))
    if thresholds.shape != (len(classes),):
        raise ConfigError(f"{name}: {thresholds.shape[0]} thresholds for {len(classes)} classes")
    return Member(model, name, spec.name, classes, stains, image_size, input_size, cfg, thresholds, activation,
                  pixel, spec.feature_layer, info, keras_model)


def model_pixel_size(name_or_preset, size: int) -> float | None:
    """µm per pixel a zoo model or preset expects at an input of ``size`` px when the whole image is resized to it
    (its recorded pixel size is at its recipe's image size: Team 1 1024 sees 1536 px images at 0.107 µm, so a
    1024 input of the whole field is 0.16 µm), or None when unknown (a preset fine-tuned without one)."""
    from hpa_zoo.zoo.models_api import preset_info
    from hpa_zoo.registry import get_spec

    path = _local_preset(name_or_preset)
    if path.is_dir():
        info = preset_info(path)
        image_size = int((info["metadata"].get("recipe") or {}).get("image_size") or info["input_shape"][0])
        pixel = info["pixel_size_um"]
    else:
        spec = get_spec(str(name_or_preset))
        image_size, pixel = _recipe_sizes(spec)[0], spec.pixel_size_um
    return None if pixel is None else pixel * image_size / float(size)


def _local_preset(item) -> Path:
    """``item`` as a local path: a URL (a remote preset folder) is staged into the hpa-zoo cache first."""
    if is_remote(item):
        from hpa_zoo.zoo.weights import stage_remote

        return stage_remote(item)
    return Path(os.fspath(item))


def stage_inputs(inputs, images_dir=None):
    """Remote inputs made local (`hpa_zoo.zoo.weights`): a CSV URL with the images it lists (`stage_table`), a
    folder or file URL (`stage_remote`), each URL of a file list; local inputs are returned as they are.

    Returns:
        (inputs, images_dir), both local (or ``images_dir`` None).
    """
    from hpa_zoo.zoo.weights import stage_remote, stage_table

    if isinstance(inputs, (list, tuple)):
        if len(inputs) != 1:
            return [stage_remote(f) if is_remote(f) else f for f in inputs], images_dir
        inputs = inputs[0]
    if str(os.fspath(inputs)).lower().endswith(".csv"):
        if is_remote(inputs) or (images_dir is not None and is_remote(images_dir)):
            return stage_table(inputs, images_dir)
        return inputs, images_dir
    return (stage_remote(inputs) if is_remote(inputs) else inputs), images_dir


def _recipe_sizes(spec) -> tuple[int, int]:
    """(image_size, input_size) of a registry row's recipe (Team 1 1024: 1536 -> 1024), else the row's input."""
    if not spec.recipe:
        return spec.input_size, spec.input_size
    from hpa_zoo.recipe import load_recipe

    recipe = load_recipe(spec.name)
    return int(recipe.image_size), int(recipe.input_size)


# ---------------------------------------------------------------------------------------------- inputs


# ---------------------------------------------------------------------------------------------- predict
@holds_run_lock("predict")
@reports_out_of_memory("predict")
def predict_images(models, inputs, *, out_dir, images_dir=None, weights=None, tta: str | TTAConfig = "default",
                   batch_size: int = 8, features: bool = False, skip_bad: bool = False,
                   pixel_size_um: float | None = None, seed: int = 0, workers: int = 4, runtime: str = "keras",
                   verbose: int = 1) -> dict[str, Path]:
    """Predict the user's images with one model or the mean of several (module docstring).

    Args:
        models: a preset folder or registry name, or a list of them (averaged).
        inputs: a folder, a CSV, or a list of image files (`discover`); local paths or URLs (copied into the
            hpa-zoo cache first, `stage_inputs`).
        out_dir: output folder.
        images_dir: the folder a CSV's file names are relative to (a path or a URL).
        weights: for registry names (``"hpa"``, ``"imagenet"``, a file).
        tta: ``"default"``, ``"none"``, ``"d4"`` or a `TTAConfig` (`load_member`).
        batch_size: network batch size (>= 1).
        features: also write ``features.npy`` / ``features_ids.csv`` (the first model's ``feature_layer``).
        skip_bad: skip incomplete channel sets and unreadable images (listed in ``skipped.csv``).
        pixel_size_um: µm per pixel of the user's images; rescaled to the model's scale first (default off, with
            a note: the whole field is resized to the model's input).
        seed: TTA random-crop seed.
        workers: decoding threads.
        runtime: ``"keras"`` (default), ``"onnx"`` or ``"auto"`` (`load_member`; the CLI's default is auto).
        verbose: 0 silent, 1 progress and a summary (logged).

    Returns:
        {"probabilities": path, "predictions": path, + "features", "features_ids", "evaluation", "skipped" when
        written}.

    Raises:
        ConfigError: bad arguments, models that disagree on classes or stains, a pixel size for a model whose
            own is unknown.
        HpaDataError: no images, unreadable images without ``skip_bad`` (names the file).
    """
    if batch_size < 1 or workers < 1:
        raise ConfigError(f"batch_size={batch_size}, workers={workers}: both must be >= 1")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ConfigError(f"pixel_size_um={pixel_size_um}: give the µm per pixel of your images (> 0)")
    names = list(models) if isinstance(models, (list, tuple)) else [models]
    if not names:
        raise ConfigError("predict_images: no model given")
    out_dir = Path(out_dir)
    members = [load_member(m, weights=weights, tta=tta, runtime=runtime) for m in names]
    first = members[0]
    check_members(members, pixel_size_um)
    inputs, images_dir = stage_inputs(inputs, images_dir)
    items, skipped = discover(inputs, stains=first.stains, images_dir=images_dir, skip_bad=skip_bad)
    total, feats, kept = None, [], None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n, member in enumerate(members):
            ids, probs, member_feats, bad = _predict_member(
                member, items, pool, pixel_size_um=pixel_size_um, skip_bad=skip_bad, batch_size=batch_size,
                seed=seed, features=features and n == 0, verbose=verbose)
            if not ids:
                raise HpaDataError(f"{inputs}: none of the {len(items)} images could be read: {bad[:3]}")
            if kept is not None and ids != kept:
                raise HpaDataError(f"{member.name}: read another set of images than {first.name}")
            if n == 0:
                skipped += bad
                feats = member_feats
            kept = ids
            total = probs if total is None else total + probs
            member.model = member.keras_model = None  # free it before the next one
    probs = total / len(members)
    labels = (np.eye(len(first.class_names), dtype=bool)[probs.argmax(1)] if first.activation == "softmax" else
              probs > np.mean([m.thresholds for m in members], axis=0))
    truth = {it.id: it.labels for it in items if it.labels is not None}
    written = _write_outputs(out_dir, members, kept, probs, labels, feats, skipped, truth)
    if verbose:
        log.info("%d images predicted with %s (%d skipped), %.2f labels per image; %s", len(kept),
                 " + ".join(m.name for m in members), len(skipped), labels.sum(1).mean(),
                 ", ".join(f"{k}: {v}" for k, v in written.items()))
    return written


def check_members(members: list[Member], pixel_size_um) -> None:
    """Models averaged must share classes and stains; a pixel size needs the model's own."""
    first = members[0]
    for m in members[1:]:
        if m.class_names != first.class_names or m.stains != first.stains:
            raise ConfigError(f"{m.name} predicts {m.class_names} from stains {m.stains}, {first.name} "
                              f"{first.class_names} from {first.stains}: only models of one task can be averaged")
    if pixel_size_um is None:
        log.info("note: no pixel size given (--pixel-size UM): each image is resized whole to the model input; "
                 "give it to rescale to the model's %s µm per pixel first",
                 "unknown" if first.pixel_size_um is None else f"{first.pixel_size_um:g}")
    elif first.pixel_size_um is None:
        raise ConfigError(f"{first.name}: its training pixel size is unknown (a preset fine-tuned without "
                          f"--pixel-size), so images cannot be rescaled to it; drop --pixel-size")


def _predict_member(member: Member, items: list[Item], pool, *, pixel_size_um, skip_bad: bool, batch_size: int,
                    seed: int, features: bool, verbose: int):
    """One model over the items in chunks: (ids read, probabilities (N, K) float32, features (N, F) or [],
    [(id, reason)] of the unreadable ones when ``skip_bad``)."""
    import keras

    from hpa_zoo.infer.tta import predict_tta

    n_channels = len(member.stains)

    def read(item):
        try:
            return read_item(item, n_channels, member.image_size, pixel_size_um=pixel_size_um,
                             model_pixel_size_um=member.pixel_size_um)
        except HpaDataError as exc:
            if not skip_bad:
                raise
            return exc

    extractor = None
    if features and member.feature_layer:
        from hpa_zoo.zoo.models_api import feature_extractor

        extractor = feature_extractor(member.keras_model, layer=member.feature_layer)
    ids, probs, feats, bad = [], [], [], []
    bar = keras.utils.Progbar(len(items), verbose=verbose, unit_name="image")
    for start in range(0, len(items), CHUNK):
        chunk = items[start:start + CHUNK]
        images = list(pool.map(read, chunk))
        bad += [(it.id, str(im)) for it, im in zip(chunk, images) if isinstance(im, Exception)]
        good = [(it, im) for it, im in zip(chunk, images) if not isinstance(im, Exception)]
        if good:
            batch = np.stack([im for _, im in good])
            probs.append(predict_tta(member.model, batch, config=member.tta, image_size=member.image_size,
                                     input_size=member.input_size, batch_size=batch_size, seed=seed,
                                     activation=member.activation))
            if extractor is not None:  # the whole image at the input size, no TTA (the hpa_densenet contract)
                x = batch.astype(np.float32)
                if member.input_size != member.image_size:
                    x = keras.ops.image.resize(x, (member.input_size,) * 2)
                feats.append(np.asarray(extractor.predict(x, batch_size=batch_size, verbose=0), np.float32))
            ids += [it.id for it, _ in good]
        bar.add(len(chunk))
    return ids, (np.concatenate(probs) if probs else None), (np.concatenate(feats) if feats else []), bad


def _write_outputs(out_dir: Path, members: list[Member], ids, probs, labels, feats, skipped,
                   truth: dict) -> dict[str, Path]:
    """probabilities.csv (+ sidecar), predictions.csv, features, skipped.csv and the evaluation (atomic)."""
    import pandas as pd

    from hpa_zoo.infer.ensemble import write_sidecar

    first = members[0]
    written: dict[str, Path] = {}
    frame = pd.concat([pd.DataFrame({"Id": ids}), pd.DataFrame(probs, columns=first.class_names)], axis=1)
    written["probabilities"] = atomic_to_csv(frame, out_dir / "probabilities.csv", float_format="%.6f")
    write_sidecar(written["probabilities"], model_name="+".join(dict.fromkeys(m.model_name for m in members)),
                  fold="test", tta=first.tta, class_names=first.class_names, n_rows=len(ids))
    label_text = [LABEL_SEPARATOR.join(first.class_names[k] for k in np.flatnonzero(row)) for row in labels]
    written["predictions"] = atomic_to_csv(pd.DataFrame({"Id": ids, "Labels": label_text}),
                                           out_dir / "predictions.csv")
    if len(feats):
        with atomic_path(out_dir / "features.npy") as tmp:
            np.save(tmp, feats)
        written["features"] = out_dir / "features.npy"
        written["features_ids"] = atomic_to_csv(pd.DataFrame({"Id": ids}), out_dir / "features_ids.csv")
    if skipped:
        written["skipped"] = atomic_to_csv(pd.DataFrame(skipped, columns=["Id", "reason"]), out_dir / "skipped.csv")
    if truth and all(i in truth for i in ids):
        written.update(_evaluate(ids, truth, labels, first.class_names, out_dir))
    return written


def _evaluate(ids, truth: dict, labels: np.ndarray, class_names: list[str], out_dir: Path) -> dict[str, Path]:
    """Per-class precision/recall/F1/support and macro F1 (sklearn) of the predictions against the CSV labels."""
    import pandas as pd
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    index = {c: k for k, c in enumerate(class_names)}
    y = np.zeros(labels.shape, bool)
    for n, i in enumerate(ids):
        for name in truth[i]:
            if name not in index:
                raise HpaDataError(f"label {name!r} of image {i!r} is not one of the model's classes {class_names}")
            y[n, index[name]] = True
    p, r, f, s = precision_recall_fscore_support(y, labels, average=None, zero_division=0)
    table = pd.DataFrame({"class": class_names, "precision": p, "recall": r, "f1": f, "support": s})
    macro = float(f1_score(y, labels, average="macro", zero_division=0))
    path = atomic_to_csv(table, out_dir / "evaluation.csv", float_format="%.4f")
    summary = {"macro_f1": macro, "n_images": len(ids), "labels_per_image_predicted": float(labels.sum(1).mean()),
               "labels_per_image_true": float(y.sum(1).mean())}
    atomic_write_text(out_dir / "evaluation.json", json.dumps(summary, indent=2))
    return {"evaluation": path, "evaluation_summary": out_dir / "evaluation.json"}
