"""Stochastic weight averaging the way Team 3 (pudae) did it (teams.md §3.3, ``pudae:swa.py``, ``utils/swa.py``).

1. `EpochCheckpoints` saves the weights after every epoch (``epoch_{e:03d}.weights.h5``, written atomically).
2. `average_checkpoints` loads the last N of them and puts their **equal-weight** average into the model.
   What is averaged is what pudae averaged: ``net.parameters()``, i.e. every weight except the BatchNorm moving
   statistics (PyTorch *buffers*). Keras keeps those statistics as the non-trainable ``moving_mean`` /
   ``moving_variance`` of each ``BatchNormalization`` layer; they are left as in the last checkpoint, because the
   averaged weights need new ones anyway.
3. `recalibrate_batchnorm` computes them anew (pudae's ``bn_update``): the statistics are reset, then one pass over
   the training data with the *validation* transform is made with the network in training mode (each BN layer
   normalises with its batch statistics, as PyTorch's ``model.train()``), and each BN layer's moving mean/variance
   becomes the **cumulative average of its per-batch statistics**, weighted by batch size. pudae obtains that
   average with the momentum trick ``b / (n + b)``; here it is accumulated exactly, in float32, with keras.ops.

`average_checkpoints` + `recalibrate_batchnorm` is the whole of pudae's SWA; `apply_swa` runs both on a training
run's checkpoint folder (``run_dir/checkpoints/epochs``, written by `EpochCheckpoints`) and saves
``run_dir/checkpoints/swa.weights.h5``. `hpa_zoo.train.trainer.train` does all of it for a recipe with ``swa_last_n > 0``.
"""
from __future__ import annotations

import logging
import json
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

import keras
import numpy as np
from keras import ops

from hpa_zoo.atomic import atomic_write_text, load_network_weights, save_weights_atomic
from hpa_zoo.errors import ConfigError, WeightsError
from zoo_models.surgery import batchnorm_layers_by_path

# teams.md §3.3: SWA over the last 10 epoch checkpoints (``swa.10.040.pth`` = 10 checkpoints up to epoch 40).
DEFAULT_SWA_LAST_N = 10
#: File name of one epoch's weights; ``epoch`` is 1-based (the number Keras prints, "Epoch 3/28").
EPOCH_FILE_FORMAT = "epoch_{epoch:03d}.weights.h5"
_EPOCH_FILE_RE = re.compile(r"^epoch_(\d+)\.weights\.h5$")
# teams.md §3.3: ``bn_update`` resets the running statistics: mean 0, variance 1 (PyTorch ``reset_running_stats``).
RESET_MEAN, RESET_VARIANCE = 0.0, 1.0
#: Where a training run keeps its per-epoch checkpoints and the SWA result (relative to the run folder).
EPOCH_CHECKPOINT_DIR = Path("checkpoints") / "epochs"
SWA_WEIGHTS_FILE = Path("checkpoints") / "swa.weights.h5"

