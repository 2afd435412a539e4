"""Team 3's (pudae) AutoAugment policy search: random search instead of RL (teams.md §3.5,
``pudae:augmentation_search.py``).

Each candidate policy is 5 sub-policies of 2 distinct ops (`hpa_zoo.augment.autoaugment.sample_policy`). Every candidate, and
a no-augmentation baseline, trains a proxy network from scratch (ResNet18, per-image normalisation, focal loss,
Adam 5e-4) on one half of the labelled images and is validated on the other half after every epoch; its score is
the best moving average (10 epochs) of the validation macro F1. The top-k candidates' sub-policies are flattened
(top 5 × 5 = 25 for pudae) and written with `hpa_zoo.augment.autoaugment.save_policy` to the policy file that training reads
(``zoo_models.teams.team3_pudae.make_recipe(..., policy=path)``).

Outputs of `search` (``out`` = the policy JSON)::

    out                               the flattened top-k policy (k × 5 sub-policies)
    <results> (default out.results.csv)  one row per trained candidate: score, per-epoch F1, policy file
    <results>.policies/candidate_NNN.json, baseline.json   each candidate's own policy

The search is deterministic under ``seed`` (candidate i's policy comes from ``seed`` and i alone, every candidate
starts from the same initial weights and data order) and resumable: rows already in the results CSV are skipped,
so re-running the same command continues, and asking for more candidates extends the search.

Inferred beyond the facts: predictions are positive at probability > 0.5 for the F1; the baseline is the empty
policy, which still applies the D4 base transform (pudae's base ops are part of every candidate); the images are
loaded at ``size`` and augmented there (pudae resized its 512 images to 256 after augmenting).
"""
from __future__ import annotations

import logging
import functools
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from hpa_zoo.constants import NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- constants
# teams.md §3.5: each candidate = 5 sub-policies of 2 distinct ops; 50 candidates + a no-augmentation baseline.
N_SUBPOLICIES = 5
N_CANDIDATES = 50
# teams.md §3.5: the top-5 policies are kept and flattened into 25 sub-policies.
TOP_K = 5
# teams.md §3.5: score = best 10-epoch moving average of validation macro F1; 60 epochs per candidate.
WINDOW = 10
EPOCHS = 60
# teams.md §3.5: proxy = resnet18 at 256², per-image normalisation, focal loss, Adam 5e-4.
IMAGE_SIZE = 256
PROXY = "resnet18"
PROXIES = ("resnet18", "small_cnn")
LEARNING_RATE = 5e-4
FOCAL_GAMMA = 2.0
BATCH_SIZE = 32  # not in the facts
# Inferred: a label is predicted when its probability exceeds 0.5.
F1_THRESHOLD = 0.5
# teams.md §3.5: pudae trained on one subset and validated on another of the same size (SmallDataset).
N_DATA_HALVES = 2
BASELINE_ID = -1

RESULT_COLUMNS = ("candidate", "score", "window", "f1_per_epoch", "policy_file", "epochs", "size", "proxy", "seed",
                  "seconds")
#: Settings that must match for a results CSV to be resumed.
_RESUME_KEYS = ("epochs", "size", "proxy", "seed")


# ---------------------------------------------------------------------------------------------- scoring
def best_moving_average(values: Sequence[float], window: int = WINDOW) -> float:
    """teams.md §3.5 score: the largest mean of ``window`` consecutive values (validation macro F1 per epoch).

    Args:
        values: (E,) per-epoch scores, E >= 1.
        window: moving-average length >= 1; when E < window the mean of all E values is the only average.
    Returns:
        float.
    Raises:
        ConfigError: no values or window < 1.
    """
    x = np.asarray(values, np.float64).ravel()
    if x.size == 0:
        raise ConfigError("best_moving_average: no per-epoch values to score")
    if int(window) < 1:
        raise ConfigError(f"best_moving_average: window={window}; use a window of 1 epoch or more")
    w = min(int(window), x.size)
    sums = np.convolve(x, np.ones(w), mode="valid")
    return float(sums.max() / w)


def candidate_policy(seed: int, index: int, n_subpolicies: int = N_SUBPOLICIES) -> list:
    """Candidate ``index``'s policy: `hpa_zoo.augment.autoaugment.sample_policy` seeded by (seed, index) only, so a candidate
    is the same whatever the number of candidates or the order they run in. Returns a list of `SubPolicy`."""
    from hpa_zoo.augment import autoaugment

    return autoaugment.sample_policy(np.random.default_rng([int(seed), int(index)]), n_subpolicies)


