"""Batching: a source (`hpa_zoo.data.sources`) and a recipe's map (built from `hpa_zoo.data.image_ops` and
`hpa_zoo.augment`) become a deterministic tf.data pipeline of (image, multi_hot) batches.

Recipes compose them, e.g. Team 1 training (docs/teams.md §1.4)::

    def train_map(ex, seed):
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        img = image_ops.random_d4(image_ops.random_scale_crop(ex["image"], 512, s1), s2)
        return img, ex["multi_hot"]

    ds = batch_pipeline(sources.folder_dataset("train", "train.csv", image_size=768), train_map,
                        batch_size=32, training=True, seed=0)
"""
from __future__ import annotations

import logging
from typing import Callable

import tensorflow as tf

from hpa_zoo.errors import ConfigError

log = logging.getLogger(__name__)

# (flip up-down, flip left-right, transpose) per entry of D4_ORDER.


# ============================================================================================ ops


# ============================================================================================ sources


# ============================================================================================ batching
def training_pairs(ds: tf.data.Dataset, *, seed: int, shuffle_buffer: int | None = 256,
                   rerandomize_seeds: bool = True) -> tf.data.Dataset:
    """One training pass as ``(example, ex_seed)`` pairs, in the order `batch_pipeline` (training) maps them.

    ``ds`` shuffled with ``shuffle_buffer`` (re-shuffled each iteration), zipped with ``ex_seed``: a (2,) int64
    tensor of consecutive draws of ``tf.data.Dataset.random(seed)``, re-randomised each iteration of a repeated
    pass when ``rerandomize_seeds``.

    Args:
        ds: dataset of examples. seed: Python int.
        shuffle_buffer: shuffle buffer size; None keeps ``ds``'s order (an epoch already ordered by a sampler).
        rerandomize_seeds: new ``ex_seed`` draws on each iteration of a repeated pass.
    Returns:
        dataset of ``(example, ex_seed)``, as many as ``ds`` has.
    """
    if shuffle_buffer is not None:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # drop_remainder: the seeds get the static shape (2,) that stateless ops (augment) check
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize_seeds).batch(
        2, drop_remainder=True)
    return tf.data.Dataset.zip(ds, seeds)


def batch_pipeline(
    ds: tf.data.Dataset,
    map_fn: Callable,
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
    shuffle_buffer: int = 256,
    cache: bool | str = False,
    drop_remainder: bool | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Shuffle (training), map, batch and prefetch, deterministically under `seed`.

    Training: ``[cache] -> shuffle(shuffle_buffer, seed, reshuffle each epoch) -> map_fn(example, ex_seed)
    -> batch(drop_remainder=True) -> prefetch``. ``ex_seed`` is a (2,) int64 tensor: consecutive draws of
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, so it is a stateless function of
    (seed, epoch, position in the epoch) and two pipelines built with the same seed give identical batches,
    epoch after epoch (Team 1 re-seeded per epoch, teams.md §1.5; sampling with drop_last, §1.4).

    Evaluation: ``[cache] -> map_fn(example) -> batch(drop_remainder=False) -> prefetch``, in input order.

    It is pure tf.data, so it also feeds Keras on the JAX/PyTorch backends (``ds.as_numpy_iterator()``).

    Args:
        ds: dataset of examples (usually dicts from `folder_dataset` / `tfds_dataset`).
        map_fn: ``map_fn(example, seed)`` (training) or ``map_fn(example)`` (eval); tf ops only.
        batch_size: examples per batch.
        training: see above.
        seed: the pipeline seed.
        shuffle_buffer: shuffle buffer size (training only).
        cache: True caches decoded examples in memory, a string caches them to that file prefix.
        drop_remainder: override the default (True in training, False in eval).
        num_parallel_calls: parallelism of the map (output order stays deterministic).
    Returns:
        Batched dataset of whatever `map_fn` returns, with a leading batch dimension.
    Raises:
        ConfigError: batch_size < 1 or shuffle_buffer < 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_pipeline: batch_size={batch_size}; it must be >= 1")
    if training and shuffle_buffer < 1:
        raise ConfigError(f"batch_pipeline: shuffle_buffer={shuffle_buffer}; it must be >= 1")
    if cache:
        ds = ds.cache() if cache is True else ds.cache(str(cache))
    if training:
        ds = training_pairs(ds, seed=seed, shuffle_buffer=shuffle_buffer).map(
            map_fn, num_parallel_calls=num_parallel_calls, deterministic=True)
        drop = True if drop_remainder is None else drop_remainder
    else:
        ds = ds.map(map_fn, num_parallel_calls=num_parallel_calls, deterministic=True)
        drop = False if drop_remainder is None else drop_remainder
    return ds.batch(batch_size, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)
