"""The competition metric: macro F1 over the 28 classes (teams.md §0.2), in NumPy and as a streaming Keras metric.

Definitions (all equal to scikit-learn's with ``zero_division=0``):

* per class c: ``F1_c = 2·TP_c / (2·TP_c + FP_c + FN_c)``, and 0 when the class is neither true nor predicted
  anywhere (``TP_c + FP_c + FN_c = 0``); precision = TP/(TP+FP), recall = TP/(TP+FN), 0 when undefined;
* macro F1 = the unweighted mean over **all** classes (a class absent from the truth still counts, with F1 0
  unless it is also never predicted — then also 0), as ``sklearn.metrics.f1_score(average="macro")`` does for
  multi-label indicator arrays;
* the single-/multi-label split (the paper's Fig. 2d): the same macro F1 computed on the rows with exactly one
  true label and on the rows with two or more. Rows with no true label belong to neither.
"""
from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import ops

from hpa_zoo.constants import CLASS_NAMES, NUM_CLASSES
from hpa_zoo.errors import HpaDataError
from hpa_zoo.data.labels import multi_hot_matrix, parse_targets, read_labels_csv


def _binary(y, name: str) -> np.ndarray:
    """Validate a (N, C) 0/1 array (bool, int or float) and return it as uint8."""
    arr = np.asarray(y)
    if arr.ndim != 2:
        raise HpaDataError(f"{name}: expected a (N, C) multi-hot array, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise HpaDataError(f"{name}: values must be 0/1 (threshold probabilities first, e.g. with "
                           f"hpa_zoo.infer.thresholds.apply_thresholds); found {np.unique(arr)[:5]}")
    return arr.astype(np.uint8)


def _counts(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class TP, FP, FN of two (N, C) 0/1 arrays: three (C,) int64 arrays."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if t.shape != p.shape:
        raise HpaDataError(f"y_true has shape {t.shape} but y_pred has {p.shape}; they must match (N, C)")
    t, p = t.astype(np.int64), p.astype(np.int64)
    return (t * p).sum(0), ((1 - t) * p).sum(0), (t * (1 - p)).sum(0)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den == 0 (scikit-learn's zero_division=0); float64."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_scores(y_true, y_pred) -> dict[str, np.ndarray]:
    """Per-class F1, precision, recall and support.

    Args:
        y_true, y_pred: (N, C) 0/1 arrays (bool/int/float), the truth and the thresholded predictions.
    Returns:
        ``{"f1", "precision", "recall"}``: (C,) float64; ``"support"``: (C,) int64 (true positives + false negatives).
    Raises:
        HpaDataError: shapes differ, are not 2-D, or values are not 0/1.
    """
    tp, fp, fn = _counts(y_true, y_pred)
    return {"f1": _safe_div(2 * tp, 2 * tp + fp + fn), "precision": _safe_div(tp, tp + fp),
            "recall": _safe_div(tp, tp + fn), "support": tp + fn}


def macro_f1(y_true, y_pred) -> float:
    """The competition metric: unweighted mean of the per-class F1 over all C columns.

    Equals ``sklearn.metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)``.

    Args:
        y_true, y_pred: (N, C) 0/1 arrays.
    Returns:
        macro F1 in [0, 1] (0.0 for N = 0).
    """
    return float(per_class_scores(y_true, y_pred)["f1"].mean())


def bootstrap_macro_f1(y_true, y_pred, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Macro F1 with a percentile bootstrap interval over images (rows resampled with replacement).

    Resample b draws ``rng.integers(0, N, N)`` from ``numpy.random.default_rng(seed)`` (b = 0 .. n_boot - 1, in
    order) and scores `macro_f1` on those rows; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (``numpy.quantile``, linear) of the ``n_boot`` scores. With S predictions of
    the same images (e.g. one model trained with S seeds) a resample's score is the mean of their S macro F1s on the
    same rows, so the interval covers the seed-mean.

    Args:
        y_true: (N, C) 0/1 array (N >= 1).
        y_pred: (N, C) 0/1 array, or (S, N, C) for S predictions of the same images.
        n_boot: resamples (>= 1).
        confidence: interval coverage in (0, 1).
        seed: seed of the resampling.
    Returns:
        ``{"macro_f1": float (all rows; the mean over S), "low": float, "high": float, "n_boot": int,
        "confidence": float}``.
    Raises:
        HpaDataError: bad arrays (see `per_class_scores`), N = 0, or bad ``n_boot`` / ``confidence``.
    """
    t = _binary(y_true, "y_true").astype(np.int64)
    p = np.asarray(y_pred)
    p = np.stack([_binary(q, "y_pred") for q in (p if p.ndim == 3 else p[None])]).astype(np.int64)
    if p.shape[1:] != t.shape or len(t) == 0:
        raise HpaDataError(f"y_true {t.shape} and y_pred {np.shape(y_pred)} must be the same non-empty (N, C) shape "
                           f"(or (S, N, C) predictions)")
    if int(n_boot) < 1 or not 0 < float(confidence) < 1:
        raise HpaDataError(f"n_boot={n_boot} must be >= 1 and confidence={confidence} in (0, 1)")
    rng = np.random.default_rng(seed)
    n = len(t)
    tp_rows, fp_rows, fn_rows = t[None] * p, (1 - t[None]) * p, t[None] * (1 - p)  # (S, N, C)
    scores = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        # per-row weights: how often each image was drawn; the class counts are then weighted sums
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        tp, fp, fn = w @ tp_rows, w @ fp_rows, w @ fn_rows  # (S, C)
        scores[b] = _safe_div(2 * tp, 2 * tp + fp + fn).mean(axis=1).mean()
    alpha = (1 - float(confidence)) / 2
    low, high = np.quantile(scores, [alpha, 1 - alpha])
    return {"macro_f1": float(np.mean([macro_f1(t, q) for q in p])), "low": float(low), "high": float(high),
            "n_boot": int(n_boot), "confidence": float(confidence)}


def f1_report(y_true, y_pred, class_names=CLASS_NAMES) -> dict:
    """Macro F1, the per-class table, and macro F1 over single- vs multi-label images (Fig. 2d).

    Args:
        y_true, y_pred: (N, C) 0/1 arrays.
        class_names: C names (default: the 28 HPA classes).
    Returns:
        A JSON-serialisable dict: ``macro_f1`` (float); ``per_class``: name -> ``{"index", "f1", "precision",
        "recall", "support", "predicted"}`` in class order; ``single_label_macro_f1`` / ``multi_label_macro_f1``
        (float, or None when there is no such row) with ``n_single_label`` / ``n_multi_label``; ``n_images``.
    """
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    names = list(class_names)
    if len(names) != t.shape[1]:
        raise HpaDataError(f"{len(names)} class names for {t.shape[1]} columns; pass class_names of length "
                           f"{t.shape[1]}")
    scores = per_class_scores(t, p)
    n_true = t.sum(1)
    single, multi = n_true == 1, n_true >= 2
    predicted = p.sum(0)
    return {
        "macro_f1": float(scores["f1"].mean()),
        "n_images": int(len(t)),
        "single_label_macro_f1": macro_f1(t[single], p[single]) if single.any() else None,
        "multi_label_macro_f1": macro_f1(t[multi], p[multi]) if multi.any() else None,
        "n_single_label": int(single.sum()),
        "n_multi_label": int(multi.sum()),
        "per_class": {name: {"index": k, "f1": float(scores["f1"][k]), "precision": float(scores["precision"][k]),
                             "recall": float(scores["recall"][k]), "support": int(scores["support"][k]),
                             "predicted": int(predicted[k])}
                      for k, name in enumerate(names)},
    }


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def report_to_markdown(report: dict) -> str:
    """An ``f1_report`` dict as Markdown: the summary lines, then the per-class table, most frequent class first."""
    lines = [f"- macro F1: **{_fmt(report['macro_f1'])}** ({report['n_images']} images)",
             f"- single-label images: macro F1 {_fmt(report['single_label_macro_f1'])} "
             f"({report['n_single_label']} images)",
             f"- multi-label images: macro F1 {_fmt(report['multi_label_macro_f1'])} "
             f"({report['n_multi_label']} images)",
             "",
             "| # | class | support | predicted | precision | recall | F1 |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    rows = sorted(report["per_class"].items(), key=lambda kv: (-kv[1]["support"], kv[1]["index"]))
    for name, r in rows:
        lines.append(f"| {r['index']} | {name} | {r['support']} | {r['predicted']} | {r['precision']:.4f} | "
                     f"{r['recall']:.4f} | {r['f1']:.4f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- Keras metric
@keras.saving.register_keras_serializable(package="hpa_zoo")
class MacroF1(keras.metrics.Metric):
    """Streaming macro F1: accumulates per-class TP/FP/FN over batches (keras.ops, any backend).

    ``update_state(y_true, y_pred)``: y_true (B, C) multi-hot, y_pred (B, C) logits (``from_logits=True``) or
    probabilities; a prediction is positive when its probability is > ``threshold``. ``result()`` is the
    float32 macro F1 over all classes with zero_division=0, equal to ``macro_f1`` on the concatenated batches.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, threshold: float = 0.5, from_logits: bool = True,
                 name: str = "macro_f1", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self.tp, self.fp, self.fn = (self.add_variable(shape=(self.num_classes,), initializer="zeros", name=n,
                                                       dtype="float32") for n in ("tp", "fp", "fn"))

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch: y_true (B, C) 0/1, y_pred (B, C) logits or probabilities, sample_weight (B,) optional."""
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        scores = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        probs = ops.sigmoid(scores) if self.from_logits else scores
        pred = ops.cast(ops.greater(probs, self.threshold), "float32")
        weight = 1.0 if sample_weight is None else ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        self.tp.assign_add(ops.sum(y_true * pred * weight, axis=0))
        self.fp.assign_add(ops.sum((1.0 - y_true) * pred * weight, axis=0))
        self.fn.assign_add(ops.sum(y_true * (1.0 - pred) * weight, axis=0))

    def result(self):
        den = 2.0 * self.tp + self.fp + self.fn
        f1 = ops.where(den > 0, 2.0 * self.tp / ops.maximum(den, 1e-12), ops.zeros_like(den))
        return ops.mean(f1)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros_like(v))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "threshold": self.threshold,
                "from_logits": self.from_logits}


# ---------------------------------------------------------------------------------------------- CSV evaluation
def read_predictions_csv(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> pd.DataFrame:
    """Read a Kaggle submission ``Id,Predicted``; an empty ``Predicted`` means "no label" (allowed, teams.md §0.1).

    Returns:
        DataFrame with ``Id`` (str) and ``labels`` (sorted tuple of ints, possibly empty), in file order.
    Raises:
        HpaDataError: missing file/column, duplicate or empty Id, malformed class ids (naming file and line).
    """
    path = Path(path)
    ids = read_labels_csv(path, require_target=False)  # checks the file, the Id column, empty/duplicate ids
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    raw.columns = [str(c).strip() for c in raw.columns]
    if "Predicted" not in raw.columns:
        raise HpaDataError(f"{path}: missing column 'Predicted'; found {list(raw.columns)}; a submission's header "
                           f"is 'Id,Predicted' as in Kaggle's sample_submission.csv")
    id_list = ids["Id"].tolist()
    labels = parse_targets(raw["Predicted"].tolist(), where=lambda k: f"{path.name} line {k + 2} (Id {id_list[k]})",
                           num_classes=num_classes, allow_empty=True)
    return pd.DataFrame({"Id": id_list, "labels": labels})


def _missing(ids, other, what: str, limit: int = 5) -> str:
    absent = [i for i in ids if i not in other]
    head = ", ".join(absent[:limit]) + (f" ... (+{len(absent) - limit} more)" if len(absent) > limit else "")
    return f"{len(absent)} id(s) {what}: {head}" if absent else ""


def evaluate_csv(predictions_csv: str | os.PathLike, labels_csv: str | os.PathLike) -> dict:
    """Score a Kaggle submission (``Id,Predicted``) against a label CSV (``Id,Target``).

    Args:
        predictions_csv: the submission; empty ``Predicted`` = no label for that image.
        labels_csv: the truth, e.g. a train.csv subset or the synthetic ``test_labels.csv``.
    Returns:
        ``f1_report`` dict plus ``predictions_csv`` and ``labels_csv`` (str paths).
    Raises:
        HpaDataError: malformed CSVs, or ids present on one side only (naming a few of them).
    """
    pred = read_predictions_csv(predictions_csv)
    truth = read_labels_csv(labels_csv)
    pred_list, true_list = pred["Id"].tolist(), truth["Id"].tolist()  # plain lists: no per-item pandas access
    pred_ids, true_ids = set(pred_list), set(true_list)
    problems = [m for m in (_missing(true_list, pred_ids, f"of {Path(labels_csv).name} missing from "
                                                          f"{Path(predictions_csv).name}"),
                            _missing(pred_list, true_ids, f"of {Path(predictions_csv).name} missing from "
                                                          f"{Path(labels_csv).name}")) if m]
    if problems:
        raise HpaDataError("; ".join(problems) + "; predictions and labels must cover the same images "
                                                 "(predict every labelled image, or subset the label CSV)")
    by_id = dict(zip(pred_list, pred["labels"].tolist()))
    y_true = multi_hot_matrix(truth["labels"].tolist())
    y_pred = multi_hot_matrix([by_id[i] for i in true_list])
    return {**f1_report(y_true, y_pred), "predictions_csv": str(predictions_csv), "labels_csv": str(labels_csv)}