def flatten_top_k(scored: Sequence[tuple[float, Sequence]], k: int = TOP_K) -> list:
    """teams.md §3.5: keep the `k` best-scoring policies and concatenate their sub-policies, best first.

    Args:
        scored: (score, policy) pairs, a policy being a list of `SubPolicy`; ties keep the given order.
        k: how many policies to keep (1 <= k <= len(scored)).
    Returns:
        list of `SubPolicy` (k × sub-policies per policy).
    """
    if not 1 <= int(k) <= len(scored):
        raise ConfigError(f"flatten_top_k: k={k} with {len(scored)} scored policies; choose 1 <= k <= "
                          f"{len(scored)} (run more candidates or lower --top-k)")
    order = sorted(range(len(scored)), key=lambda i: -float(scored[i][0]))  # stable: ties keep input order
    return [sub for i in order[:int(k)] for sub in scored[i][1]]


# ---------------------------------------------------------------------------------------------- proxy training
def proxy_model(name: str = PROXY, size: int = IMAGE_SIZE, num_classes: int = NUM_CLASSES):
    """The network each candidate trains from scratch. Input (B, size, size, 4) float32 already normalised per
    image (the data maps do it); output (B, num_classes) float32 logits.

    ``"resnet18"`` (teams.md §3.5, `zoo_models.backbones.resnet.resnet18`, random init) or ``"small_cnn"`` (three
    conv-BN-ReLU blocks, for smoke runs on CPUs).
    """
    import keras

    if name == "resnet18":
        from zoo_models.backbones.resnet import resnet18

        return resnet18(input_shape=(size, size, 4), include_top=True, classes=num_classes, name="search_resnet18")
    if name == "small_cnn":
        inputs = keras.Input((size, size, 4), name="image")
        x = inputs
        for i, filters in enumerate((16, 32, 64)):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
            x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
            x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
        return keras.Model(inputs, logits, name="search_small_cnn")
    raise ConfigError(f"proxy {name!r} is unknown; use one of {PROXIES}")


def _train_map(example: dict, seed, *, policy):
    """D4 base + one sub-policy (`autoaugment.apply_policy`), then per-image z-score (teams.md §3.4/§3.5).
    Returns (image float32 (s, s, 4), multi_hot float32 (28,))."""
    import tensorflow as tf

    from hpa_zoo.augment import autoaugment
    from hpa_zoo.data import image_ops

    image = autoaugment.apply_policy(example["image"], policy, seed)
    return image_ops.per_image_standardize(image), tf.cast(example["multi_hot"], tf.float32)


def _eval_map(example: dict):
    """Per-image z-score only. Returns (image float32 (s, s, 4), multi_hot float32 (28,))."""
    import tensorflow as tf

    from hpa_zoo.data import image_ops

    return image_ops.per_image_standardize(example["image"]), tf.cast(example["multi_hot"], tf.float32)


def train_candidate(policy: Sequence, train_src, valid_src, *, epochs: int, batch_size: int, size: int,
                    proxy: str = PROXY, seed: int = 0, log: Optional[Callable[[str], None]] = None) -> list[float]:
    """Train a fresh proxy with `policy` and return the validation macro F1 after every epoch.

    Args:
        policy: list of `SubPolicy` (empty = baseline: D4 base only).
        train_src, valid_src: example-dict datasets (`sources.folder_dataset`, images (size, size, 4) uint8).
        epochs, batch_size, size, proxy: see `search`.
        seed: weights initialisation and data order (the same for every candidate).
        log: called with one line per epoch.
    Returns:
        (epochs,) list of float macro F1 (`hpa_zoo.nn.metrics.macro_f1`, labels at probability > 0.5).
    """
    import keras

    from hpa_zoo.data import pipeline
    from hpa_zoo.nn.losses import FocalLoss
    from hpa_zoo.nn.metrics import macro_f1

    keras.utils.set_random_seed(int(seed))
    model = proxy_model(proxy, size)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=FocalLoss(gamma=FOCAL_GAMMA, mode="mean"))  # teams.md §3.3/§3.5: focal γ=2, mean
    train_ds = pipeline.batch_pipeline(train_src, functools.partial(_train_map, policy=list(policy)),
                                       batch_size=batch_size, training=True, seed=int(seed))
    valid_ds = pipeline.batch_pipeline(valid_src, _eval_map, batch_size=batch_size, training=False)
    y_true = np.concatenate([y.numpy() for _, y in valid_ds]) > 0.5
    scores: list[float] = []

    def on_epoch_end(epoch, logs=None):
        logits = np.concatenate([np.asarray(model.predict_on_batch(x)) for x, _ in valid_ds])
        f1 = macro_f1(y_true, (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))) > F1_THRESHOLD)
        scores.append(f1)
        if log:
            log(f"  epoch {epoch + 1}/{epochs}: loss {float((logs or {}).get('loss', np.nan)):.4f}, val macro F1 "
                f"{f1:.4f}")

    model.fit(train_ds, epochs=int(epochs), verbose=0,
              callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)])
    return scores


