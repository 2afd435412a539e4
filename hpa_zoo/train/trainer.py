"""The generic training loop of a team recipe: one call trains one fold of one registered model.

``train("team1_densenet121_512", "data/kaggle", fold=0, out_dir="runs/t1_f0")`` does, in order:

1. looks the model up in the registry and asks its team module for the `Recipe` (sizes/epochs overridable);
2. opens the data (a Kaggle-layout folder or a TFDS name), makes or reads the folds and splits by fold id;
3. builds the tf.data pipelines with the recipe's ``train_map`` (random crop + augmentation) / ``eval_map``;
   each epoch is re-seeded from (seed, epoch); a recipe ``train_sampler`` picks each epoch's ids and order
   (see `sampled_source`: kept exactly for folders, multiplicities only for TFDS); with ``augment_on="device"``
   the host map of the recipe's ``device_augment`` only decodes to uint8 and the augmentation runs in the step
   (`hpa_zoo.augment.device.DeviceAugmented`; everything saved is still the bare network);
4. builds and compiles the model (optional mixed precision, XLA, ``tf.distribute`` strategy) with the recipe
   loss and optimizer, the ``val_focal`` metric and the streaming macro F1. A recipe with ``loss_weights``
   trains the builder's multi-output graph (``with_aux=True``) with those weights; metrics, the checkpoint
   monitor, thresholds, report and preset use the main output ``logits`` only (`MAIN_OUTPUT`);
5. fits with: best-checkpoint on ``recipe.monitor`` (written atomically), `BackupAndRestore` (a re-run of the
   same call resumes model, optimizer and epoch), CSV + TensorBoard logs, a NaN guard, and with
   ``recipe.swa_last_n`` a checkpoint every epoch;
6. takes the final weights (``swa_last_n > 0``: `hpa_zoo.train.swa` average of the last N epoch checkpoints with
   BatchNorm recalibrated on the training split; else the best epoch), predicts the validation split, fits the
   recipe's thresholds, saves a preset and a validation report.

Files under ``out_dir``::

    run.json                  the settings of the run (a re-run with other settings is refused)
    folds.csv                 Id,fold used for the split
    backup/                   resume state (model + optimizer + epoch), kept after the run ends
    checkpoints/best.weights.h5 + best.json   the best epoch on recipe.monitor
    checkpoints/epochs/epoch_NNN.weights.h5   every epoch, the last swa_last_n kept (SWA recipes only)
    checkpoints/swa.weights.h5 + swa.json     the SWA weights and what was averaged (SWA recipes only)
    training_log.csv, logs/   per-epoch metrics, TensorBoard
    preset/                   the trained model (``hpa_zoo.load(out_dir / "preset")``) + metadata (thresholds...)
    val_predictions.csv       Id, Target, Predicted, 28 probability columns (the out-of-fold predictions)
    val_predictions.csv.json  its `hpa_zoo.infer.ensemble` sidecar: model name, fold, TTA (none), so
                              ``hpa_zoo.infer.ensemble.load_predictions`` reads it with its provenance and labels
    val_report.json / .md     macro F1 report of the validation split
"""
from __future__ import annotations

import logging
import dataclasses
import importlib
import importlib.util
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Optional

import keras
import numpy as np

from hpa_zoo.atomic import atomic_to_csv, atomic_write_text
from hpa_zoo.augment.device import DeviceAugmented
from hpa_zoo.checks import positive_int, reports_out_of_memory
from hpa_zoo.constants import CLASS_NAMES, MAIN_OUTPUT, NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.interrupt import Interrupted, release_frames, stop_at_step_boundary
from hpa_zoo.recipe import KEEP_WEIGHTS, Recipe, load_recipe  # noqa: F401  (load_recipe: re-exported)
from hpa_zoo.runlock import holds_run_lock
from hpa_zoo.train import distribute
from hpa_zoo.train.callbacks import (AtomicBackupAndRestore, AtomicBestCheckpoint, StopOnNaN,  # noqa: F401
                                    TrainingDivergedError)
from hpa_zoo.train.sampling import EpochSampler, callable_name, epoch_seed, sampled_source

log = logging.getLogger(__name__)

#: Values of ``precision``; None / "float32" = full precision.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

#: Settings that must match for a re-run to resume from ``out_dir/backup`` (``epochs`` may change).
_RESUME_KEYS = ("model_name", "data", "fold", "image_size", "input_size", "batch_size", "steps_per_epoch",
                "precision", "seed", "weights", "sampler", "augment_on")
#: What a ``run.json`` written before a setting existed means by it.
_RESUME_DEFAULTS = {"augment_on": "host"}

#: Values of ``augment_on``: the recipe's ``train_map`` on the host, or its `Recipe.device_augment` in the step.
AUGMENT_ON = ("host", "device")

#: The ``tta`` entry of the ``val_predictions.csv.json`` sidecar (`hpa_zoo.infer.ensemble.write_sidecar`): validation
#: probabilities are one pass of the recipe's ``eval_map``, without test-time augmentation.
VAL_TTA = {"transforms": "none"}


# ------------------------------------------------------------------------------------------------ recipe
def recipe_summary(recipe: Recipe) -> dict[str, Any]:
    """The JSON-serialisable part of a recipe (stored in the preset metadata and read by `hpa_zoo.infer.predict`)."""
    return {
        "name": recipe.name, "image_size": recipe.image_size, "input_size": recipe.input_size,
        "batch_size": recipe.batch_size, "epochs": recipe.epochs, "monitor": recipe.monitor,
        "monitor_mode": recipe.monitor_mode, "keep_weights": recipe.keep_weights, "tta": dataclasses.asdict(recipe.tta),
        "thresholds": _jsonable(dataclasses.asdict(recipe.thresholds)), "notes": recipe.notes,
    }