__all__ = ["EpochCheckpoints", "epoch_callbacks", "epoch_checkpoints", "average_checkpoints", "batchnorm_layers",
           "recalibrate_batchnorm", "apply_swa", "DEFAULT_SWA_LAST_N", "EPOCH_FILE_FORMAT", "EPOCH_CHECKPOINT_DIR",
           "SWA_WEIGHTS_FILE"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- checkpoints
class EpochCheckpoints(keras.callbacks.Callback):
    """Save the model weights after every epoch as ``directory/epoch_{e:03d}.weights.h5`` (teams.md §3.3:
    pudae checkpoints every epoch), through a temporary file renamed into place, keeping the newest ``keep_last``.

    Args:
        directory: the folder (created if needed).
        keep_last: how many of the newest epoch files to keep (older ones are deleted after each save);
            None keeps all. Keep at least the SWA window (Team 3: 10).
        verbose: 1 prints one line per saved file.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: Optional[int] = DEFAULT_SWA_LAST_N, verbose: int = 0):
        super().__init__()
        if keep_last is not None and int(keep_last) < 1:
            raise ConfigError(f"EpochCheckpoints keep_last={keep_last}: keep at least 1 file (or None for all)")
        self.directory = Path(directory)
        self.keep_last = None if keep_last is None else int(keep_last)
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        path = self.directory / EPOCH_FILE_FORMAT.format(epoch=epoch + 1)
        save_weights_atomic(self.model, path, hint="pass another --out", optimizer=False)  # layers: what SWA averages
        if self.keep_last is not None:
            for old in epoch_checkpoints(self.directory)[:-self.keep_last]:
                old.unlink(missing_ok=True)
        if self.verbose:
            log.info("epoch %d: saved %s", epoch + 1, path)


def epoch_callbacks(run_dir: str | os.PathLike, last_n: int) -> list:
    """The callbacks a run with a declared SWA window (``Recipe.swa_last_n``) needs: `EpochCheckpoints` into
    ``run_dir/checkpoints/epochs`` keeping the last ``last_n`` epochs; [] when ``last_n`` is 0 (SWA off)."""
    if not last_n:
        return []
    return [EpochCheckpoints(Path(run_dir) / EPOCH_CHECKPOINT_DIR, keep_last=int(last_n))]


def epoch_checkpoints(directory: str | os.PathLike, last_n: Optional[int] = None) -> list[Path]:
    """The ``epoch_NNN.weights.h5`` files of `directory`, oldest epoch first; only the newest `last_n` if given.

    Returns an empty list for a missing folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _EPOCH_FILE_RE.match(p.name)))
    paths = [p for _, p in found]
    return paths if last_n is None else paths[-int(last_n):]


