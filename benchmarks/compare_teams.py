"""Compare the registered team recipes on one dataset: the paper's Fig. 2 (Ouyang et al. 2019) for your own data.

For each model of the budget (``small``: one member of each team — Team 1 DenseNet121, Team 2 DenseNet121-RGB,
Team 3 ResNet34, Team 4 GAPNet — on the ``demo`` synthetic preset, 2 seeds; ``full``: every registered model with a
recipe; ``--models`` picks any): train one fold with
`hpa_zoo.train.trainer.train` at the budget's size and length, predict the held-out test images with the team's own
TTA and thresholds (`hpa_zoo.infer.predict.predict`; Team 4's 1024crop512 model with its 5 crops + stacker), and score
them against the test labels, with a bootstrap 95 % interval of macro F1 over the test images (the seed-mean
when there are several seeds, `hpa_zoo.nn.metrics.bootstrap_macro_f1`). A deliberately weak baseline — per-class
logistic regression on pooled pixel statistics (per-channel mean, std and percentiles) — is scored the same way.
The figures of the paper (``<out>/figures/report.html``, `hpa_zoo.analysis.report`: Fig. 2a-d, Supp. Fig. 2 and the Fig. 3
Grad-CAM panel of the trained members) come with it. The report (Markdown + CSV + PNG) has macro F1 and the ranking, per-class F1 ordered by class frequency (Fig. 2c), single- vs multi-label macro F1
(Fig. 2d), macro precision / recall, training time and inference images/s, with the teams' own reported HPA
leaderboard scores beside ours, labelled as theirs. The member runs (one model, one seed) train ``--jobs`` at a time,
each in its own worker process (default 2 on a CPU-only machine with at least 2 cores, `default_jobs`).

    python benchmarks/compare_teams.py --budget small --out runs/compare          # synthetic data
    python benchmarks/compare_teams.py --budget small --models team3_resnet34_512 team4_gapnet_resnet18_512 \
        --out runs/compare_t3t4                                                     # other members, same budget
    python benchmarks/compare_teams.py --data-dir data/kaggle_split --size 256 --epochs 8 --out runs/real

Data: by default a synthetic HPA-like dataset (`hpa_zoo.data.synthetic`) is written to ``<out>/synthetic`` — its numbers
are "synthetic data — not HPA results". ``--data-dir`` takes a Kaggle-layout folder with ``train.csv`` + ``train/``
(training, fold 0 held out for the label-fitted thresholds) and ``sample_submission.csv`` + ``test/`` +
``test_labels.csv`` (``Id,Target`` of the test images: make it by moving part of Kaggle's train.csv there).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if sys.path[:1] != [str(REPO_ROOT)]:  # run as a script: this repository first (its tests/ over any installed "tests")
    sys.path.insert(0, str(REPO_ROOT))

from hpa_zoo.atomic import atomic_path, atomic_to_csv, atomic_write_text  # noqa: E402
from hpa_zoo.train.baselines import BASELINE_PERCENTILES, PixelStatsBaseline, pixel_features  # noqa: E402,F401
from hpa_zoo.constants import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from hpa_zoo.errors import ConfigError, HpaDataError  # noqa: E402

SYNTHETIC_BANNER = "synthetic data — not HPA results"
#: Bootstrap resamples of the test images for the macro F1 interval.
BOOTSTRAP_RESAMPLES = 1000
BASELINE = "baseline_logreg_pixel_stats"


@dataclass(frozen=True)
class Budget:
    """How much to train.

    Attributes:
        n_train, n_test: synthetic train / test images (ignored with ``--data-dir``).
        size: the network input side; each recipe's load size keeps its team ratio (`_sizes`).
        epochs, batch_size: training length and batch (None = the team's own).
        synthetic_size: side of the synthetic PNGs.
        stacker_epochs: epochs of Team 4's 5-crop stacker.
        models: the registry models trained by default (None = every model with a recipe); the others get a
            "not run" row. ``--models`` overrides it.
        seeds: training seeds of every member (the data seed is the first).
        preset: the synthetic difficulty (`hpa_zoo.data.synthetic.PRESETS`).
        warmup_epochs, peak_lr: every member's optimizer gets a linear warm-up to ``peak_lr`` then a cosine decay
            (`hpa_zoo.demo.warmup_optimizer`, the demo's lever for from-scratch training); 0 / None: the teams' own
            schedules.
        train_ratio_targets: the label-free ratio rules (Team 1's LB-ratio match, Team 4's frequency match) target
            the training labels' fractions instead of the Kaggle ones (`hpa_zoo.demo.from_scratch_overrides`).
        keep_weights: which epoch's weights every member's preset holds (`hpa_zoo.recipe.Recipe.keep_weights`):
            ``"best"`` on the recipe's monitor (the teams' rule) or ``"last"``.
    """

    n_train: int
    n_test: int
    size: int
    epochs: Optional[int]
    batch_size: Optional[int]
    synthetic_size: int
    stacker_epochs: int
    models: Optional[tuple[str, ...]] = None
    seeds: tuple[int, ...] = (0,)
    preset: str = "hpa"
    warmup_epochs: float = 0.0
    peak_lr: Optional[float] = None
    train_ratio_targets: bool = False
    keep_weights: str = "best"


#: micro: CI (one member in ~1 min). small: one member of each team on the learnable ``demo`` synthetic preset,
#: 2 seeds, with the demo's levers for from-scratch training (warm-up + cosine to 1e-3, ratio rules aimed at the
#: training labels' fractions; measured in benchmarks/README.md); add members with --models. full: the teams' own
#: sizes, epochs and schedules, every recipe (a GPU).
SMALL_MODELS = ("team1_densenet121_512", "team2_densenet121_rgb_512", "team3_resnet34_512",
                "team4_gapnet_resnet18_512")
BUDGETS = {
    "micro": Budget(n_train=40, n_test=16, size=32, epochs=1, batch_size=8, synthetic_size=64, stacker_epochs=5),
    "small": Budget(n_train=2000, n_test=300, size=64, epochs=12, batch_size=32, synthetic_size=96, stacker_epochs=40,
                    models=SMALL_MODELS, seeds=(0, 1), preset="demo", warmup_epochs=1.0, peak_lr=1e-3,
                    train_ratio_targets=True),
    "full": Budget(n_train=3000, n_test=600, size=512, epochs=None, batch_size=None, synthetic_size=512,
                   stacker_epochs=60),
}


# ============================================================================================ data
def prepare_data(out: Path, budget: Budget, data_dir: Optional[str], seed: int) -> tuple[Path, bool]:
    """The Kaggle-layout folder to use and whether it is synthetic (written to ``out/synthetic`` if absent)."""
    if data_dir is not None:
        folder = Path(data_dir)
        for need in ("train.csv", "train", "sample_submission.csv", "test", "test_labels.csv"):
            if not (folder / need).exists():
                raise HpaDataError(f"{folder / need}: missing; --data-dir needs train.csv + train/ and "
                                   f"sample_submission.csv + test/ + test_labels.csv (Id,Target of the test images; "
                                   f"move part of Kaggle's train.csv and images there)")
        return folder, False
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    folder = out / "synthetic"
    if not (folder / "test_labels.csv").is_file():
        write_synthetic_dataset(folder, n_train=budget.n_train, n_test=budget.n_test, size=budget.synthetic_size,
                                seed=seed, workers=1, overwrite=True, progress=False, preset=budget.preset)
    return folder, True


def _read_images(folder: Path, split: str, ids: Sequence[str], size: int) -> np.ndarray:
    """uint8 (N, size, size, 4) images of ``folder/split`` in ``ids`` order (tf.data reader)."""
    from hpa_zoo.data import sources

    ds = sources.folder_dataset(folder / split, ids=list(ids), labelled=False, image_size=size)
    return np.stack([e["image"] for e in ds.as_numpy_iterator()])


def _test_truth(folder: Path) -> tuple[list[str], np.ndarray]:
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv

    df = read_labels_csv(folder / "test_labels.csv")
    return list(df["Id"]), multi_hot_matrix(list(df["labels"]))


# ============================================================================================ members
def _sizes(model_name: str, size: int) -> tuple[int, int]:
    """(image_size, input_size) for a network input of ``size`` keeping the recipe's load/input ratio."""
    from hpa_zoo.recipe import load_recipe

    team = load_recipe(model_name)
    return int(round(size * team.image_size / team.input_size)), int(size)


def run_member(name: str, folder: Path, out: Path, budget: Budget, seed: int, verbose: int,
               run: Optional[Path] = None) -> dict:
    """Train one registered model, predict the test split with its team's TTA and thresholds, score it.
    Degenerate LB-ratio labels (Team 1) switch to the tie-aware rank variant (`hpa_zoo.infer.thresholds`)."""
    from hpa_zoo.nn import metrics
    from hpa_zoo.infer.ensemble import load_predictions, write_sidecar
    from hpa_zoo.infer.predict import predict
    from hpa_zoo.train.trainer import train

    image_size, input_size = _sizes(name, budget.size)
    run = run or out / "runs" / name
    t0 = time.time()
    preset = train(name, folder, fold=0, out_dir=run, epochs=budget.epochs, image_size=image_size,
                   input_size=input_size, batch_size=budget.batch_size, seed=seed, tie_fallback=True,
                   recipe_overrides=_overrides(name, folder, budget, image_size, input_size), verbose=verbose)
    train_s = time.time() - t0
    meta = json.loads((preset / "metadata.json").read_text()) if (preset / "metadata.json").is_file() else {}
    rule = (meta.get("recipe") or {}).get("thresholds", {}).get("rule", "")
    t0 = time.time()
    if name.endswith("1024crop512"):
        ids, probs, labels = _five_crop_stacker(name, preset, folder, run, image_size, input_size, budget, seed)
        infer_s = time.time() - t0
        tta = "5 fixed crops + stacker (teams.md §4.2)"
    else:
        # Label-free rules (Teams 1 and 4) are re-fitted on the test probabilities, as the teams did; label-based
        # ones (Teams 2 and 3) use the thresholds fitted on the validation fold.
        refit = "refit" if rule in ("lb_ratio_match", "freq_match") else None
        submission, prob_csv = predict(preset, folder, out_dir=run / "test", thresholds=refit,
                                       batch_size=budget.batch_size or 8, seed=seed, tie_fallback=True,
                                       verbose=verbose)
        infer_s = time.time() - t0
        write_sidecar(prob_csv, model_name=name, fold="test", tta=(meta.get("recipe") or {}).get("tta"),
                      n_rows=len(metrics.read_predictions_csv(submission)))
        loaded = load_predictions(prob_csv)
        ids, probs = list(loaded.ids), loaded.probs
        labels = metrics.read_predictions_csv(submission)
        from hpa_zoo.data.labels import multi_hot_matrix

        labels = multi_hot_matrix(list(labels["labels"]))
        tta = json.dumps((meta.get("recipe") or {}).get("tta", {}))
    return {"ids": ids, "probs": probs, "labels": labels, "train_s": train_s, "infer_s": infer_s,
            "tta": tta, "threshold_rule": rule, "image_size": image_size, "input_size": input_size}


def _overrides(name: str, folder: Path, budget: Budget, image_size: int, input_size: int) -> dict:
    """The budget's recipe overrides for ``name`` (warm-up + cosine, training-label ratio targets, the epoch whose
    weights are kept when it is not the recipe's best), or {}."""
    from hpa_zoo.demo import from_scratch_overrides
    from hpa_zoo.recipe import load_recipe

    keep = {} if budget.keep_weights == "best" else {"keep_weights": budget.keep_weights}
    if not (budget.warmup_epochs > 0 or budget.peak_lr is not None or budget.train_ratio_targets):
        return keep
    recipe = load_recipe(name, epochs=budget.epochs, image_size=image_size, input_size=input_size,
                         batch_size=budget.batch_size)
    overrides = from_scratch_overrides(recipe, folder / "train.csv", warmup_epochs=budget.warmup_epochs,
                                       peak_lr=budget.peak_lr)
    if not budget.train_ratio_targets:
        overrides.pop("thresholds", None)
    return {**overrides, **keep}


def _five_crop_stacker(name, preset, folder, run, image_size, input_size, budget, seed):
    """Team 4's 1024crop512 inference: 5 fixed crops -> stacker trained on the validation fold's crops."""
    import pandas as pd

    from hpa_zoo.infer import ensemble
    from hpa_zoo.zoo import models_api
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv
    from zoo_models.teams import team4_wsg

    model = models_api.load(str(preset))
    folds = pd.read_csv(run / "folds.csv", dtype={"Id": str})
    val_ids = list(folds.loc[folds["fold"] == 0, "Id"])
    train_df = read_labels_csv(folder / "train.csv").set_index("Id")
    val_y = multi_hot_matrix([train_df.loc[i, "labels"] for i in val_ids])
    test_ids = list(read_labels_csv(folder / "sample_submission.csv", require_target=False)["Id"])
    bs = budget.batch_size or 8
    val_crops = team4_wsg.predict_five_crops(model, _read_images(folder, "train", val_ids, image_size),
                                             crop_size=input_size, batch_size=bs)
    test_crops = team4_wsg.predict_five_crops(model, _read_images(folder, "test", test_ids, image_size),
                                              crop_size=input_size, batch_size=bs)
    stacker = team4_wsg.train_stacker(val_crops, val_y, epochs=budget.stacker_epochs, seed=seed)
    probs = np.asarray(stacker(test_crops), np.float32)
    ensemble.save_predictions(run / "test" / "probabilities.csv", test_ids, probs, model_name=name, fold="test",
                              tta="five_crop_stacker")
    labels = ensemble.threshold_labels(probs, team4_wsg.THRESHOLDS)
    return test_ids, probs, labels


# ============================================================================================ member runs
def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs() -> int:
    """Member runs trained at once by default: 2 on a CPU-only machine with at least 2 cores, else 1.

    Measured on 2 cores (benchmarks/README.md): one DenseNet121 training at 64 px keeps about 1.4 of the 2 cores
    busy, and two single-threaded runs side by side finish together in 0.65x the time of the two one after
    another. On a GPU the runs share one device, so they go one after another."""
    if _cores() < 2:
        return 1
    import tensorflow as tf

    return 1 if tf.config.list_physical_devices("GPU") else 2


def _run_members(todo, run_dir, folder: Path, out: Path, budget: Budget, verbose: int, jobs: int,
                 y_true: np.ndarray, truth_ids: Sequence[str], t_start: float) -> dict:
    """Train and score every (model, seed) of ``todo``: {(model, seed): `run_member` dict, or the exception it
    raised}. ``jobs`` > 1: that many at once, each in a fresh spawned process with ``cores // jobs`` threads."""
    results, n = {}, len(todo)

    def finished(k: int, name: str, s: int, res) -> None:
        results[(name, s)] = res
        if isinstance(res, BaseException):
            _progress(verbose, f"[{k}/{n}] {name} seed {s}: failed: {type(res).__name__}: {res}", t_start)
        else:
            _progress(verbose, f"[{k}/{n}] {name} seed {s}: trained in {res['train_s']:.0f} s, test TTA "
                               f"{res['infer_s']:.0f} s, test macro F1 {_macro_f1(y_true, truth_ids, res):.3f}",
                      t_start)

    start = lambda k, name, s: (f"[{k}/{n}] {name} seed {s}: training {budget.epochs} epochs at "  # noqa: E731
                                f"{budget.size} px, then its TTA on {len(truth_ids)} test images")
    if jobs <= 1:
        for k, (name, s) in enumerate(todo, 1):
            _progress(verbose, start(k, name, s), t_start)
            try:
                res = run_member(name, folder, out, budget, s, 2 if verbose >= 2 else 0, run=run_dir(name, s))
            except Exception as exc:
                if verbose:
                    traceback.print_exc()
                res = exc
            finished(k, name, s, res)
        return results

    import importlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from dataclasses import asdict

    threads = max(1, _cores() // jobs)
    # the workers import this file as `benchmarks.compare_teams` (the parent's sys.path travels with spawn), however
    # the parent loaded it (as a script, or by file path in the tests)
    worker = importlib.import_module("benchmarks.compare_teams")._member_job
    _progress(verbose, f"{n} member runs, {jobs} at a time, {threads} thread(s) each", t_start)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = {pool.submit(worker, name, str(folder), str(out), asdict(budget), s, verbose,
                               str(run_dir(name, s)), threads, start(k, name, s), t_start): (k, name, s)
                   for k, (name, s) in enumerate(todo, 1)}
        for future in as_completed(futures):
            k, name, s = futures[future]
            try:
                res = future.result()
            except Exception as exc:  # raised in the worker, or the worker died (BrokenProcessPool)
                res = exc
            finished(k, name, s, res)
    return results


def _member_job(name: str, folder: str, out: str, budget: dict, seed: int, verbose: int, run: str, threads: int,
                label: str, t_start: float) -> dict:
    """One member run in a worker process: set TensorFlow's thread pools to ``threads``, then `run_member`."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    _progress(verbose, label, t_start)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in budget.items()}
    try:
        return run_member(name, Path(folder), Path(out), Budget(**fields), seed, 2 if verbose >= 2 else 0,
                          run=Path(run))
    except Exception:
        if verbose:
            traceback.print_exc()
        raise


# ============================================================================================ baseline
def run_baseline(folder: Path, size: int, seed: int) -> dict:
    """`hpa_zoo.train.baselines.PixelStatsBaseline` (logistic regression on pooled pixel statistics, F1-optimal
    thresholds on the training images) trained on ``train/`` and scored on ``test/``."""
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv

    t0 = time.time()
    train_df = read_labels_csv(folder / "train.csv")
    y = multi_hot_matrix(list(train_df["labels"]))
    model = PixelStatsBaseline().fit(_read_images(folder, "train", list(train_df["Id"]), size), y, seed=seed)
    train_s = time.time() - t0
    test_ids = list(read_labels_csv(folder / "sample_submission.csv", require_target=False)["Id"])
    t0 = time.time()
    test_images = _read_images(folder, "test", test_ids, size)
    probs = model.predict_proba(test_images)
    infer_s = time.time() - t0
    return {"ids": test_ids, "probs": probs.astype(np.float32), "labels": model.predict(test_images),
            "train_s": train_s, "infer_s": infer_s, "tta": "none", "threshold_rule": "f1_optimal (train images)",
            "image_size": size, "input_size": size}


# ============================================================================================ report
def _row(name: str, team: str, result, truth_ids, y_true, reported: str, status: str) -> dict:
    """One report row. ``result``: a `run_member` / `run_baseline` dict, a list of them (one per seed: every number
    is the mean over the seeds, ``train_s`` their sum) or None (not run)."""
    from hpa_zoo.nn import metrics

    row = {"model": name, "team": team, "status": status, "macro_f1": np.nan, "macro_f1_ci_low": np.nan,
           "macro_f1_ci_high": np.nan, "macro_f1_per_seed": "", "single_label_f1": np.nan,
           "multi_label_f1": np.nan, "macro_precision": np.nan, "macro_recall": np.nan, "train_s": np.nan,
           "infer_images_per_s": np.nan, "tta": "", "thresholds": "", "their_reported_hpa_score": reported}
    if result is None:
        return row
    results = result if isinstance(result, list) else [result]
    labels, reports = [], []
    for res in results:
        index = {i: k for k, i in enumerate(res["ids"])}
        if set(index) != set(truth_ids):
            raise HpaDataError(f"{name}: predicted ids differ from test_labels.csv")
        labels.append(np.asarray(res["labels"])[[index[i] for i in truth_ids]])
        reports.append(metrics.f1_report(y_true, labels[-1]))
    ci = metrics.bootstrap_macro_f1(y_true, np.stack(labels), n_boot=BOOTSTRAP_RESAMPLES, seed=0)
    mean = lambda values: float(np.mean([np.nan if v is None else v for v in values]))  # noqa: E731
    per = lambda key, c: mean([r["per_class"][c][key] for r in reports])  # noqa: E731
    row.update(macro_f1=ci["macro_f1"], macro_f1_ci_low=ci["low"], macro_f1_ci_high=ci["high"],
               macro_f1_per_seed=" ".join(f"{r['macro_f1']:.4f}" for r in reports),
               single_label_f1=mean([r["single_label_macro_f1"] for r in reports]),
               multi_label_f1=mean([r["multi_label_macro_f1"] for r in reports]),
               macro_precision=float(np.mean([per("precision", c) for c in CLASS_NAMES])),
               macro_recall=float(np.mean([per("recall", c) for c in CLASS_NAMES])),
               train_s=float(sum(r["train_s"] for r in results)),
               infer_images_per_s=len(truth_ids) / max(float(np.mean([r["infer_s"] for r in results])), 1e-9),
               tta=results[0]["tta"], thresholds=results[0]["threshold_rule"])
    row["per_class_f1"] = [per("f1", c) for c in CLASS_NAMES]
    return row


def _reported(spec) -> str:
    """The team's own leaderboard numbers (sources: the registry row's ``reported``)."""
    return "; ".join(f"{s.metric} {s.value:.3f}" for s in spec.reported) or "none reported"


def _plots(rows: list[dict], class_order: np.ndarray, out: Path, banner: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "ok"]
    paths = []
    fig, ax = plt.subplots(figsize=(10, 4))
    f1 = np.array([r["macro_f1"] for r in done])
    err = np.array([[r["macro_f1"] - r["macro_f1_ci_low"] for r in done],
                    [r["macro_f1_ci_high"] - r["macro_f1"] for r in done]])
    ax.bar([r["model"] for r in done], f1, yerr=np.clip(err, 0, None), capsize=4,
           color=["grey" if r["model"] == BASELINE else "tab:blue" for r in done])
    ax.set_ylabel("macro F1 (ours), bootstrap 95 % interval")
    ax.set_title(f"Macro F1 per model — {banner}")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    paths.append(_save(fig, out / "macro_f1.png"))

    fig, ax = plt.subplots(figsize=(12, 5))
    for r in done:
        ax.plot(range(NUM_CLASSES), np.asarray(r["per_class_f1"])[class_order], marker="o", ms=3, label=r["model"])
    ax.set_xticks(range(NUM_CLASSES), [CLASS_NAMES[c] for c in class_order], rotation=90, fontsize=7)
    ax.set_ylabel("F1")
    ax.set_title(f"Per-class F1, classes by decreasing frequency (Fig. 2c) — {banner}")
    ax.legend(fontsize=6)
    paths.append(_save(fig, out / "per_class_f1.png"))

    fig, ax = plt.subplots(figsize=(10, 4))
    xs = np.arange(len(done))
    ax.bar(xs - 0.2, [r["single_label_f1"] for r in done], 0.4, label="single-label images")
    ax.bar(xs + 0.2, [r["multi_label_f1"] for r in done], 0.4, label="multi-label images")
    ax.set_xticks(xs, [r["model"] for r in done], rotation=60, fontsize=7)
    ax.set_ylabel("macro F1")
    ax.set_title(f"Single- vs multi-label macro F1 (Fig. 2d) — {banner}")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "single_vs_multi_label.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _fmt(v, digits=4) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def ranking(rows: list[dict]) -> list[tuple[str, float]]:
    """(model, macro F1) of the rows that ran, best first (ties keep the row order)."""
    ok = [(r["model"], float(r["macro_f1"])) for r in rows if r["status"] == "ok"]
    return sorted(ok, key=lambda mf: -mf[1])


def separation(rows: list[dict]) -> str:
    """Whether the best recipe's bootstrap interval lies above the baseline's (one sentence)."""
    ok = [r for r in rows if r["status"] == "ok" and r["model"] != BASELINE]
    base = next((r for r in rows if r["model"] == BASELINE and r["status"] == "ok"), None)
    if not ok or base is None:
        return ""
    best = max(ok, key=lambda r: r["macro_f1"])
    above = best["macro_f1_ci_low"] > base["macro_f1_ci_high"]
    return (f"Best recipe `{best['model']}` {best['macro_f1']:.4f} (95 % {best['macro_f1_ci_low']:.4f}–"
            f"{best['macro_f1_ci_high']:.4f}) vs baseline {base['macro_f1']:.4f} ({base['macro_f1_ci_low']:.4f}–"
            f"{base['macro_f1_ci_high']:.4f}): the intervals "
            + ("do not overlap, the recipe is above." if above else "overlap: this budget does not separate them."))


def write_report(rows: list[dict], out: Path, *, synthetic: bool, settings: dict, class_order: np.ndarray) -> Path:
    """``report.md``, ``report.csv`` (one row per model + the baseline), ``per_class_f1.csv`` and the PNGs."""
    import pandas as pd

    banner = SYNTHETIC_BANNER if synthetic else "your data"
    flat = [{k: v for k, v in r.items() if k != "per_class_f1"} for r in rows]
    atomic_to_csv(pd.DataFrame(flat), out / "report.csv", index=False)
    per_class = pd.DataFrame({r["model"]: r["per_class_f1"] for r in rows if "per_class_f1" in r},
                             index=list(CLASS_NAMES))
    atomic_to_csv(per_class.iloc[class_order].rename_axis("class").reset_index(), out / "per_class_f1.csv")
    pngs = _plots(rows, class_order, out, banner)
    lines = [f"# Team comparison — {banner}", ""]
    if synthetic:
        lines += ["> **Synthetic data — not HPA results.** These numbers show how the recipes behave on hpa-zoo's "
                  "synthetic images at a tiny budget; the column *their reported HPA score* is the teams' own "
                  "Kaggle leaderboard number, not measured here.", ""]
    ok = ranking(rows)
    if ok:
        place = [m for m, _ in ok].index(BASELINE) + 1 if BASELINE in dict(ok) else None
        above = [m for m, f in ok if m != BASELINE and place and f > dict(ok)[BASELINE]]
        lines += ["Ranking by macro F1 (ours): " + ", ".join(f"{k}. `{m}` {f:.4f}" for k, (m, f) in
                                                            enumerate(ok, 1)) + ".",
                  "" if place is None else f"The weak baseline is {place} of {len(ok)}; "
                  f"{len(above)} recipe(s) score above it" + (f" ({', '.join(above)})." if above else "."),
                  separation(rows), ""]
    lines += [f"Settings: `{json.dumps(settings)}`", "",
              "| model | team | status | macro F1 (ours) | 95 % interval | per seed | single-label F1 | "
              "multi-label F1 | macro precision | macro recall | train s | inference img/s | thresholds | their reported HPA score |",
              "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    ranked = sorted(rows, key=lambda r: -r["macro_f1"] if r["status"] == "ok" else 1.0)
    for r in ranked:
        interval = (f"{_fmt(r['macro_f1_ci_low'])}–{_fmt(r['macro_f1_ci_high'])}"
                    if r["status"] == "ok" else "—")
        lines.append(f"| {r['model']} | {r['team']} | {r['status']} | {_fmt(r['macro_f1'])} | {interval} | "
                     f"{r['macro_f1_per_seed'] or '—'} | {_fmt(r['single_label_f1'])} | "
                     f"{_fmt(r['multi_label_f1'])} | {_fmt(r['macro_precision'])} | "
                     f"{_fmt(r['macro_recall'])} | {_fmt(r['train_s'], 1)} | {_fmt(r['infer_images_per_s'], 1)} | "
                     f"{r['thresholds']} | {r['their_reported_hpa_score']} |")
    lines += ["", f"Baseline `{BASELINE}`: per-class logistic regression on per-channel mean/std/percentiles "
                  f"{BASELINE_PERCENTILES} of the whole image (deliberately weak).",
              f"Macro F1 is the mean over the seeds {settings.get('seeds')}; the interval is a percentile bootstrap "
              f"({BOOTSTRAP_RESAMPLES} resamples of the test images) of that seed-mean; train s is summed over seeds.",
              "Inference images/s include reading the test images and the team's TTA.",
              "Their reported HPA scores come from the registry (`hpa-zoo models`, field `reported`, with sources); "
              "they were measured by the teams on the Kaggle leaderboard, not by this benchmark.", "",
              "Files: `report.csv`, `per_class_f1.csv` (classes by decreasing training frequency), " +
              ", ".join(f"`{p.name}`" for p in pngs), ""]
    lines += [f"![{p.stem}]({p.name})" for p in pngs]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


# ============================================================================================ main
def compare(out: str | os.PathLike, *, budget: str = "small", models: Optional[Sequence[str]] = None,
            data_dir: Optional[str] = None, size: Optional[int] = None, epochs: Optional[int] = None,
            seed: Optional[int] = None, seeds: Optional[Sequence[int]] = None, verbose: int = 0,
            jobs: Optional[int] = None, keep_weights: Optional[str] = None) -> Path:
    """Run the comparison and return the path of ``report.md`` (see the module docstring).

    Args:
        out: output folder (``runs/<model>/``, ``synthetic/``, ``report.*``, PNGs).
        budget: ``"micro"``, ``"small"`` or ``"full"`` (`BUDGETS`).
        models: registry names to train (default: every registered model with a recipe). The others still get a
            report row, marked "not run".
        data_dir: a Kaggle-layout folder with test labels (default: synthetic data).
        size, epochs: override the budget's network input side / epochs.
        seed: a single data/training/prediction seed (default: the budget's seeds).
        seeds: training seeds of every member (default the budget's; the data seed is the first).
        verbose: 0 quiet; 1 one line per member and seed (the CLI's default); 2 also every training's per-epoch
            lines and messages (``-v``).
        jobs: member runs (one model, one seed) trained at once, each in its own process with
            ``cores // jobs`` TensorFlow threads (`default_jobs` when None: 2 on a CPU-only machine with at least 2
            cores, else 1). 1 runs them one after another in this process. The results are the same runs; their
            floating-point sums differ with the thread count, so figures match a run with the same ``jobs``.
        keep_weights: ``"best"`` or ``"last"``: which epoch's weights every member keeps (default: the budget's,
            `Budget.keep_weights`).
    """
    from hpa_zoo.checks import positive_int
    from hpa_zoo.recipe import KEEP_WEIGHTS
    from hpa_zoo.data.labels import read_labels_csv
    from hpa_zoo.registry import get_spec, list_models

    if budget not in BUDGETS:
        raise ConfigError(f"budget={budget!r}: use one of {sorted(BUDGETS)}")
    positive_int(size, "size", allow_none=True, hint="--size, the network input side")
    positive_int(epochs, "epochs", allow_none=True, hint="--epochs")
    positive_int(jobs, "jobs", allow_none=True, hint="--jobs, the member runs trained at once")
    if keep_weights is not None and keep_weights not in KEEP_WEIGHTS:
        raise ConfigError(f"keep_weights={keep_weights!r}: use one of {list(KEEP_WEIGHTS)} (--keep-weights), or None "
                          f"for the budget's")
    if seeds is not None and not list(seeds):
        raise ConfigError("seeds=[]: give at least one seed (--seeds), or None for the budget's")
    b = BUDGETS[budget]
    seeds = tuple(int(s) for s in (seeds or ((seed,) if seed is not None else b.seeds)))
    b = replace(b, size=size or b.size, epochs=epochs or b.epochs, seeds=seeds,
                keep_weights=keep_weights or b.keep_weights)
    seed = seeds[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    folder, synthetic = prepare_data(out, b, data_dir, seed)
    truth_ids, y_true = _test_truth(folder)
    all_names = list_models()
    trainable = [n for n in all_names if get_spec(n).recipe]
    chosen = list(models) if models else [m for m in (b.models or trainable)]
    unknown = [m for m in chosen if m not in all_names]
    if unknown:
        get_spec(unknown[0])  # UnknownModelError with suggestions
    skipped = "not run (--models)" if models else f"not run ({budget} budget; add it with --models)"
    run_dir = lambda name, s: out / "runs" / (name if len(seeds) == 1 else f"{name}_seed{s}")  # noqa: E731
    todo = [(name, s) for name in all_names if name in chosen for s in seeds]
    jobs = min(int(jobs) if jobs is not None else default_jobs(), max(len(todo), 1))
    results = _run_members(todo, run_dir, folder, out, b, verbose, jobs, y_true, truth_ids, t_start)
    rows, done = [], []
    for name in all_names:
        spec = get_spec(name)
        if name not in chosen:
            rows.append(_row(name, spec.team, None, truth_ids, y_true, _reported(spec),
                             skipped if spec.recipe else "not run (no recipe)"))
            continue
        failed = [results[(name, s)] for s in seeds if isinstance(results[(name, s)], BaseException)]
        if failed:  # one recipe failing (e.g. too small for its backbone) must not stop the others
            exc = failed[0]
            reason = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            rows.append(_row(name, spec.team, None, truth_ids, y_true, _reported(spec), reason.replace("|", "/")))
            continue
        rows.append(_row(name, spec.team, [results[(name, s)] for s in seeds], truth_ids, y_true, _reported(spec),
                         "ok"))
        done.append((name, run_dir(name, seeds[0])))
    _progress(verbose, "baseline: pixel-statistics logistic regression", t_start)
    base = run_baseline(folder, b.size, seed)
    rows.append(_row(BASELINE, "baseline", base, truth_ids, y_true, "—", "ok"))
    train_labels = read_labels_csv(folder / "train.csv")
    from hpa_zoo.data.labels import multi_hot_matrix

    freq = multi_hot_matrix(list(train_labels["labels"])).sum(0).astype(np.int64)  # uint8 sums are unsigned
    class_order = np.argsort(-freq, kind="stable")
    settings = {"budget": budget, "data": str(folder), "synthetic": synthetic, "size": b.size, "epochs": b.epochs,
                "batch_size": b.batch_size, "seeds": list(seeds), "preset": b.preset if synthetic else None,
                "warmup_epochs": b.warmup_epochs, "peak_lr": b.peak_lr, "train_ratio_targets": b.train_ratio_targets,
                "keep_weights": b.keep_weights,
                "n_train": len(train_labels), "n_test": len(truth_ids), "jobs": jobs,
                "wall_s": round(time.time() - t_start, 1)}
    path = write_report(rows, out, synthetic=synthetic, settings=settings, class_order=class_order)
    figures(done, folder, out / "figures", synthetic=synthetic, verbose=verbose)
    return path


def figures(done: Sequence[tuple[str, Path]], folder: Path, out: Path, *, synthetic: bool, verbose: int = 0):
    """The paper's figures (`hpa_zoo.analysis.report.figure_report`: Fig. 2a-d, Supp. Fig. 2, Fig. 3 Grad-CAMs of each
    trained member on the same test images) for the members' test predictions (the first seed's run), in ``out``.
    Returns the report summary, or None when no member was trained. A CAM failure drops the CAM panel only."""
    from hpa_zoo.zoo.models_api import load
    from hpa_zoo.analysis.report import figure_report

    done = [(name, run) for name, run in done if (run / "test" / "probabilities.csv").is_file()]
    if not done:
        return None
    csvs = [run / "test" / "probabilities.csv" for _, run in done]
    label = "synthetic data — not an HPA result" if synthetic else f"{folder} (your data)"
    kwargs = dict(out_dir=out, data_label=label, train_csv=folder / "train.csv")
    try:
        models = [(name, load(run / "preset")) for name, run in done]
        summary = figure_report(csvs, folder / "test_labels.csv", cam_models=models, images_dir=folder / "test",
                                **kwargs)
    except Exception as exc:  # e.g. a model without a 4-D layer: the Fig. 2 figures still come
        if verbose:
            print(f"figures: Grad-CAM panel left out ({type(exc).__name__}: {exc})", flush=True)
        summary = figure_report(csvs, folder / "test_labels.csv", **kwargs)
    if verbose:
        print(f"figures: {summary['html']}", flush=True)
    return summary


def _progress(verbose: int, message: str, t_start: float) -> None:
    """One progress line with the elapsed wall time (verbose >= 1); a benchmark of an hour must show it is alive."""
    if verbose:
        print(f"{(time.time() - t_start) / 60:5.1f} min  {message}", flush=True)


def _macro_f1(y_true: np.ndarray, truth_ids: Sequence[str], result: dict) -> float:
    """Macro F1 of one member run's test labels (``result["labels"]``, (N, 28) uint8) against the truth rows."""
    from hpa_zoo.nn import metrics

    index = {i: k for k, i in enumerate(result["ids"])}
    labels = np.asarray(result["labels"])[[index[i] for i in truth_ids]]
    return float(metrics.f1_report(y_true, labels)["macro_f1"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (``python benchmarks/compare_teams.py --help``); returns the exit status 0."""
    from hpa_zoo.recipe import KEEP_WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/compare_teams", help="output folder")
    parser.add_argument("--budget", default="small", choices=sorted(BUDGETS))
    parser.add_argument("--models", nargs="*", help="registry names to train (default: the budget's models; "
                                                    "full: all with a recipe)")
    parser.add_argument("--data-dir", help="Kaggle-layout folder with test/ and test_labels.csv (default: synthetic)")
    parser.add_argument("--size", type=int, help="network input side (overrides the budget)")
    parser.add_argument("--epochs", type=int, help="epochs (overrides the budget)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the budget's; small: 0 1)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print each training's per-epoch lines (default: one line per member and seed)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the report's path")
    parser.add_argument("--jobs", type=int, help="member runs trained at once, each in its own process (default: 2 "
                                                 "on a CPU-only machine with at least 2 cores, else 1)")
    parser.add_argument("--keep-weights", choices=KEEP_WEIGHTS,
                        help="which epoch's weights every member keeps: best (on each recipe's monitor, the teams' "
                             "rule) or last (default: the budget's)")
    args = parser.parse_args(argv)
    path = compare(args.out, budget=args.budget, models=args.models, data_dir=args.data_dir, size=args.size,
                   epochs=args.epochs, seeds=args.seeds,
                   verbose=0 if args.quiet else 2 if args.verbose else 1, jobs=args.jobs,
                   keep_weights=args.keep_weights)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