# ------------------------------------------------------------------------------------------------ data
def _is_folder(data: str | os.PathLike) -> bool:
    return Path(data).is_dir()


def _fold_table(data, *, data_dir, folds_csv, out_dir: Path, verbose: int):
    """The ``Id,fold`` table: from ``folds_csv``, else ``out_dir/folds.csv`` (a resumed run), else computed."""
    import pandas as pd

    from hpa_zoo.data import folds as folds_mod

    saved = out_dir / "folds.csv"
    if folds_csv is not None:
        table = folds_mod.load_folds(folds_csv)
    elif saved.is_file():
        table = pd.read_csv(saved, dtype={"Id": str})
    else:
        ids, multi_hot = _all_labels(data, data_dir=data_dir, verbose=verbose)
        _log(verbose, f"making {folds_mod.N_SPLITS} multilabel-stratified folds of {len(ids)} images (every image "
                      f"its own group: no duplicate hashing; `hpa-zoo folds` makes leak-aware folds)")
        labels = pd.DataFrame({"Id": ids, "labels": [tuple(int(c) for c in np.flatnonzero(r)) for r in multi_hot]})
        table = folds_mod.make_folds(labels, groups=None)  # the team's shuffle seed (folds.SEED)
    table = _as_fold_frame(table, folds_csv or "make_folds()")
    atomic_to_csv(table[["Id", "fold"]], saved)
    return table


def _as_fold_frame(table, where):
    """Accept a DataFrame with Id/fold columns (or a Series of fold ids indexed by Id)."""
    import pandas as pd

    if isinstance(table, pd.Series):
        table = table.rename("fold").rename_axis("Id").reset_index()
    if not {"Id", "fold"} <= set(table.columns):
        raise HpaDataError(f"{where}: folds table needs columns Id and fold, found {list(table.columns)}")
    table = table.copy()
    table["Id"] = table["Id"].astype(str)
    table["fold"] = table["fold"].astype(int)
    return table


def _all_labels(data, *, data_dir, verbose) -> tuple[list[str], np.ndarray]:
    """Ids (N,) and multi-hot labels (N, 28) uint8 of the whole training set."""
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv

    if _is_folder(data):
        df = read_labels_csv(Path(data) / "train.csv")
        return list(df["Id"]), multi_hot_matrix(list(df["labels"]))
    from hpa_zoo.data.sources import tfds_dataset

    _log(verbose, f"reading ids and labels of {data} (train split) for the folds")
    ds = tfds_dataset(data, "train", data_dir=data_dir).map(lambda e: (e["id"], e["multi_hot"]))
    ids, labels = [], []
    for image_id, multi_hot in ds.as_numpy_iterator():
        ids.append(image_id.decode())
        labels.append(multi_hot)
    if not ids:
        raise HpaDataError(f"TFDS dataset {data} (data_dir={data_dir}) has an empty train split")
    return ids, np.stack(labels).astype(np.uint8)


def _split_sources(data, table, fold: int, *, data_dir, image_size: int, train_undecoded: bool = False):
    """(train_ds, valid_ds, n_train, n_valid): example-dict datasets of the fold's train and valid parts.

    ``train_undecoded`` (``Recipe.train_map_reads_jpeg``): a TFDS train split stored as RGB+Y JPEG at
    ``image_size`` keeps its images undecoded (`hpa_zoo.data.rgby_jpeg.ENCODED_KEY`) for the recipe's train map."""
    import tensorflow as tf

    from hpa_zoo.data import image_ops, rgby_jpeg, sources

    if fold not in set(table["fold"]):
        raise ConfigError(f"fold {fold} is not in the folds table (folds: {sorted(set(table['fold']))})")
    train_ids = list(table.loc[table["fold"] != fold, "Id"])
    valid_ids = list(table.loc[table["fold"] == fold, "Id"])
    if _is_folder(data):
        folder = Path(data)
        make = lambda ids: sources.folder_dataset(folder / "train", folder / "train.csv", ids=ids,  # noqa: E731
                                                   image_size=image_size)
        return make(train_ids), make(valid_ids), len(train_ids), len(valid_ids)

    ds = sources.tfds_dataset(data, "train", data_dir=data_dir)
    keys = tf.constant(list(table["Id"]))
    lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.constant(list(table["fold"]), tf.int64)), default_value=-1)
    stored = ds.element_spec["image"].shape[0]
    if stored is not None and stored != image_size:  # a TFDS config of another size: resize once, here
        ds = ds.map(lambda e: {**e, "image": tf.cast(tf.clip_by_value(tf.round(
            image_ops.resize(e["image"], image_size)), 0, 255), tf.uint8)}, num_parallel_calls=tf.data.AUTOTUNE)
        train_ds = ds
    else:
        train_ds = sources.tfds_dataset(data, "train", data_dir=data_dir, decode_image=False) if train_undecoded else ds
        if rgby_jpeg.ENCODED_KEY in train_ds.element_spec:
            log.info("%s train split: stored as RGB+Y JPEG; the recipe's train map decodes only its crop windows", data)
    train = train_ds.filter(lambda e: tf.logical_and(lookup.lookup(e["id"]) != fold, lookup.lookup(e["id"]) >= 0))
    valid = ds.filter(lambda e: tf.equal(lookup.lookup(e["id"]), fold))
    # A filter hides the size; stating it lets Keras show progress and end the validation pass without a
    # "ran out of data" warning (a folds table that does not match the dataset fails here, naming both counts).
    count = tf.data.experimental.assert_cardinality
    return (train.apply(count(len(train_ids))), valid.apply(count(len(valid_ids))), len(train_ids),
            len(valid_ids))


