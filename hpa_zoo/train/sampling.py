"""Which training images each epoch sees (`Recipe.train_sampler`: Team 2's rare-class oversampling, Team 4's weighted
and alternating batches): the per-epoch sampler call and the epoch's dataset of example dicts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hpa_zoo.errors import ConfigError



class EpochSampler:
    """A recipe's ``train_sampler`` bound to one fold's training split (`hpa_zoo.recipe.Recipe.train_sampler`).

    ``ids(epoch)`` calls ``sampler(train_ids, labels (N, 28) float32, seed=epoch_seed(seed, epoch),
    batch_size=batch_size)`` once per epoch (cached) and checks the answer: a non-empty list of training ids
    (repeats allowed); an id outside the fold's training split (e.g. a validation image) is refused.
    """

    def __init__(self, sampler, train_ids: list[str], labels: np.ndarray, *, seed: int, batch_size: int,
                 fold: int):
        self.sampler, self.train_ids, self.labels = sampler, list(train_ids), labels
        self.seed, self.batch_size, self.fold = int(seed), int(batch_size), int(fold)
        self.known = set(self.train_ids)
        self._cache: dict[int, list[str]] = {}

    @property
    def name(self) -> str:
        """The sampler's stable name (str, `callable_name`: module.qualname(keywords)), used in its errors."""
        return callable_name(self.sampler)

    def ids(self, epoch: int) -> list[str]:
        """The ids of epoch ``epoch`` (0-based), in training order; list[str], repeats allowed."""
        if epoch not in self._cache:
            out = self.sampler(list(self.train_ids), self.labels, seed=epoch_seed(self.seed, epoch),
                               batch_size=self.batch_size)
            if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
                raise ConfigError(f"train_sampler {self.name} returned a {type(out).__name__}; it must return the "
                                  f"epoch's ids as a list of str (hpa_zoo.recipe.Recipe.train_sampler)")
            out = [str(i) for i in out]
            if not out:
                raise ConfigError(f"train_sampler {self.name} returned no id for epoch {epoch + 1}; it must return "
                                  f"at least one batch of training ids")
            unknown = [i for i in out if i not in self.known]
            if unknown:
                raise ConfigError(f"train_sampler {self.name} returned {len(unknown)} id(s) that are not in the "
                                  f"training split of fold {self.fold}, e.g. {unknown[:3]}; it may only return ids "
                                  f"it was given (validation images must never be trained on)")
            self._cache[epoch] = out
        return self._cache[epoch]


def sampled_source(data, train_src, epoch_ids: list[str], *, image_size: int, seed: int):
    """The examples of one sampled epoch (`EpochSampler`): a dataset of example dicts, ``len(epoch_ids)`` long.

    * Kaggle-layout folder: exactly ``epoch_ids`` in that order, repeats included
      (`hpa_zoo.data.sources.folder_dataset` keeps the order of ``ids``); nothing reshuffles it.
    * TFDS: records are read in their stored order, so the sampler's **order is not kept**: each training
      record is emitted as many times as the sampler lists its id (0 = left out this epoch), then shuffled
      (buffer `SAMPLED_TFDS_SHUFFLE`, seeded by the epoch) — the multiplicities, i.e. the class balance, hold.

    Cost: all epochs of a run are built when ``fit`` starts (`_epoch_stream`); for a folder each epoch holds its
    ids and file paths as constants (about 0.5 KB of host memory per sampled image and epoch, e.g. ~0.4 GB for
    28 epochs of 30,000 images).
    """
    import tensorflow as tf

    from hpa_zoo.data import sources

    if Path(data).is_dir():
        folder = Path(data)
        return sources.folder_dataset(folder / "train", folder / "train.csv", ids=epoch_ids, image_size=image_size)
    unique, counts = np.unique(np.asarray(epoch_ids, dtype=object).astype(str), return_counts=True)
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(unique.tolist()), tf.constant(counts, tf.int64)), default_value=0)
    repeated = train_src.flat_map(lambda e: tf.data.Dataset.from_tensors(e).repeat(table.lookup(e["id"])))
    return (repeated.apply(tf.data.experimental.assert_cardinality(len(epoch_ids)))
            .shuffle(SAMPLED_TFDS_SHUFFLE, seed=seed, reshuffle_each_iteration=False))


#: Shuffle buffer of a sampled TFDS epoch (`sampled_source`): spreads an image's repeats over the epoch.
SAMPLED_TFDS_SHUFFLE = 1024


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``: its shuffle, augmentation and sampler
    (a Python int, so a resumed process derives the same one)."""
    return int(seed) * 1_000_003 + int(epoch)


def callable_name(fn) -> str:
    """A stable name of a function / ``functools.partial`` (module.qualname(keywords)), recorded in run.json."""
    import functools

    if isinstance(fn, functools.partial):
        kw = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"{callable_name(fn.func)}({kw})"
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