# ---------------------------------------------------------------------------------------------- search
def _split_halves(data_dir: Path, seed: int, size: int):
    """(train_src, valid_src, n_train, n_valid): two stratified halves of ``data_dir/train.csv``."""
    from hpa_zoo.data import folds, sources
    from hpa_zoo.data.labels import read_labels_csv

    csv = data_dir / "train.csv"
    if not csv.is_file() or not (data_dir / "train").is_dir():
        raise HpaDataError(f"{data_dir}: expected a Kaggle-layout folder with train.csv and train/ "
                           f"(`hpa-zoo synth` writes one)")
    df = read_labels_csv(csv)
    if len(df) < 2 * N_DATA_HALVES:
        raise HpaDataError(f"{csv}: {len(df)} labelled images; the search needs at least {2 * N_DATA_HALVES} "
                           f"(one half trains, the other validates)")
    table = folds.make_folds(df, n_splits=N_DATA_HALVES, seed=seed)
    ids = [list(table.loc[table["fold"] == f, "Id"]) for f in range(N_DATA_HALVES)]
    train, valid = (sources.folder_dataset(data_dir / "train", csv, ids=part, image_size=size).cache() for part in ids)
    return train, valid, len(ids[0]), len(ids[1])


def _read_results(path: Path, settings: dict):
    import pandas as pd

    if not path.is_file():
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    table = pd.read_csv(path)
    missing = sorted(set(RESULT_COLUMNS) - set(table.columns))
    if missing:
        raise ConfigError(f"{path}: not a results CSV of autoaugment-search (missing columns {missing}); "
                          f"pass another --results file")
    for key in _RESUME_KEYS:
        old = set(table[key].astype(str))
        if old and old != {str(settings[key])}:
            raise ConfigError(f"{path} holds candidates trained with {key}={sorted(old)}, this run uses "
                              f"{key}={settings[key]}; resume with the same settings, or use another --results file")
    return table