def _labels_of(data, ids: list[str], *, data_dir, verbose) -> np.ndarray:
    """Multi-hot labels (len(ids), 28) float32 of `ids` (training images), in that order."""
    all_ids, multi_hot = _all_labels(data, data_dir=data_dir, verbose=verbose)
    row = {image_id: i for i, image_id in enumerate(all_ids)}
    missing = [i for i in ids if i not in row]
    if missing:
        raise HpaDataError(f"{data}: {len(missing)} training id(s) of the folds table have no label, e.g. "
                           f"{missing[:3]}; the folds table does not match the data")
    return multi_hot[[row[i] for i in ids]].astype(np.float32)


# ------------------------------------------------------------------------------------------------ callbacks


# ------------------------------------------------------------------------------------------------ train
@holds_run_lock("train")
@reports_out_of_memory("train")
def train(model_name: str, data: str | os.PathLike, *, fold: int = 0, folds_csv: str | os.PathLike | None = None,
          out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, epochs: Optional[int] = None,
          image_size: Optional[int] = None, input_size: Optional[int] = None, batch_size: Optional[int] = None,
          steps_per_epoch: Optional[int] = None, precision: Optional[str] = None, jit_compile: bool = False,
          strategy: Any = None, seed: int = 0, weights: Optional[str] = None, deterministic: bool = False,
          recipe_overrides: Optional[dict] = None, tie_fallback: bool = False, augment_on: str = "host",
          verbose: int = 1) -> Path:
    """Train one fold of a registered model with its team recipe; return the preset directory.

    Args:
        model_name: registry name (``hpa-zoo models``), e.g. ``"team1_densenet121_512"``.
        data: a Kaggle-layout folder (``train.csv`` + ``train/``) or a TFDS name such as ``"hpa_kaggle/512"``.
        fold: the validation fold id.
        folds_csv: an ``Id,fold`` CSV (`hpa_zoo.data.folds`); default: computed and saved to ``out_dir/folds.csv``.
        out_dir: where everything is written (see the module docstring). Re-running the same call resumes.
        data_dir: TFDS data directory (TFDS data only).
        epochs: train for this many epochs (the recipe's LR schedule is scaled to it).
        image_size: side the images are loaded at; input_size: side of the network input (the crop).
        batch_size: global batch size (split over the replicas of ``strategy``).
        steps_per_epoch: default ``n_train // batch_size`` (incomplete batches dropped, teams.md §1.4); with a
            recipe ``train_sampler``, ``len(epoch 0's ids) // batch_size`` (an epoch whose list is shorter than
            the steps wraps around to its start).
        precision: None/"float32", "mixed_float16" (loss scaling on) or "mixed_bfloat16".
        jit_compile: compile the train step with XLA.
        strategy: a name from `hpa_zoo.train.distribute.STRATEGIES` ("mirrored", "multiworker", "tpu"), a
            ``tf.distribute.Strategy`` or a ``keras.distribution.Distribution`` (JAX); the model is built and
            compiled in its scope, ``batch_size`` is the global batch (must divide by the replica count).
        seed: seeds Python/NumPy/TF and the per-example augmentation seeds.
        weights: initial weights passed to `hpa_zoo.zoo.models_api.load` (None, "imagenet", "hpa" or a file).
        deterministic: ``tf.config.experimental.enable_op_determinism()`` (TensorFlow backend; process-wide and
            irreversible, slower on GPU): the same call gives bit-identical weights, and a killed run resumed
            from ``out_dir/backup`` ends where an uninterrupted one does (tests/test_resume.py).
        recipe_overrides: `Recipe` fields replaced after the recipe is loaded and sized (`load_recipe`), e.g.
            ``{"thresholds": ThresholdConfig(...)}`` (Team 1's rule with the data's own label ratios) or
            ``{"make_optimizer": fn}`` (a warm-up), as `hpa_zoo.demo` does on synthetic data. Not part of the
            resume check: pass the same overrides to resume.
        tie_fallback: when Team 1's LB-ratio rule is degenerate on the validation probabilities
            (`hpa_zoo.infer.thresholds.warn_degenerate`), label with the tie-aware rank variant instead; the preset's
            metadata then holds ``tie_aware_ratios`` and `hpa_zoo.infer.predict.predict` uses that variant too.
        augment_on: ``"host"`` (the recipe's ``train_map`` in tf.data) or ``"device"`` (recipes with a
            `hpa_zoo.recipe.DeviceAugment`, Team 1): the host map only decodes to uint8 at ``image_size``, batches
            stay uint8 and the compiled model is [the augmentation layer -> the network], so the crop, resize and
            flips run in the training step (for a GPU/TPU; on a CPU it only moves the same work). Validation and
            everything saved (checkpoints, resume state, SWA, preset) are the bare network, as with ``"host"``.
        verbose: 0 silent, 1 progress bars and messages.
    Returns:
        ``out_dir / "preset"``, loadable with ``hpa_zoo.load``: the single-output (``logits``) model; its
        metadata holds the fitted thresholds (28,), the recipe summary, the validation macro F1 and
        ``weights_from`` (``"swa"``, with the ``swa`` entry naming the averaged epochs, ``"best"`` or ``"last"``:
        the last epoch, with ``Recipe.keep_weights="last"`` or when no epoch improved on the monitor).
    Raises:
        ConfigError: impossible settings, or ``out_dir`` holds a run with other settings.
        HpaDataError: unreadable data / folds.
        TrainingDivergedError: the loss became NaN/inf.
    """
    from hpa_zoo.data import pipeline
    from hpa_zoo.registry import get_spec

    t_start = time.time()
    positive_int(steps_per_epoch, "steps_per_epoch", allow_none=True, hint="CLI: --steps-per-epoch")
    positive_int(fold, "fold", minimum=0, hint="the validation fold id, 0..n_splits-1 of the folds CSV")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = None if precision in (None, "float32") else precision
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: use one of {PRECISIONS}")
    spec = get_spec(model_name)
    recipe = load_recipe(model_name, epochs=epochs, image_size=image_size, input_size=input_size,
                         batch_size=batch_size)
    if recipe.targets != "multi_hot":
        raise ConfigError(f"{model_name!r} is trained on {recipe.targets} targets, not the 28 classes; use "
                          f"`hpa-zoo train-embedding` (hpa_zoo.train.metric_learning.train_metric_learning)")
    if recipe_overrides:
        unknown = set(recipe_overrides) - {f.name for f in dataclasses.fields(Recipe)}
        if unknown:
            raise ConfigError(f"recipe_overrides {sorted(unknown)}: not fields of hpa_zoo.recipe.Recipe; valid: "
                              f"{', '.join(f.name for f in dataclasses.fields(Recipe))}")
        recipe = dataclasses.replace(recipe, **recipe_overrides)
    if recipe.keep_weights not in KEEP_WEIGHTS:
        raise ConfigError(f"Recipe.keep_weights={recipe.keep_weights!r}: use one of {list(KEEP_WEIGHTS)} (the best "
                          f"epoch on the recipe's monitor, or the last epoch)")
    _check_augment_on(augment_on, model_name, recipe)
    data_str = str(data)
    if not _is_folder(data) and data_str.startswith(("/", ".", "~")):  # a path, not a TFDS 'name/config'
        raise HpaDataError(f"data {data_str!r}: no such folder; pass a Kaggle-layout folder (train.csv + train/) "
                           f"that exists, or a TFDS name like 'hpa_kaggle/512' with --data-dir")
    if not _is_folder(data) and "/" not in data_str and not data_str.startswith("hpa_"):
        raise HpaDataError(f"data {data_str!r} is neither a folder nor a TFDS name; pass a Kaggle-layout folder "
                           f"(train.csv + train/) or a name like 'hpa_kaggle/512' with --data-dir")
    settings = {"model_name": model_name, "data": data_str, "fold": int(fold), "image_size": recipe.image_size,
                "input_size": recipe.input_size, "batch_size": recipe.batch_size, "epochs": recipe.epochs,
                "steps_per_epoch": steps_per_epoch, "precision": precision or "float32", "seed": int(seed),
                "weights": weights, "jit_compile": bool(jit_compile), "augment_on": augment_on,
                "sampler": callable_name(recipe.train_sampler) if recipe.train_sampler is not None else None}
    _check_resume(out_dir, settings)
    atomic_write_text(out_dir / "run.json", json.dumps(settings, indent=2))
    _log(verbose, f"training {model_name} ({recipe.name}) fold {fold}: images {recipe.image_size}px -> input "
                  f"{recipe.input_size}px, batch {recipe.batch_size}, {recipe.epochs} epochs, "
                  f"{settings['precision']}; output in {out_dir}")

    keras.utils.set_random_seed(seed)
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    table = _fold_table(data, data_dir=data_dir, folds_csv=folds_csv, out_dir=out_dir, verbose=verbose)
    train_src, valid_src, n_train, n_valid = _split_sources(data, table, fold, data_dir=data_dir,
                                                            image_size=recipe.image_size,
                                                            train_undecoded=recipe.train_map_reads_jpeg)
    epoch_source, n_epoch = None, n_train
    if recipe.train_sampler is not None:  # Recipe.train_sampler: the epoch's ids, in training order
        train_ids = list(table.loc[table["fold"] != fold, "Id"])
        sampler = EpochSampler(recipe.train_sampler, train_ids,
                                _labels_of(data, train_ids, data_dir=data_dir, verbose=verbose),
                                seed=seed, batch_size=recipe.batch_size, fold=fold)
        n_epoch = len(sampler.ids(0))  # epoch 0's length sets the steps, also in a resumed process
        epoch_source = lambda epoch: sampled_source(  # noqa: E731
            data, train_src, sampler.ids(epoch), image_size=recipe.image_size, seed=epoch_seed(seed, epoch))
    steps = steps_per_epoch or n_epoch // recipe.batch_size
    if steps <= 0 or n_valid == 0:
        raise ConfigError(f"fold {fold}: {n_train} training / {n_valid} validation images, batch size "
                          f"{recipe.batch_size}: no complete training batch or empty validation split; use a smaller "
                          f"--batch-size or more data")
    targets = tuple(recipe.loss_weights) if recipe.loss_weights else None
    train_map = recipe.device_augment.host_map if augment_on == "device" else recipe.train_map
    train_ds = _epoch_stream(train_src, _with_output_targets(train_map, targets), batch_size=recipe.batch_size,
                             seed=seed, steps=steps, start_epoch=_backup_epoch(out_dir / "backup"),
                             epochs=recipe.epochs, epoch_source=epoch_source)
    valid_ds = pipeline.batch_pipeline(valid_src, _with_output_targets(recipe.eval_map, targets),
                                       batch_size=recipe.batch_size, training=False)
    sampled = f" ({n_epoch} sampled by {settings['sampler']})" if epoch_source is not None else ""
    _log(verbose, f"fold {fold}: {n_train} train{sampled} / {n_valid} valid images, {steps} steps per epoch")

    strategy = _resolve_strategy(strategy)
    if strategy is not None:  # hpa_zoo.train.distribute: global batch split evenly, datasets sharded by element
        per_replica = distribute.check_global_batch(recipe.batch_size, strategy)
        if not distribute.is_keras_distribution(strategy):
            train_ds, valid_ds = distribute.shard_by_data(train_ds), distribute.shard_by_data(valid_ds)
        _log(verbose, f"{distribute.num_replicas(strategy)} replicas x {per_replica} = global batch "
                      f"{recipe.batch_size} ({type(strategy).__name__})")
    previous_policy = keras.mixed_precision.dtype_policy()
    try:
        if precision:
            keras.mixed_precision.set_dtype_policy(precision)
        scope = strategy.scope() if strategy is not None else _null_scope()
        with scope:
            net = _build_model(model_name, spec, recipe, weights)
            compile_args = lambda: dict(  # noqa: E731  (fresh loss and metric objects per model)
                loss=_loss(recipe), loss_weights=recipe.loss_weights, jit_compile=bool(jit_compile),
                # metrics on the main output only: aux heads only add training losses
                metrics={MAIN_OUTPUT: _metrics(recipe)} if targets else _metrics(recipe),
                auto_scale_loss=precision == "mixed_float16")
            net.compile(optimizer=recipe.make_optimizer(steps, recipe.epochs), **compile_args())
            model = net
            if augment_on == "device":  # the same optimizer object: its state is saved with the bare network
                model = DeviceAugmented(recipe.device_augment.make_layer(), net)  # hpa_zoo.augment.device
                model.compile(optimizer=net.optimizer, **compile_args())
                _log(verbose, f"augmentation on the device: uint8 batches at {recipe.image_size}px -> "
                              f"{model.augment.name} -> {net.name}")
            _build_optimizer(model)
        best_cb, callbacks = _callbacks(out_dir, recipe, verbose)
        # keras.distribution (JAX) is consulted by fit itself: keep its scope; tf.distribute is captured by compile
        fit_scope = strategy.scope() if distribute.is_keras_distribution(strategy) else _null_scope()
        interrupted = None
        try:
            with fit_scope, stop_at_step_boundary() as stopper:  # SIGINT/SIGTERM: stop after the current step
                model.fit(train_ds, validation_data=valid_ds, epochs=recipe.epochs, steps_per_epoch=steps,
                          callbacks=[stopper, *callbacks], verbose=verbose, shuffle=False)  # the pipeline shuffles
        except KeyboardInterrupt as exc:
            release_frames(exc)  # the pipeline's iterator is freed now, not at interpreter exit (hpa_zoo.interrupt)
            state = AtomicBackupAndRestore.consistent_state(out_dir / "backup")
            done = f"epoch {state['epoch']}" if state else "no finished epoch yet"
            interrupted = Interrupted(f"{'interrupted' if not isinstance(exc, Interrupted) else exc}: the resume "
                                      f"state in {out_dir / 'backup'} is from the end of the last finished epoch "
                                      f"({done}); re-run the same command to continue",
                                      getattr(exc, "signum", signal.SIGINT))
        if interrupted is not None:
            raise interrupted
        preset = _finish(net, best_cb, recipe, settings, train_src, valid_src, table, fold, out_dir, verbose,
                         tie_fallback=tie_fallback)
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    _log(verbose, f"done in {time.time() - t_start:.0f}s")
    return preset