# ---------------------------------------------------------------------------------------------- averaging
def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every ``keras.layers.BatchNormalization`` in `model`, nested models included, each once, in layer order.

    The walk is ``zoo_models.surgery.batchnorm_layers_by_path`` (the one the team builders use to set each
    framework's BatchNorm momentum), without the paths.
    """
    return [layer for _, layer in batchnorm_layers_by_path(model)]


def _bn_statistics(model: keras.Model) -> list[tuple[keras.Variable, keras.Variable]]:
    return [(bn.moving_mean, bn.moving_variance) for bn in batchnorm_layers(model)]


def average_checkpoints(model: keras.Model, weight_files: Sequence[str | os.PathLike]) -> None:
    """Put the equal-weight average of the weights in `weight_files` into `model` (teams.md §3.3, pudae SWA).

    Every weight is averaged (float64 accumulation, stored back in each variable's dtype) **except** the
    BatchNormalization moving mean/variance, which keep the values of the last file: pudae averages
    ``net.parameters()`` only and recomputes the BN statistics afterwards, so call `recalibrate_batchnorm` next.

    Args:
        model: a built model whose architecture matches the files; its weights are replaced.
        weight_files: ``.weights.h5`` files saved from this model (e.g. `epoch_checkpoints(dir, last_n=10)`).
    Raises:
        ConfigError: no files given.
        WeightsError: a file is missing or does not fit the model (the message names it).
    """
    files = [Path(f) for f in weight_files]
    if not files:
        raise ConfigError("average_checkpoints: no weight files given; pass the epoch checkpoints to average "
                          "(hpa_zoo.train.swa.epoch_checkpoints(run_dir / 'checkpoints', last_n=10))")
    skip = {id(v) for pair in _bn_statistics(model) for v in pair}
    variables = [v for v in model.weights if id(v) not in skip]
    sums: Optional[list[np.ndarray]] = None
    for path in files:
        if not path.is_file():
            raise WeightsError(f"average_checkpoints: {path} does not exist")
        try:
            load_network_weights(model, path)  # the layers; the optimizer's state is not averaged
        except Exception as exc:  # keras raises ValueError/KeyError with h5 details
            raise WeightsError(f"average_checkpoints: could not load {path} into {model.name!r}: {exc}. "
                               f"Average only checkpoints saved from this architecture") from exc
        values = [ops.convert_to_numpy(v).astype(np.float64) for v in variables]
        sums = values if sums is None else [s + v for s, v in zip(sums, values)]
    for variable, total in zip(variables, sums):
        variable.assign((total / len(files)).astype(variable.dtype))


# ---------------------------------------------------------------------------------------------- BN statistics
def _reduction_axes(bn: keras.layers.BatchNormalization, rank: int) -> list[int]:
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    keep = {a % rank for a in axes}
    return [a for a in range(rank) if a not in keep]


class _Accumulator:
    """Batch-size-weighted sums of one BN layer's per-batch mean and variance (float32 tensors)."""

    def __init__(self, unbiased: bool):
        self.unbiased = unbiased
        self.mean_sum = self.var_sum = None
        self.count = 0

    def add(self, bn: keras.layers.BatchNormalization, inputs) -> None:
        x = ops.cast(inputs, "float32")
        axes = _reduction_axes(bn, len(x.shape))
        mean = ops.mean(x, axis=axes)
        var = ops.mean(ops.square(x - _keep(mean, axes, x)), axis=axes)
        n = int(np.prod([x.shape[a] for a in axes]))  # values per channel in this batch
        if self.unbiased and n > 1:
            var = var * (n / (n - 1))  # PyTorch's running_var uses the unbiased batch variance
        b = int(x.shape[0])
        self.mean_sum = mean * b if self.mean_sum is None else self.mean_sum + mean * b
        self.var_sum = var * b if self.var_sum is None else self.var_sum + var * b
        self.count += b


def _keep(mean, axes: list[int], like) -> object:
    """Reshape a per-channel (C,) statistic so it broadcasts against `like` (reduced `axes` of size 1)."""
    shape = [1 if a in axes else like.shape[a] for a in range(len(like.shape))]
    return ops.reshape(mean, shape)


def _first_input(batch):
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ConfigError(f"recalibrate_batchnorm: a dict batch needs an 'image' key, got {sorted(batch)}")
        return batch["image"]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def recalibrate_batchnorm(model: keras.Model, dataset: Iterable, steps: Optional[int] = None, *,
                          unbiased: bool = True, verbose: int = 1) -> int:
    """Recompute every BatchNormalization layer's moving mean/variance (pudae ``bn_update``, teams.md §3.3).

    The statistics are reset (mean 0, variance 1), then `model` is run in training mode over `dataset` (each BN
    layer normalises with its batch statistics, Dropout is active, as PyTorch's ``model.train()``). For every BN
    layer the per-batch mean and variance of the features entering it (over all axes but the channel axis) are
    accumulated, weighted by batch size, and finally ``moving_mean = Σ b·mean_batch / Σ b`` and
    ``moving_variance = Σ b·var_batch / Σ b`` are assigned: the exact cumulative average that pudae's momentum
    ``b / (n + b)`` produces. No other weight changes (the optimizer is not used).

    Args:
        model: a built Keras model (weights usually from `average_checkpoints`).
        dataset: iterable of batches: images (B, H, W, C) [0, 255] float32 as the model takes them, or
            ``(images, labels)`` tuples, or dicts with ``"image"``; use the *validation* transform (teams.md §3.3).
        steps: use only the first `steps` batches; None = the whole dataset (it must be finite).
        unbiased: per-batch variance with Bessel's correction, as PyTorch's running_var (pudae); False gives the
            biased variance Keras' own BN update uses. It differs by n/(n-1), n = values per channel in a batch.
        verbose: 1 shows a progress bar.
    Returns:
        the number of images seen.
    Raises:
        ConfigError: `dataset` yields no batch.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    for mean, var in _bn_statistics(model):
        mean.assign(ops.full(mean.shape, RESET_MEAN, mean.dtype))
        var.assign(ops.full(var.shape, RESET_VARIANCE, var.dtype))
    accumulators = {id(bn): _Accumulator(unbiased) for bn in layers}
    originals = {id(bn): bn.call for bn in layers}

    def recording(bn):
        original = originals[id(bn)]

        def call(inputs, *args, **kwargs):
            accumulators[id(bn)].add(bn, inputs)
            return original(inputs, *args, **kwargs)
        return call

    seen = 0
    bar = keras.utils.Progbar(steps, verbose=verbose, unit_name="batch")
    try:
        for bn in layers:
            bn.call = recording(bn)  # instance attribute: shadows the class method until deleted below
        for step, batch in enumerate(dataset):
            if steps is not None and step >= steps:
                break
            images = _first_input(batch)
            model(images, training=True)
            seen += int(ops.shape(images)[0])
            bar.update(step + 1)
    finally:
        for bn in layers:
            del bn.call
    if seen == 0:
        raise ConfigError("recalibrate_batchnorm: the dataset yielded no batch; pass the training images "
                          "(validation transform), e.g. pipeline.batch_pipeline(train, eval_map, training=False)")
    for bn in layers:
        acc = accumulators[id(bn)]
        if acc.count == 0:
            raise ConfigError(f"recalibrate_batchnorm: BN layer {bn.name!r} was not called in model(x, training="
                              f"True); it is not reachable from {model.name!r}'s call")
        bn.moving_mean.assign(ops.cast(acc.mean_sum / acc.count, bn.moving_mean.dtype))
        bn.moving_variance.assign(ops.cast(acc.var_sum / acc.count, bn.moving_variance.dtype))
    return seen


# ---------------------------------------------------------------------------------------------- a run's SWA
def apply_swa(run_dir: str | os.PathLike, model: keras.Model, train_ds: Iterable, *,
              last_n: int = DEFAULT_SWA_LAST_N, steps: Optional[int] = None, verbose: int = 1) -> Path:
    """teams.md §3.3 after training: average the last `last_n` epoch checkpoints of ``run_dir`` into `model`,
    recalibrate its BatchNorm statistics on `train_ds`, and save ``run_dir/checkpoints/swa.weights.h5`` (+ a
    ``swa.json`` ``{"averaged": [file names], "bn_images": int}``), both atomically.

    Args:
        run_dir: the training run folder (epoch files in ``run_dir/checkpoints/epochs``, from `EpochCheckpoints`).
        model: the trained architecture (its weights are replaced by the SWA weights).
        train_ds: batches of TRAINING images with the *validation* transform, images (B, s, s, C) float32 in
            [0, 255], or (images, labels) tuples; one pass is made (see `recalibrate_batchnorm`).
        last_n: checkpoints to average (fewer are averaged, with a message, when fewer exist).
        steps: limit the recalibration pass to this many batches.
        verbose: 1 prints what was averaged and a progress bar.
    Returns:
        the path of the SWA weights file.
    Raises:
        ConfigError: no epoch checkpoint in the run folder, or `train_ds` yields no batch.
        WeightsError: a checkpoint does not fit `model`.
    """
    run_dir = Path(run_dir)
    files = epoch_checkpoints(run_dir / EPOCH_CHECKPOINT_DIR, last_n=last_n)
    if not files:
        raise ConfigError(f"apply_swa: no epoch_NNN.weights.h5 in {run_dir / EPOCH_CHECKPOINT_DIR}; train with "
                          f"an EpochCheckpoints(run_dir / EPOCH_CHECKPOINT_DIR) callback (hpa_zoo.train.trainer does "
                          f"when Recipe.swa_last_n > 0) so every epoch is saved")
    if verbose:
        short = f" (only {len(files)} of {last_n} wanted)" if len(files) < last_n else ""
        log.info("SWA: averaging %d checkpoints%s: %s .. %s", len(files), short, files[0].name, files[-1].name)
    average_checkpoints(model, files)
    seen = recalibrate_batchnorm(model, train_ds, steps=steps, verbose=verbose)
    out = run_dir / SWA_WEIGHTS_FILE
    save_weights_atomic(model, out, hint="pass another --out", optimizer=False)
    atomic_write_text(out.with_name("swa.json"),
                      json.dumps({"averaged": [f.name for f in files], "bn_images": seen}, indent=2))
    if verbose:
        log.info("SWA: BatchNorm recalibrated on %d images; saved %s", seen, out)
    return out
