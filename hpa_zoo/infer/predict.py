"""Predictions and Kaggle submissions from trained presets (one fold, or several averaged).

``predict(["runs/f0/preset", "runs/f1/preset"], "data/kaggle", out_dir="sub")``:

1. loads each preset (`hpa_zoo.zoo.models_api.load`) and its metadata (recipe summary, fitted thresholds);
2. reads the test images (``sample_submission.csv`` + ``test/`` of a Kaggle folder, or a TFDS ``test`` split)
   in chunks, at the recipe's ``image_size``;
3. predicts with the recipe's test-time augmentation (`hpa_zoo.infer.tta.predict_tta`; ``tta="none"`` = the plain
   resized image) -> probabilities per preset, then the arithmetic mean over presets (Team 1 fold ensembling,
   teams.md §1.6);
4. applies thresholds (the presets' mean, a rule re-fitted on the test probabilities, or given values), with
   the recipe's ``force_top`` (Team 1: the argmax class is always on);
5. writes ``submission.csv`` (``Id,Predicted``) and ``probabilities.csv`` (``Id`` + 28 class columns),
   atomically, with the `hpa_zoo.infer.ensemble` sidecar ``probabilities.csv.json`` (model name, ``fold="test"``, TTA),
   so ``hpa_zoo.infer.ensemble.load_predictions`` reads them with their provenance.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from hpa_zoo.atomic import atomic_to_csv
from hpa_zoo.checks import positive_int, reports_out_of_memory
from hpa_zoo.constants import CLASS_NAMES, NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.recipe import TTAConfig, ThresholdConfig
from hpa_zoo.runlock import holds_run_lock

log = logging.getLogger(__name__)

#: ``tta="none"``: one pass on the whole image resized to the input size.
NO_TTA = TTAConfig(transforms="identity", n_random_crops=0, n_random_passes=0, aggregate="mean")

#: Test images read (and held in memory) at a time.
CHUNK = 64


@dataclass
class _Member:
    """One model of the ensemble with what inference needs from its preset metadata."""

    model: Any
    name: str
    model_name: str
    image_size: int
    input_size: int
    tta: TTAConfig
    thresholds: Optional[np.ndarray]
    threshold_cfg: ThresholdConfig
    fallbacks: tuple = ()
    tie_aware_ratios: Optional[np.ndarray] = None


def read_preset_metadata(preset_dir: str | os.PathLike) -> dict:
    """The ``metadata.json`` dict of a preset (`hpa_zoo.zoo.models_api.load_metadata`; ``{}`` if none).

    Returns:
        dict; for presets written by `hpa_zoo.train.trainer.train`: ``thresholds`` (28 floats), ``recipe``
        (see `hpa_zoo.train.trainer.recipe_summary`), ``model_name``, ``fold``, ``val_macro_f1``...
    """
    from hpa_zoo.zoo import models_api

    return dict(models_api.load_metadata(preset_dir) or {})


def _member(item, *, tta, runtime: str = "keras") -> _Member:
    """Load one preset (or wrap a Keras model) with its TTA/threshold settings; ``runtime`` as
    `hpa_zoo.infer.predict_images.load_member` (a preset's export is cached by its weights' sha256)."""
    from hpa_zoo.zoo import models_api

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_dir():
            raise ConfigError(f"{path}: not a preset directory; pass the 'preset' folder written by `hpa-zoo train`")
        model = models_api.load(str(path))
        meta = read_preset_metadata(path)
        name = str(path)
    else:
        model, meta, name = item, {}, getattr(item, "name", "model")
    from zoo_models.common import main_output_model

    model = main_output_model(model)  # a training model with an auxiliary head: predict with "logits"
    if runtime != "keras":
        from hpa_zoo.infer.onnx_runtime import with_runtime

        weights_file = Path(item) / models_api.WEIGHTS_FILE if isinstance(item, (str, os.PathLike)) else None
        model = with_runtime(model, runtime, weights_file)
    recipe = meta.get("recipe") or {}
    input_size = int(recipe.get("input_size") or model.input_shape[1])
    image_size = int(recipe.get("image_size") or input_size)
    if tta is None or tta == "default":
        cfg = TTAConfig(**recipe["tta"]) if "tta" in recipe else NO_TTA
    elif tta == "none":
        cfg = NO_TTA
    elif isinstance(tta, TTAConfig):
        cfg = tta
    else:
        raise ConfigError(f"tta={tta!r}: use 'default' (the recipe's), 'none' or a hpa_zoo.recipe.TTAConfig")
    th_cfg = ThresholdConfig(**recipe["thresholds"]) if recipe.get("thresholds") else ThresholdConfig("fixed")
    th = np.asarray(meta["thresholds"], np.float32) if meta.get("thresholds") is not None else None
    if th is not None and th.shape != (NUM_CLASSES,):
        raise ConfigError(f"{name}: preset thresholds have shape {th.shape}, expected ({NUM_CLASSES},)")
    model_name = str(meta.get("model_name") or getattr(model, "name", None) or name)
    rank = meta.get("tie_aware_ratios")
    return _Member(model, name, model_name, image_size, input_size, cfg, th, th_cfg,
                   tuple(float(f) for f in meta.get("threshold_fallbacks") or ()),
                   None if rank is None else np.asarray(rank, np.float64))


def is_kaggle_source(presets, data) -> bool:
    """Whether `predict` (Kaggle / TFDS test data, training presets) rather than
    `hpa_zoo.infer.predict_images.predict_images` (the user's own images, any preset or registry name) handles it:
    every model is a preset folder and ``data`` is a Kaggle folder with ``sample_submission.csv`` or a TFDS name
    (not an existing path)."""
    items = list(presets) if isinstance(presets, (list, tuple)) else [presets]
    if not all(Path(os.fspath(p)).is_dir() for p in items):
        return False
    path = Path(os.fspath(data))
    if path.is_dir():
        return (path / "sample_submission.csv").is_file()
    return not path.exists() and path.suffix.lower() != ".csv"


def _test_source(data, *, data_dir, image_size: int):
    """(ids list, dataset of {"id", "image" uint8 (image_size, image_size, 4)}) of the test images."""
    import tensorflow as tf

    from hpa_zoo.data import sources
    from hpa_zoo.data import image_ops
    from hpa_zoo.data.labels import read_labels_csv

    if Path(data).is_dir():
        folder = Path(data)
        csv = folder / "sample_submission.csv"
        if not csv.is_file():
            raise HpaDataError(f"{csv}: not found; a Kaggle test folder needs sample_submission.csv (the test ids) "
                               f"and test/ with the channel PNGs")
        ids = list(read_labels_csv(csv, require_target=False)["Id"])
        ds = sources.folder_dataset(folder / "test", ids=ids, labelled=False, image_size=image_size)
        return ids, ds
    ds = sources.tfds_dataset(str(data), "test", data_dir=data_dir)
    stored = ds.element_spec["image"].shape[0]
    if stored is not None and stored != image_size:
        ds = ds.map(lambda e: {"id": e["id"], "image": tf.cast(tf.clip_by_value(tf.round(
            image_ops.resize(e["image"], image_size)), 0, 255), tf.uint8)}, num_parallel_calls=tf.data.AUTOTUNE)
    return None, ds


def predict_probabilities(member: _Member, data, *, data_dir=None, batch_size: int = 8, seed: int = 0,
                          verbose: int = 1) -> tuple[list[str], np.ndarray]:
    """Probabilities of one model on the test images.

    Returns:
        (ids (N,) in the test order, probabilities (N, 28) float32).
    """
    import keras

    from hpa_zoo.infer.tta import predict_tta

    ids, ds = _test_source(data, data_dir=data_dir, image_size=member.image_size)
    out_ids, probs = [], []
    bar = keras.utils.Progbar(len(ids) if ids else None, verbose=verbose, unit_name="image")
    for chunk in ds.batch(CHUNK).as_numpy_iterator():
        p = predict_tta(member.model, chunk["image"], config=member.tta, image_size=member.image_size,
                        input_size=member.input_size, batch_size=batch_size, seed=seed)
        probs.append(np.asarray(p, np.float32))
        out_ids.extend(i.decode() for i in chunk["id"])
        bar.add(len(chunk["id"]))
    if not out_ids:
        raise HpaDataError(f"{data}: no test images found")
    return out_ids, np.concatenate(probs)


def _write_probabilities_sidecar(path: Path, members: Sequence[_Member], *, n_rows: int) -> Path:
    """The `hpa_zoo.infer.ensemble` sidecar (``probabilities.csv.json``) of the averaged test probabilities.

    ``model_name``: the members' registry name (the preset metadata's ``model_name``, else the Keras model name),
    or the distinct names joined with ``+`` for a mix of models; ``fold``: ``"test"`` (test-set predictions, not
    out-of-fold ones, whichever folds the presets were trained on); ``tta``: the `TTAConfig` all members used
    (as a dict), or ``{"per_model": [...]}`` when they differ.
    """
    import dataclasses

    from hpa_zoo.infer.ensemble import write_sidecar

    names = list(dict.fromkeys(m.model_name for m in members))
    configs = [dataclasses.asdict(m.tta) for m in members]
    tta = configs[0] if all(c == configs[0] for c in configs) else {"per_model": configs}
    return write_sidecar(path, model_name="+".join(names), fold="test", tta=tta, class_names=CLASS_NAMES,
                         n_rows=n_rows)


@holds_run_lock("predict")
@reports_out_of_memory("predict")
def predict(model_or_preset: Union[str, os.PathLike, Any, Sequence], data: str | os.PathLike, *,
            out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            tta: Union[str, TTAConfig, None] = None, batch_size: int = 8,
            thresholds: Union[None, str, Sequence[float], np.ndarray] = None, seed: int = 0,
            tie_fallback: bool = False, runtime: str = "keras", verbose: int = 1) -> tuple[Path, Path]:
    """Predict the test images and write a Kaggle submission and a probabilities CSV.

    Args:
        model_or_preset: a preset directory, a Keras model, or a list of them (their probabilities are averaged,
            e.g. the folds of one model). Presets carry the recipe sizes, TTA and fitted thresholds.
        data: a Kaggle-layout folder (``sample_submission.csv`` + ``test/``) or a TFDS name (``test`` split).
        out_dir: where ``submission.csv`` and ``probabilities.csv`` go.
        data_dir: TFDS data directory (TFDS data only).
        tta: None/"default" (each preset's recipe TTA), "none", or a `TTAConfig` for all models.
        batch_size: network batch size.
        thresholds: None: the mean of the presets' fitted thresholds (0.5 for a bare model); "refit": the
            recipe's rule re-fitted on the test probabilities (label-free rules such as Team 1's
            ``lb_ratio_match``, as the team did, teams.md §1.6); or 28 values.
        seed: seed of the random crops of the TTA.
        tie_fallback: when Team 1's LB-ratio labels of the test images are degenerate (a class on for >= 90 % of
            them, `hpa_zoo.infer.thresholds.warn_degenerate`, which warns either way), label with the tie-aware rank
            variant (`hpa_zoo.infer.thresholds.rank_ratio_labels`) instead. A preset whose validation fit already
            switched to it (metadata ``tie_aware_ratios``) uses it on the test images in any case.
        runtime: ``"keras"`` (default), ``"onnx"`` or ``"auto"``: onnxruntime on the project's own ONNX export
            (`hpa_zoo.infer.onnx_runtime`; logits equal Keras to 1e-5, export cached per preset).
        verbose: 0 silent, 1 progress; the summary gives the labels per image beside the number the rule's
            target ratios expect (their sum).
    Returns:
        (submission_csv, probabilities_csv) paths. Submission: ``Id,Predicted`` with space-separated class ids
        (every test id once, in the test order); probabilities: ``Id`` + one float column per class name, and
        its sidecar ``probabilities.csv.json`` (`_write_probabilities_sidecar`).
    Raises:
        ConfigError: bad tta/thresholds values, a batch_size < 1, presets with different class counts.
        HpaDataError: missing test data.
    """
    from hpa_zoo.infer import thresholds as th_mod
    from hpa_zoo.data.labels import format_target

    import pandas as pd

    positive_int(batch_size, "batch_size", hint="CLI: --batch-size")
    items = list(model_or_preset) if isinstance(model_or_preset, (list, tuple)) else [model_or_preset]
    if not items:
        raise ConfigError("predict: no model or preset given")
    out_dir = Path(out_dir)
    ids, total = None, None
    members = []
    for n, item in enumerate(items, 1):
        member = _member(item, tta=tta, runtime=runtime)
        members.append(member)
        if verbose:
            log.info(f"[{n}/{len(items)}] {member.name}: images {member.image_size}px -> {member.input_size}px, "
                     f"TTA {member.tta.transforms} + {member.tta.n_random_crops} random crops ({member.tta.aggregate})")
        member_ids, probs = predict_probabilities(member, data, data_dir=data_dir, batch_size=batch_size,
                                                  seed=seed, verbose=verbose)
        if ids is not None and member_ids != ids:
            raise HpaDataError(f"{member.name}: read the test ids in another order than the first model")
        ids = member_ids
        total = probs if total is None else total + probs
        member.model = None  # free it before the next fold
    probs = total / len(items)

    cfg, fallbacks = members[0].threshold_cfg, members[0].fallbacks
    ratios = th_mod.config_ratios(cfg, NUM_CLASSES)
    rank = members[0].tie_aware_ratios
    refit = None
    if thresholds is None:
        fitted = [m.thresholds for m in members if m.thresholds is not None]
        th = np.mean(fitted, axis=0) if fitted else np.full(NUM_CLASSES, 0.5, np.float32)
    elif isinstance(thresholds, str):
        if thresholds != "refit":
            raise ConfigError(f"thresholds={thresholds!r}: use None (the presets'), 'refit' or 28 numbers")
        try:
            refit = th_mod.from_config(cfg, probs, tie_fallback=tie_fallback, where="the test images")
        except ConfigError as exc:
            raise ConfigError(f"thresholds='refit': {exc} Test images have no labels; use the presets' "
                              f"thresholds (the default) for this rule") from exc
        th, fallbacks = refit.thresholds, refit.fallbacks
    else:
        th = thresholds
    th = np.asarray(th, np.float32)
    if th.shape != (NUM_CLASSES,):
        raise ConfigError(f"thresholds have shape {th.shape}; expected ({NUM_CLASSES},)")
    if refit is not None:  # fitted on these probabilities: from_config has checked (and maybe switched) already
        labels = refit.apply(probs)
    elif rank is not None and thresholds is None:  # the preset's validation fit switched to the tie-aware variant
        labels = th_mod.rank_ratio_labels(probs, rank, force_top=cfg.force_top)
    else:
        labels = th_mod.apply_thresholds(probs, th, force_top=cfg.force_top, fallbacks=fallbacks)
        if cfg.rule == "lb_ratio_match" and th_mod.warn_degenerate(labels, ratios, probs, where="the test images",
                                                                   fallback=tie_fallback) and tie_fallback:
            labels = th_mod.rank_ratio_labels(probs, ratios, force_top=cfg.force_top)

    submission = atomic_to_csv(pd.DataFrame({"Id": ids, "Predicted": [format_target(np.flatnonzero(r))
                                                                        for r in labels]}),
                               out_dir / "submission.csv")
    frame = pd.concat([pd.DataFrame({"Id": ids}), pd.DataFrame(probs, columns=list(CLASS_NAMES))], axis=1)
    probabilities = atomic_to_csv(frame, out_dir / "probabilities.csv", float_format="%.6f")
    _write_probabilities_sidecar(probabilities, members, n_rows=len(ids))
    if verbose:
        empty = int((labels.sum(axis=1) == 0).sum())
        expect = "" if ratios is None else f" (the target ratios of {cfg.rule} expect {ratios.sum():.2f})"
        log.info(f"{len(ids)} test images, {labels.sum(axis=1).mean():.2f} labels per image{expect}, {empty} empty "
                 f"rows\n"
                 f"  submission:    {submission}\n  probabilities: {probabilities}")
    return submission, probabilities