def _check_augment_on(augment_on: str, model_name: str, recipe: Recipe) -> None:
    """``augment_on`` is one of `AUGMENT_ON`, and ``"device"`` only for a recipe with ``device_augment``."""
    if augment_on not in AUGMENT_ON:
        raise ConfigError(f"augment_on={augment_on!r}: use one of {AUGMENT_ON} (CLI: --augment-on)")
    if augment_on == "device" and recipe.device_augment is None:
        raise ConfigError(f"{model_name!r} (recipe {recipe.name!r}) declares no device augmentation "
                          f"(Recipe.device_augment is None): train it with --augment-on host (the default); only "
                          f"recipes with a hpa_zoo.recipe.DeviceAugment (Team 1's) can augment on the accelerator")


def _build_optimizer(model) -> None:
    """Create the optimizer's variables (slots, step counter, loss scale) eagerly, before ``fit``.

    Without a ``tf.distribute`` strategy Keras 3 builds the optimizer lazily inside the first traced train step;
    a ``tf.function`` that creates variables on its first trace is traced a second time (its
    "no variable creation" variant), so the whole train step and the optimizer's apply were traced twice per run
    (tests/test_training_tracing.py). The variables are zeros, as they would be when built in the step, and a resumed
    run (`AtomicBackupAndRestore`) builds them the same way before loading the backup, so training is unchanged.
    """
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _epoch_stream(src, map_fn, *, batch_size: int, seed: int, steps: int, start_epoch: int, epochs: int,
                  epoch_source=None):
    """The training batches from epoch ``start_epoch`` on: epoch e is ``steps`` batches of a pipeline seeded by
    ``epoch_seed(seed, e)``, so a run resumed at epoch e sees exactly the batches an uninterrupted run sees there.

    (A single ``batch_pipeline(...).repeat()`` re-randomises per iteration *within one process*: a resumed
    process would replay epoch 0's order and augmentation.) Each epoch is a fresh pass (repeated if ``steps``
    exceeds one pass), as Team 1's per-epoch re-seeded sampler (teams.md §1.5).

    With ``epoch_source`` (``epoch -> dataset of example dicts`` in training order, from a recipe's
    ``train_sampler``, see `sampled_source`) epoch e is that dataset, **not reshuffled**, mapped with
    per-example seeds drawn from ``epoch_seed(seed, e)``; otherwise `src` is shuffled as
    `hpa_zoo.data.pipeline.batch_pipeline` shuffles it (both use `hpa_zoo.data.pipeline.training_pairs`). Incomplete
    batches are dropped either way.

    The epochs are concatenated with Python-int seeds: inside ``Dataset.flat_map`` the epoch is a symbolic
    tensor, and ``Dataset.shuffle`` / ``Dataset.random`` in `hpa_zoo.data.pipeline.batch_pipeline` need a Python seed.
    What is concatenated is each epoch's ``(example, seed)`` pairs (each pass cut to whole batches, ``steps *
    batch_size`` pairs), mapped and batched once: the same batches as mapping each epoch's own pipeline, but
    ``map_fn`` is traced once per run instead of once per epoch (a source of unknown length falls back to that).

    Returns:
        a dataset of ``(epochs - start_epoch) * steps`` ``map_fn`` batches (B, ...), B = ``batch_size``
        (at least one epoch, so a finished run's re-run still has a valid iterator).
    """
    import tensorflow as tf

    from hpa_zoo.data import pipeline

    def pairs(epoch: int):
        # the epoch's (example, seed) pairs, in the order batch_pipeline(training=True) maps them
        if epoch_source is None:
            return pipeline.training_pairs(src, seed=epoch_seed(seed, epoch))
        return pipeline.training_pairs(epoch_source(epoch), seed=epoch_seed(seed, epoch), shuffle_buffer=None,
                                       rerandomize_seeds=False)

    def one_epoch_pairs(epoch: int):
        # each pass cut to whole batches (drop_remainder), repeated, ``steps`` batches long; None when the pass
        # length is unknown
        examples = pairs(epoch)
        n = int(examples.cardinality())
        if n < 0:
            return None
        return examples.take(n // batch_size * batch_size).repeat().take(steps * batch_size)

    def one_epoch(epoch: int):
        return (pairs(epoch).map(map_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(batch_size, drop_remainder=True).repeat().take(steps).prefetch(tf.data.AUTOTUNE))

    epochs_run = range(int(start_epoch), max(int(epochs), int(start_epoch) + 1))
    parts = [one_epoch_pairs(epoch) for epoch in epochs_run]
    if all(part is not None for part in parts):
        # One map over the concatenated epochs: map_fn is traced (and its function instantiated) once per run,
        # not once per epoch; every epoch is steps * batch_size pairs, so batches never straddle two epochs.
        stream = parts[0]
        for part in parts[1:]:
            stream = stream.concatenate(part)
        return (stream.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    stream = one_epoch(epochs_run[0])  # a pass of unknown length: map each epoch's own pipeline
    for epoch in epochs_run[1:]:
        stream = stream.concatenate(one_epoch(epoch))
    return stream


def _with_output_targets(map_fn, keys):
    """``map_fn -> (image, multi_hot)`` made ``-> (image, {key: multi_hot for key in keys})``: every output of a
    multi-output model (`Recipe.loss_weights`) is trained against the same target. ``keys`` None: unchanged."""
    if not keys:
        return map_fn
    keys = tuple(keys)

    def mapped(*args):
        image, target = map_fn(*args)
        return image, {key: target for key in keys}

    return mapped


def _backup_epoch(backup_dir: Path) -> int:
    """The epoch `AtomicBackupAndRestore` will resume from (0 without a usable backup)."""
    state = AtomicBackupAndRestore.consistent_state(backup_dir)
    return int(state["epoch"]) if state else 0


def _finish(model, best_cb: AtomicBestCheckpoint, recipe: Recipe, settings: dict, train_src, valid_src, table,
            fold: int, out_dir: Path, verbose: int, *, tie_fallback: bool = False) -> Path:
    """Final weights (SWA with ``recipe.swa_last_n``, else the best epoch, or the last with
    ``recipe.keep_weights="last"``) -> validation probabilities of the main output -> thresholds -> preset (the
    main output only), predictions CSV, report."""
    import pandas as pd

    from hpa_zoo.infer import thresholds
    from hpa_zoo.zoo import models_api
    from hpa_zoo.nn import metrics
    from hpa_zoo.atomic import load_network_weights
    from hpa_zoo.data import pipeline
    from hpa_zoo.infer.ensemble import write_sidecar
    from hpa_zoo.data.labels import format_target
    from zoo_models.common import main_output_model

    swa_info = None
    if recipe.swa_last_n:
        swa_info = _apply_swa(model, recipe, train_src, out_dir, verbose)
    elif recipe.keep_weights == "last":  # the model holds the final epoch (also after a resumed, finished run)
        best = best_cb.best or {}
        _log(verbose, f"keeping the last epoch's weights (Recipe.keep_weights='last'; the best epoch on "
                      f"{best_cb.monitor} was {best.get('epoch', '?')})")
    elif best_cb.path.is_file():
        load_network_weights(model, best_cb.path)  # the layers; the optimizer is done with
        _log(verbose, f"loaded the best weights: {best_cb.path} ({best_cb.best})")
    else:
        _log(verbose, f"no improving epoch on {best_cb.monitor}; keeping the last weights")
    model = main_output_model(model, MAIN_OUTPUT)  # Team 3's aux head is for training only (teams.md §3.2)
    with_ids = lambda e: (*recipe.eval_map(e), e["id"])  # noqa: E731
    ds = pipeline.batch_pipeline(valid_src, with_ids, batch_size=recipe.batch_size, training=False)
    probs, y_true, ids = [], [], []
    n_valid = int((table["fold"] == fold).sum())
    bar = keras.utils.Progbar(n_valid, verbose=verbose, unit_name="image")
    for images, multi_hot, batch_ids in ds:
        logits = model.predict_on_batch(images)
        probs.append(1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64))))
        y_true.append(np.asarray(multi_hot))
        ids.extend(i.decode() for i in batch_ids.numpy())
        bar.add(len(batch_ids))
    probs = np.concatenate(probs).astype(np.float32)
    y_true = (np.concatenate(y_true) > 0.5).astype(np.uint8)

    cfg = recipe.thresholds
    fitted = thresholds.from_config(cfg, probs, y_true=y_true, tie_fallback=tie_fallback, where="validation")
    th = np.asarray(fitted.thresholds, np.float32)
    y_pred = fitted.apply(probs)
    report = metrics.f1_report(y_true, y_pred)
    macro = float(report["macro_f1"])

    preset = out_dir / "preset"
    metadata = {
        "model_name": settings["model_name"], "class_names": list(CLASS_NAMES), "thresholds": th.tolist(),
        "recipe": recipe_summary(recipe), "data": settings["data"], "fold": int(fold),
        "threshold_fallbacks": list(fitted.fallbacks), "val_macro_f1": macro, "best": best_cb.best,
        # set when the LB-ratio rule was degenerate and tie_fallback switched to the rank variant
        "tie_aware_ratios": None if fitted.rank_ratios is None else [float(r) for r in fitted.rank_ratios],
        "precision": settings["precision"], "seed": settings["seed"],
        # which weights the preset holds: the SWA average (teams.md §3.3) or the best epoch on the monitor
        "weights_from": "swa" if swa_info else ("best" if best_cb.best and recipe.keep_weights == "best" else "last"),
        "swa": swa_info,
    }
    models_api.save_preset(model, preset, metadata=metadata)

    frame = pd.DataFrame({"Id": ids, "Target": [format_target(np.flatnonzero(r)) for r in y_true],
                          "Predicted": [format_target(np.flatnonzero(r)) for r in y_pred]})
    frame = pd.concat([frame, pd.DataFrame(probs, columns=list(CLASS_NAMES))], axis=1)
    atomic_to_csv(frame, out_dir / "val_predictions.csv", float_format="%.6f")
    # hpa_zoo.infer.ensemble's sidecar: these are the out-of-fold predictions of this model's fold, one pass of the
    # recipe's eval_map (no test-time augmentation), so hill climbing / blending can load them with provenance
    write_sidecar(out_dir / "val_predictions.csv", model_name=settings["model_name"], fold=int(fold),
                  tta=VAL_TTA, class_names=CLASS_NAMES, n_rows=len(ids))
    atomic_write_text(out_dir / "val_report.json", json.dumps(_jsonable(report), indent=2))
    title = f"{settings['model_name']} fold {fold}: validation ({len(ids)} images)"
    atomic_write_text(out_dir / "val_report.md", _report_markdown(report, title))
    rule = thresholds.TIE_AWARE_RULE if fitted.rank_ratios is not None else cfg.rule
    _log(verbose, f"validation macro F1 {macro:.4f} ({len(ids)} images, thresholds: {rule}"
                  f"{', force top' if cfg.force_top else ''})\n"
                  f"  preset:            {preset}\n"
                  f"  report:            {out_dir / 'val_report.md'} (+ .json)\n"
                  f"  val predictions:   {out_dir / 'val_predictions.csv'}\n"
                  f"  logs:              {out_dir / 'training_log.csv'}, TensorBoard: {out_dir / 'logs'}")
    return preset