def search(data_dir: str | os.PathLike, out: str | os.PathLike, *, candidates: int = N_CANDIDATES,
           epochs: int = EPOCHS, size: int = IMAGE_SIZE, top_k: int = TOP_K, window: int = WINDOW,
           batch_size: int = BATCH_SIZE, seed: int = 0, proxy: str = PROXY, baseline: bool = True,
           results_csv: str | os.PathLike | None = None, verbose: int = 1) -> Path:
    """Run (or resume) the random search and write the flattened top-k policy to `out` (teams.md §3.5).

    Args:
        data_dir: Kaggle-layout folder (``train.csv`` + ``train/``); it is split into two stratified halves,
            one for training the proxies, one for validation.
        out: the policy JSON to write (read by ``make_recipe(..., policy=out)`` / `autoaugment.load_policy`).
        candidates: number of random candidates (ids 0 .. candidates-1).
        epochs: epochs per candidate.
        size: side the images are loaded (and augmented) at.
        top_k: policies kept; the output holds top_k × 5 sub-policies.
        window: moving-average window of the score (use a smaller one for short runs).
        batch_size: training batch size.
        seed: the search seed (candidate policies, splits, initial weights, data order).
        proxy: ``"resnet18"`` (the team's) or ``"small_cnn"``.
        baseline: also train the no-augmentation baseline (candidate id -1), for comparison only.
        results_csv: default ``<out>.results.csv``; rows there are skipped on a re-run.
        verbose: 1 prints progress.
    Returns:
        the path of the written policy.
    Raises:
        ConfigError: bad settings, or a results CSV written with other settings.
        HpaDataError: unreadable data.
    """
    import pandas as pd

    from hpa_zoo.augment import autoaugment
    from hpa_zoo.atomic import atomic_to_csv

    if candidates < 1 or epochs < 1 or batch_size < 1 or not 1 <= top_k <= candidates:
        raise ConfigError(f"search: candidates={candidates}, epochs={epochs}, batch_size={batch_size}, "
                          f"top_k={top_k}: need candidates, epochs, batch size >= 1 and 1 <= top_k <= candidates")
    if proxy not in PROXIES:
        raise ConfigError(f"search: proxy {proxy!r} is unknown; use one of {PROXIES}")
    out = Path(out)
    results = Path(results_csv) if results_csv else out.with_name(out.stem + ".results.csv")
    policy_dir = results.with_name(results.name + ".policies")
    settings = {"epochs": int(epochs), "size": int(size), "proxy": proxy, "seed": int(seed)}
    table = _read_results(results, settings)
    done = set(table["candidate"].astype(int))
    say = (lambda msg: log.info("%s", msg)) if verbose else (lambda *_: None)
    todo = ([BASELINE_ID] if baseline else []) + list(range(int(candidates)))
    pending = [c for c in todo if c not in done]
    say(f"autoaugment search: {len(todo)} runs ({'baseline + ' if baseline else ''}{candidates} candidates), "
        f"{len(todo) - len(pending)} already in {results}; proxy {proxy} at {size}px, {epochs} epochs each")

    if pending:
        train_src, valid_src, n_train, n_valid = _split_halves(Path(data_dir), int(seed), int(size))
        say(f"data: {n_train} training / {n_valid} validation images from {data_dir}")
    for n, cand in enumerate(pending, start=1):
        policy = [] if cand == BASELINE_ID else candidate_policy(seed, cand)
        name = "baseline" if cand == BASELINE_ID else f"candidate_{cand:03d}"
        say(f"[{n}/{len(pending)}] {name}: " + ("no augmentation (D4 base only)" if not policy else
            "; ".join(f"{s.first.name}(p{s.first.p:g})+{s.second.name}(p{s.second.p:g})" for s in policy)))
        start = time.time()
        f1 = train_candidate(policy, train_src, valid_src, epochs=epochs, batch_size=batch_size, size=size,
                             proxy=proxy, seed=seed, log=say if verbose else None)
        policy_file = policy_dir / f"{name}.json"
        if policy:
            autoaugment.save_policy(policy, policy_file, description=f"autoaugment search {name} (seed {seed})")
        row = {"candidate": cand, "score": best_moving_average(f1, window), "window": int(window),
               "f1_per_epoch": json.dumps([round(v, 6) for v in f1]),
               "policy_file": str(policy_file.relative_to(results.parent)) if policy else "",
               **settings, "seconds": round(time.time() - start, 1)}
        table = pd.concat([table.astype(object), pd.DataFrame([row])], ignore_index=True)
        atomic_to_csv(table, results)
        say(f"  score {row['score']:.4f} (best {window}-epoch moving average) in {row['seconds']:.0f}s")

    return _write_policy(table, results, out, top_k=top_k, window=window, candidates=candidates, log=say)


def _write_policy(table, results: Path, out: Path, *, top_k: int, window: int, candidates: int, log) -> Path:
    """Re-score every row with `window`, keep the top-k candidates (ids < candidates) and save their policies."""
    from hpa_zoo.augment import autoaugment

    rows = table[table["candidate"].astype(int) != BASELINE_ID]
    rows = rows[rows["candidate"].astype(int) < candidates].sort_values("candidate", kind="stable")
    scored = [(best_moving_average(json.loads(r.f1_per_epoch), window),
               autoaugment.load_policy(results.parent / r.policy_file)) for r in rows.itertuples()]
    ids = [int(c) for c in rows["candidate"]]
    policy = flatten_top_k(scored, top_k)
    ranked = sorted(zip((s for s, _ in scored), ids), key=lambda t: -t[0])[:top_k]
    base = table[table["candidate"].astype(int) == BASELINE_ID]
    base_txt = (f"; baseline {best_moving_average(json.loads(base.iloc[0].f1_per_epoch), window):.4f}"
                if len(base) else "")
    description = (f"autoaugment random search (teams.md §3.5): top {top_k} of {len(scored)} candidates "
                   f"{[c for _, c in ranked]} with scores {[round(s, 4) for s, _ in ranked]}{base_txt}")
    autoaugment.save_policy(policy, out, description=description)
    log(f"wrote {len(policy)} sub-policies to {out}: {description}")
    return out


__all__ = ["best_moving_average", "candidate_policy", "flatten_top_k", "proxy_model", "train_candidate", "search"]