def _apply_swa(model, recipe: Recipe, train_src, out_dir: Path, verbose: int) -> dict:
    """`hpa_zoo.train.swa.apply_swa` on this run: the last ``recipe.swa_last_n`` epoch checkpoints averaged into `model`,
    BatchNorm recalibrated on one pass over the fold's training images with the *validation* transform
    (teams.md §3.3). Returns the metadata entry ``{"last_n", "averaged": [files], "bn_images", "weights"}``."""
    from hpa_zoo.train import swa
    from hpa_zoo.data import pipeline

    images_only = lambda e: recipe.eval_map(e)[0]  # noqa: E731
    bn_ds = pipeline.batch_pipeline(train_src, images_only, batch_size=recipe.batch_size, training=False)
    path = swa.apply_swa(out_dir, model, bn_ds, last_n=recipe.swa_last_n, verbose=verbose)
    info = json.loads(path.with_name("swa.json").read_text())
    return {"last_n": int(recipe.swa_last_n), **info, "weights": str(path)}


def _report_markdown(report: dict, title: str) -> str:
    from hpa_zoo.nn import metrics

    return f"# {title}\n\n{metrics.report_to_markdown(report)}\n"


def _build_model(model_name, spec, recipe: Recipe, weights):
    """The model to train. A recipe with ``loss_weights`` trains the builder's multi-output graph: the registry
    builder called with ``with_aux=True`` (Team 3's Inception-v3: ``{"logits", "aux_logits"}``); weights other
    than None / "imagenet" are loaded into the single-output model and copied over by layer name (the auxiliary
    head then starts as initialised)."""
    from hpa_zoo.zoo import models_api

    shape = (recipe.input_size, recipe.input_size, spec.num_channels)
    if recipe.loss_weights is None:
        model = models_api.load(model_name, weights=weights, num_classes=NUM_CLASSES, input_shape=shape)
        if not model.built:
            model.build((None, *shape))
        return model
    build = spec.build_fn()
    direct = weights if weights in (None, "imagenet") else None
    try:
        model = build(num_classes=NUM_CLASSES, input_shape=shape, weights=direct, with_aux=True,
                      **spec.builder_kwargs)
    except TypeError as exc:
        raise ConfigError(f"the recipe of {model_name!r} has loss_weights {recipe.loss_weights} (several outputs) "
                          f"but its builder {spec.builder} cannot build the training outputs (with_aux=True): "
                          f"{exc}") from exc
    outputs = set(model.output) if isinstance(model.output, dict) else {MAIN_OUTPUT}
    if outputs != set(recipe.loss_weights):
        raise ConfigError(f"{model_name}: the training model's outputs {sorted(outputs)} differ from the recipe's "
                          f"loss_weights keys {sorted(recipe.loss_weights)}")
    if direct is None and weights is not None:
        from zoo_models.surgery import transplant_weights

        single = models_api.load(model_name, weights=weights, num_classes=NUM_CLASSES, input_shape=shape)
        transplant_weights(single, model, first_conv=None, match="name")  # same channel count: a plain copy
    return model


def _loss(recipe: Recipe):
    """``recipe.make_loss()``, checked against ``recipe.loss_weights`` (a dict of losses with the same keys)."""
    loss = recipe.make_loss()
    if recipe.loss_weights is not None and (not isinstance(loss, dict) or set(loss) != set(recipe.loss_weights)):
        got = sorted(loss) if isinstance(loss, dict) else type(loss).__name__
        raise ConfigError(f"recipe {recipe.name!r}: make_loss() must return a dict with the loss_weights keys "
                          f"{sorted(recipe.loss_weights)} for a multi-output model, got {got}")
    return loss


def _monitor(recipe: Recipe) -> str:
    """The logged name of ``recipe.monitor``. With several outputs Keras logs the main output's loss and metrics
    as ``val_logits_loss`` / ``val_logits_<metric>`` (``val_loss`` is the weighted total, aux included): the
    checkpoint follows the main output's."""
    monitor = recipe.monitor
    if recipe.loss_weights is None or monitor.startswith(f"val_{MAIN_OUTPUT}_"):
        return monitor
    prefix = "val_" if monitor.startswith("val_") else ""
    return f"{prefix}{MAIN_OUTPUT}_{monitor[len(prefix):]}"


def _metrics(recipe: Recipe) -> list:
    from hpa_zoo.nn import losses, metrics

    extra = list(recipe.make_metrics()) if recipe.make_metrics is not None else []
    names = {m.name for m in extra}
    base = [m for m in (losses.make_focal_metric(), metrics.MacroF1()) if m.name not in names]
    return base + extra


def _callbacks(out_dir: Path, recipe: Recipe, verbose: int):
    from hpa_zoo.train import swa

    best = AtomicBestCheckpoint(out_dir / "checkpoints" / "best.weights.h5", _monitor(recipe), recipe.monitor_mode,
                                verbose=verbose)
    backup = out_dir / "backup"
    # SWA (teams.md §3.3): every epoch's weights, written before the backup records the epoch as done, so a
    # resumed run never lacks one (a kill in between re-trains that epoch and rewrites the same file).
    epochs = swa.epoch_callbacks(out_dir, recipe.swa_last_n)
    callbacks = [
        StopOnNaN(best, backup),  # first: raises before anything saves diverged weights
        *epochs,
        # Kept after the run so a re-run with more epochs continues; atomic, with the previous epoch as fallback.
        AtomicBackupAndRestore(str(backup)),
        best,
        keras.callbacks.CSVLogger(str(out_dir / "training_log.csv"), append=True),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(str(out_dir / "logs"), write_graph=False, profile_batch=0))
    else:
        _log(verbose, "TensorBoard is not installed (pip install tensorboard): no TensorBoard logs, the CSV log "
                      "has the same per-epoch numbers")
    return best, callbacks


def _check_resume(out_dir: Path, settings: dict) -> None:
    """Refuse to resume a backup made with different settings (``epochs`` may differ)."""
    run_file = out_dir / "run.json"
    if not run_file.is_file() or not (out_dir / "backup").exists():
        return
    old = json.loads(run_file.read_text())
    changed = {k: (old.get(k, _RESUME_DEFAULTS.get(k)), settings[k]) for k in _RESUME_KEYS
               if old.get(k, _RESUME_DEFAULTS.get(k)) != settings[k]}
    if changed:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"{out_dir} holds a run with other settings ({what}); a re-run resumes it only with the "
                          f"same settings (epochs may change). Use another --out, or delete {out_dir / 'backup'} "
                          f"to start over")


def _resolve_strategy(strategy):
    """A name (`hpa_zoo.train.distribute.STRATEGIES`) -> `distribute.make_strategy`; objects pass through."""
    if isinstance(strategy, str) or strategy is None:
        return distribute.make_strategy(strategy)
    return strategy


class _null_scope:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _jsonable(obj):
    """NumPy scalars/arrays and tuples -> plain JSON types, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _log(verbose: int, msg: str) -> None:
    if verbose:
        log.info(msg)
