"""Ensembling toolkit shared by every team: prediction files, blends, hill climbing, weighted voting, thresholds.

* **Prediction files** (`save_predictions` / `load_predictions`): a CSV with ``Id`` + one probability column per
  class name (the layout of `hpa_zoo.infer.predict`'s ``probabilities.csv``; `hpa_zoo.train.trainer`'s
  ``val_predictions.csv`` also has ``Target``/``Predicted``, and ``Target`` is read as the labels) and a JSON
  sidecar ``<file>.json`` with ``format_version``, ``model_name``, ``fold``, ``tta``, ``class_names`` and
  ``n_rows``. Both written atomically. Files without a sidecar load with empty metadata; `write_sidecar` adds one to
  a CSV written elsewhere; a sidecar of a newer format version is refused rather than misread.
* **Blends** of M probability arrays (N, C): `blend_mean` (Teams 2, 3; teams.md §2.6), `blend_logit_mean`
  (Russ, §4.1 step 2), `blend_weighted` (Christof's hill-climb weights, §4.1), `blend_class_weighted` (Russ'
  class-specific weights, §4.1).
* **Hill climbing** (`hill_climb`, teams.md §4.1 step 2, Christof ``hillclimb*.py``): greedy forward selection
  *with replacement* over models, up to ``n_steps`` = 30, the candidate ensemble being the running mean of the
  picked models' OOF probabilities, each step scored by macro F1 after a threshold rule (default
  frequency-matched, §4.1 step 3); a model picked k times gets weight k.
* **Weighted voting** (`weighted_vote`, §4.1 step 4) over binary submissions, and `parse_vote_filename`, our
  reading of Team 4's file-name encoding (the voting script itself is not in the repo).
* **Thresholds**: `threshold_labels` turns probabilities into labels with any team's `ThresholdConfig` through
  `hpa_zoo.infer.thresholds.from_config` (no rule is re-implemented here): Team 1 ``lb_ratio_match`` + forced top
  class, Team 2 ``f1_optimal_scaled`` with its fallbacks, Team 3 ``proportion_match``, Team 4 ``freq_match``,
  ``f1_optimal`` and ``fixed``.

Everything is NumPy (it runs after the networks); probabilities are float in [0, 1], labels uint8 0/1.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from hpa_zoo.atomic import atomic_to_csv, atomic_write_text
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.recipe import BlendConfig, ThresholdConfig, TTAConfig

#: Version of the sidecar layout written by `save_predictions`.
FORMAT_VERSION = 1
#: teams.md §4.1 step 2: Christof's hill climbing runs up to 30 steps (``nstep=30``).
HILL_CLIMB_STEPS = 30
#: Probabilities are clipped to [eps, 1 - eps] before taking logits (`blend_logit_mean`).
LOGIT_EPS = 1e-6
#: Columns of `hpa_zoo.train.trainer`'s ``val_predictions.csv`` besides Id and the classes.
_LABEL_COLUMN, _PREDICTED_COLUMN = "Target", "Predicted"


# ============================================================================================ prediction files
@dataclass(frozen=True)
class Predictions:
    """One model's (or blend's) probabilities for a list of images, as read by `load_predictions`.

    Attributes:
        ids: N image ids, in file order.
        probs: float32 (N, C) probabilities.
        class_names: the C class column names.
        model_name: which model produced them (None if the file has no sidecar).
        fold: the fold (int), ``"oof"``, ``"test"``... or None.
        tta: the TTA settings as a dict (None if unknown).
        y_true: uint8 (N, C) labels when the file has a ``Target`` column (``val_predictions.csv``), else None.
        path: the CSV it was read from.
    """

    ids: tuple[str, ...]
    probs: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    model_name: Optional[str] = None
    fold: Any = None
    tta: Optional[dict] = None
    y_true: Optional[np.ndarray] = None
    path: Optional[Path] = None


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a predictions CSV: ``preds.csv`` -> ``preds.csv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _check_probs(probs, n_classes: int, where: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise HpaDataError(f"{where}: probabilities must have shape (N, {n_classes}); got {probs.shape}")
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise HpaDataError(f"{where}: {int(bad.sum())} value(s) are not probabilities in [0, 1], first at row "
                           f"{row}, class {col} ({probs[row, col]!r}); pass sigmoid(logits), not logits")
    return probs


def _check_ids(ids, n_rows: int, where: str) -> list[str]:
    ids = [str(i) for i in ids]
    if len(ids) != n_rows:
        raise HpaDataError(f"{where}: {len(ids)} ids for {n_rows} rows of probabilities; give one id per row")
    empty = [k for k, i in enumerate(ids) if not i.strip()]
    if empty:
        raise HpaDataError(f"{where}: empty Id at row(s) {empty[:5]}; every row needs an image id")
    seen, dupes = set(), []
    for i in ids:
        if i in seen:
            dupes.append(i)
        seen.add(i)
    if dupes:
        raise HpaDataError(f"{where}: duplicate Id(s) {sorted(set(dupes))[:5]}; each image must appear once "
                           f"(average repeated predictions first)")
    return ids


def _tta_dict(tta) -> Optional[dict]:
    if tta is None or isinstance(tta, dict):
        return tta
    if isinstance(tta, TTAConfig):
        return dataclasses.asdict(tta)
    if isinstance(tta, str):
        return {"transforms": tta}
    raise ConfigError(f"tta={tta!r}: pass a TTAConfig, a dict, a string or None")


def save_predictions(path: str | os.PathLike, ids: Sequence[str], probs, *, model_name: str,
                     fold: Union[int, str, None] = None, tta: Union[TTAConfig, dict, str, None] = None,
                     class_names: Sequence[str] = CLASS_NAMES) -> Path:
    """Write probabilities as ``Id`` + one column per class name, plus the JSON sidecar `sidecar_path(path)`.

    Args:
        path: the CSV to write (its folder is created).
        ids: N unique, non-empty image ids.
        probs: (N, C) probabilities in [0, 1] (float; written with 6 decimals).
        model_name: the model (or blend) that produced them.
        fold: the fold id for out-of-fold predictions, or a tag such as ``"test"``.
        tta: the TTA used (`TTAConfig`, dict or name).
        class_names: C column names (default the 28 HPA classes).

    Returns:
        ``Path(path)``. Both files go through `hpa_zoo.atomic` (the CSV first, then the sidecar).

    Raises:
        HpaDataError: wrong shapes, ids count, duplicate/empty ids, values outside [0, 1].
    """
    import pandas as pd

    path = Path(path)
    names = [str(c) for c in class_names]
    probs = _check_probs(probs, len(names), str(path))
    ids = _check_ids(ids, len(probs), str(path))
    frame = pd.concat([pd.DataFrame({"Id": ids}), pd.DataFrame(probs, columns=names)], axis=1)
    atomic_to_csv(frame, path, float_format="%.6f")
    write_sidecar(path, model_name=model_name, fold=fold, tta=tta, class_names=names, n_rows=len(ids))
    return path


def write_sidecar(path: str | os.PathLike, *, model_name: str, fold: Union[int, str, None] = None,
                  tta: Union[TTAConfig, dict, str, None] = None, class_names: Sequence[str] = CLASS_NAMES,
                  n_rows: int) -> Path:
    """Write the JSON sidecar `sidecar_path(path)` of a predictions CSV written elsewhere (e.g. `hpa_zoo.infer.predict`'s
    ``probabilities.csv`` or `hpa_zoo.train.trainer`'s ``val_predictions.csv``), so it loads with its model name, fold
    and TTA.

    Args:
        path: the predictions CSV (``Id`` + one column per class name).
        model_name: the model (or blend) that produced it.
        fold: fold id (int) for out-of-fold predictions, or a tag such as ``"test"``.
        tta: the TTA used (`TTAConfig`, dict or name).
        class_names: the C class columns.
        n_rows: number of rows of the CSV (checked by `load_predictions`, which refuses a stale sidecar).

    Returns:
        the sidecar path (written atomically). Keys: ``format_version`` (`FORMAT_VERSION`), ``model_name``,
        ``fold``, ``tta``, ``class_names``, ``n_rows``.
    """
    meta = {"format_version": FORMAT_VERSION, "model_name": str(model_name), "fold": fold, "tta": _tta_dict(tta),
            "class_names": [str(c) for c in class_names], "n_rows": int(n_rows)}
    return atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2))


def load_predictions(path: str | os.PathLike, *, class_names: Sequence[str] = CLASS_NAMES) -> Predictions:
    """Read a predictions CSV (`save_predictions`, ``hpa_zoo.infer.predict``'s ``probabilities.csv``, or
    ``hpa_zoo.train.trainer``'s ``val_predictions.csv``) and its sidecar if present.

    Args:
        path: the CSV.
        class_names: the class columns expected when there is no sidecar (the sidecar's list wins otherwise).

    Returns:
        `Predictions` (probs float32 (N, C); y_true uint8 (N, C) when a ``Target`` column exists).

    Raises:
        HpaDataError: missing file or columns, duplicate/empty ids, non-probabilities, a sidecar that does not
            match the CSV (stale sidecar) — each message names the file and the fix.
    """
    import pandas as pd

    from hpa_zoo.data.labels import multi_hot_matrix, parse_target

    path = Path(path)
    if not path.is_file():
        raise HpaDataError(f"{path}: no such predictions file")
    meta: dict = {}
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise HpaDataError(f"{side}: not valid JSON ({exc}); delete it or re-save the predictions") from exc
        if not isinstance(meta, dict):
            raise HpaDataError(f"{side}: expected a JSON object (format_version, model_name, fold, tta, "
                               f"class_names, n_rows); delete it or re-save the predictions")
        version = meta.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise HpaDataError(f"{side}: format_version {version!r} is newer than this hpa-zoo reads "
                               f"({FORMAT_VERSION}); upgrade hpa-zoo to read it")
    names = [str(c) for c in meta.get("class_names", class_names)]
    frame = pd.read_csv(path, dtype={"Id": str}, keep_default_na=False, encoding="utf-8-sig")
    frame.columns = [str(c).strip() for c in frame.columns]
    if "Id" not in frame.columns:
        raise HpaDataError(f"{path}: no 'Id' column (found {list(frame.columns)[:6]}...); a predictions file is "
                           f"Id + one probability column per class")
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise HpaDataError(f"{path}: missing class column(s) {missing[:4]}{'...' if len(missing) > 4 else ''}; "
                           f"expected the {len(names)} columns {names[:2]}... (write it with "
                           f"hpa_zoo.infer.ensemble.save_predictions, or pass class_names=)")
    try:
        values = frame[names].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise HpaDataError(f"{path}: a class column holds text, not numbers ({exc})") from exc
    probs = _check_probs(values, len(names), str(path))
    ids = _check_ids(frame["Id"], len(probs), str(path))
    if "n_rows" in meta and int(meta["n_rows"]) != len(ids):
        raise HpaDataError(f"{side} says {meta['n_rows']} rows but {path} has {len(ids)}: the sidecar is stale; "
                           f"re-save the predictions")
    y_true = None
    if _LABEL_COLUMN in frame.columns:
        labels = [parse_target(t, where=f"{path.name} line {k + 2}") for k, t in enumerate(frame[_LABEL_COLUMN])]
        y_true = multi_hot_matrix(labels, num_classes=len(names))
    return Predictions(ids=tuple(ids), probs=probs.astype(np.float32), class_names=tuple(names),
                       model_name=meta.get("model_name"), fold=meta.get("fold"), tta=meta.get("tta"),
                       y_true=y_true, path=path)


def align(predictions: Sequence[Predictions]) -> tuple[tuple[str, ...], np.ndarray]:
    """Stack several models' predictions of the same images in the first file's id order.

    Args:
        predictions: M `Predictions` over the same set of ids and classes (any row order).

    Returns:
        (ids (N,), float32 (M, N, C) probabilities).

    Raises:
        HpaDataError: different id sets or class columns (names a few missing ids).
    """
    if not predictions:
        raise ConfigError("align: no predictions given")
    ref = predictions[0]
    out = []
    for p in predictions:
        if tuple(p.class_names) != tuple(ref.class_names):
            raise HpaDataError(f"{p.path or p.model_name}: class columns differ from {ref.path or ref.model_name}")
        index = {i: k for k, i in enumerate(p.ids)}
        absent = [i for i in ref.ids if i not in index]
        if absent or len(p.ids) != len(ref.ids):
            raise HpaDataError(f"{p.path or p.model_name}: covers other images than {ref.path or ref.model_name} "
                               f"({len(p.ids)} vs {len(ref.ids)} ids; missing e.g. {absent[:3]}); predict the "
                               f"same images with every model")
        out.append(p.probs[[index[i] for i in ref.ids]])
    return ref.ids, np.stack(out).astype(np.float32)


# ============================================================================================ blends
def _stack(probs_list, name: str) -> np.ndarray:
    arrays = [np.asarray(p, dtype=np.float64) for p in probs_list]
    if not arrays:
        raise ConfigError(f"{name}: no probability arrays given")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise HpaDataError(f"{name}: every array must have the same (N, C) shape; got {sorted(shapes)}")
    return np.stack(arrays)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _check_weights(weights, shape: tuple, name: str) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != shape:
        per = "one per model" + (", per class" if len(shape) > 1 else "")
        raise ConfigError(f"{name}: weights must have shape {shape} ({per}); got {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ConfigError(f"{name}: weights must be finite and >= 0; got {w}")
    if (w.sum(axis=0) <= 0).any():
        raise ConfigError(f"{name}: the weights of every class must not all be 0")
    return w


def blend_mean(probs_list: Sequence) -> np.ndarray:
    """Arithmetic mean of M (N, C) probability arrays (Team 2's 7-model blend, teams.md §2.6). float32 (N, C)."""
    return _stack(probs_list, "blend_mean").mean(axis=0).astype(np.float32)


def blend_logit_mean(probs_list: Sequence) -> np.ndarray:
    """sigmoid(mean of logit(p)) over M (N, C) arrays (Russ averages on the logit scale, teams.md §4.1).

    Probabilities are clipped to [`LOGIT_EPS`, 1 - `LOGIT_EPS`] first. Returns float32 (N, C).
    """
    return _sigmoid(_logit(_stack(probs_list, "blend_logit_mean")).mean(axis=0)).astype(np.float32)


def blend_weighted(probs_list: Sequence, weights: Sequence[float], *, scale: str = "prob") -> np.ndarray:
    """Weighted mean ``sum_m w_m p_m / sum_m w_m`` (Christof's hill-climb weights, e.g. 22:10:10:13, §4.1).

    Args:
        probs_list: M (N, C) probability arrays.
        weights: M non-negative weights (not all 0); they need not sum to 1.
        scale: ``"prob"`` (average probabilities) or ``"logit"`` (average logits, then sigmoid).

    Returns:
        float32 (N, C).
    """
    stack = _stack(probs_list, "blend_weighted")
    w = _check_weights(weights, (len(stack),), "blend_weighted")
    return blend_class_weighted(stack, np.repeat(w[:, None], stack.shape[2], axis=1), scale=scale)


def blend_class_weighted(probs_list: Sequence, weights, *, scale: str = "prob") -> np.ndarray:
    """Per-class weighted mean: class c of the blend is ``sum_m W[m, c] p_m[:, c] / sum_m W[m, c]`` (Russ'
    class-specific hill-climb weights ``ens_weights56.pkl``, on the logit scale, teams.md §4.1).

    Args:
        probs_list: M (N, C) probability arrays.
        weights: (M, C) non-negative weights; each class's column must not be all 0.
        scale: ``"prob"`` or ``"logit"`` (Russ).

    Returns:
        float32 (N, C).
    """
    if scale not in ("prob", "logit"):
        raise ConfigError(f"scale={scale!r}: use 'prob' or 'logit'")
    stack = _stack(probs_list, "blend_class_weighted")
    w = _check_weights(weights, (stack.shape[0], stack.shape[2]), "blend_class_weighted")
    w = w / w.sum(axis=0, keepdims=True)
    values = _logit(stack) if scale == "logit" else stack
    blended = np.einsum("mnc,mc->nc", values, w)
    return (_sigmoid(blended) if scale == "logit" else blended).astype(np.float32)


# ============================================================================================ thresholds
def as_threshold_config(rule: Union[str, ThresholdConfig], **kwargs) -> ThresholdConfig:
    """A `ThresholdConfig` from a rule name (+ kwargs such as ``ratios``, ``scale``, ``fallbacks``) or itself."""
    if isinstance(rule, ThresholdConfig):
        if kwargs:
            return dataclasses.replace(rule, kwargs={**rule.kwargs, **kwargs})
        return rule
    return ThresholdConfig(str(rule), kwargs=dict(kwargs))


def threshold_labels(probs, rule: Union[str, ThresholdConfig], *, fit_probs=None, y_true=None, **kwargs) -> np.ndarray:
    """Labels from probabilities with any team's rule (`hpa_zoo.infer.thresholds.from_config`).

    Args:
        probs: (N, C) probabilities to label.
        rule: a `ThresholdConfig` (a recipe's ``thresholds``) or a rule name of `hpa_zoo.infer.thresholds.RULES`.
        fit_probs: (M, C) probabilities the thresholds are fitted on (OOF for the label-based rules); default
            ``probs`` itself (the label-free rules ``freq_match`` / ``lb_ratio_match``, as Teams 1 and 4 did on
            the test probabilities).
        y_true: (M, C) labels of ``fit_probs`` for the label-based rules.
        kwargs: rule parameters added to the config (``ratios=``, ``scale=``, ``value=``...).

    Returns:
        uint8 (N, C) labels.
    """
    from hpa_zoo.infer.thresholds import NEEDS_Y_TRUE, from_config

    config = as_threshold_config(rule, **kwargs)
    fit = probs if fit_probs is None else fit_probs
    if config.rule in NEEDS_Y_TRUE:
        if y_true is None:
            raise ConfigError(f"threshold rule {config.rule!r} is fitted on labelled predictions: pass "
                              f"fit_probs= (e.g. the OOF probabilities) and y_true= (their labels)")
        if np.shape(y_true) != np.shape(fit):
            raise HpaDataError(f"threshold rule {config.rule!r}: y_true {np.shape(y_true)} does not match the "
                               f"probabilities it fits on {np.shape(fit)}; pass fit_probs= (the probabilities of "
                               f"the labelled images) when labelling other images")
    return from_config(config, fit, y_true=y_true).apply(probs)


# ============================================================================================ hill climbing
@dataclass(frozen=True)
class HillClimbResult:
    """What `hill_climb` chose.

    Attributes:
        weights: int (M,) — how many times each model was picked (Team 4: weight k for k picks).
        picks: model indices in the order they were added.
        scores: macro F1 after each step (len(picks)).
        names: the model names (or ``"model_<i>"``).
        blend: float32 (N, C) the final OOF blend (weighted mean with ``weights``).
        threshold: the `ThresholdConfig` used to score.
    """

    weights: np.ndarray
    picks: tuple[int, ...]
    scores: tuple[float, ...]
    names: tuple[str, ...]
    blend: np.ndarray
    threshold: ThresholdConfig

    @property
    def score(self) -> float:
        """The macro F1 of the final blend."""
        return self.scores[-1]

    def weights_by_name(self) -> dict[str, int]:
        """{model name: weight} of the picked models."""
        return {n: int(w) for n, w in zip(self.names, self.weights) if w}

    def apply(self, probs_list: Sequence, *, scale: str = "prob") -> np.ndarray:
        """Blend other predictions of the same M models (e.g. test) with these weights. float32 (N, C)."""
        return blend_weighted(probs_list, self.weights, scale=scale)


def _score_fn(config: ThresholdConfig, y_true: np.ndarray):
    from hpa_zoo.nn.metrics import macro_f1

    def score(probs: np.ndarray) -> float:
        return macro_f1(y_true, threshold_labels(probs, config, y_true=y_true))

    return score


def hill_climb(oof_list: Sequence, y_true, *, n_steps: int = HILL_CLIMB_STEPS,
               threshold_rule: Union[str, ThresholdConfig] = "freq_match", ratios=None,
               names: Optional[Sequence[str]] = None, stop_when_no_gain: bool = True) -> HillClimbResult:
    """Greedy forward model selection with replacement on out-of-fold predictions (teams.md §4.1 step 2).

    Step 1 picks the single best model. Each next step tries adding every model (again, possibly) to the running
    mean of the picked models' probabilities and keeps the one whose blend has the highest macro F1 after
    ``threshold_rule``; ties go to the lowest model index. With ``stop_when_no_gain`` the climb stops as soon as no
    candidate strictly improves the score (Christof's "up to 30 steps"); otherwise it always takes ``n_steps``.

    Args:
        oof_list: M OOF probability arrays (N, C) of the same images, in the same order.
        y_true: (N, C) multi-hot labels.
        n_steps: the maximum number of picks (Team 4: 30).
        threshold_rule: a rule name or `ThresholdConfig` (default Team 4's ``"freq_match"``, §4.1 step 3).
        ratios: (C,) desired positive fractions for ``freq_match`` / ``lb_ratio_match``. Default: the OOF label
            frequency ``y_true.mean(0)`` — the OOF images are labelled, so their own class rates are the
            natural target (Team 4's alternatives, the LB ratios or a best submission's rates, describe the test
            set; pass them explicitly to use them).
        names: M model names for the result.
        stop_when_no_gain: see above.

    Returns:
        `HillClimbResult` (integer weights (M,), picks, per-step scores, the blend).
    """
    stack = _stack(oof_list, "hill_climb")
    y_true = np.asarray(y_true)
    if y_true.shape != stack.shape[1:]:
        raise HpaDataError(f"hill_climb: y_true {y_true.shape} must match the predictions {stack.shape[1:]}")
    if n_steps < 1:
        raise ConfigError(f"hill_climb: n_steps={n_steps}; it must be >= 1")
    names = tuple(names) if names is not None else tuple(f"model_{i}" for i in range(len(stack)))
    if len(names) != len(stack):
        raise ConfigError(f"hill_climb: {len(names)} names for {len(stack)} models")
    config = as_threshold_config(threshold_rule)
    if config.rule in ("freq_match", "lb_ratio_match") and "ratios" not in config.kwargs:
        target = y_true.mean(axis=0) if ratios is None else np.asarray(ratios, np.float64)
        config = as_threshold_config(config, ratios=tuple(float(r) for r in target))
    score = _score_fn(config, y_true)

    counts = np.zeros(len(stack), dtype=np.int64)
    total = np.zeros(stack.shape[1:], dtype=np.float64)
    picks: list[int] = []
    scores: list[float] = []
    for _ in range(n_steps):
        k = len(picks) + 1
        candidate_scores = [score((total + stack[m]) / k) for m in range(len(stack))]
        best = int(np.argmax(candidate_scores))
        if picks and stop_when_no_gain and candidate_scores[best] <= scores[-1]:
            break
        counts[best] += 1
        total += stack[best]
        picks.append(best)
        scores.append(float(candidate_scores[best]))
    return HillClimbResult(weights=counts, picks=tuple(picks), scores=tuple(scores), names=names,
                           blend=(total / len(picks)).astype(np.float32), threshold=config)


# ============================================================================================ weighted voting
@dataclass(frozen=True)
class VoteSpec:
    """A weighted vote read from a Team 4 file name (`parse_vote_filename`).

    Attributes:
        weights: vote weight of each sub-ensemble, in file-name order.
        members: who made each sub-ensemble (``"shai"``, ``"russ"``, ``"dieter"``...).
        public_lb: each sub-ensemble's public LB score (the 3 digits, as a fraction).
        cutoff: the weighted-vote cut-off.
        class_weighted: the name ends in ``clswt`` (class weights; their values are not in the name).
        tag: the leading ensemble id (e.g. ``"enstw36"``).
    """

    weights: tuple[float, ...]
    members: tuple[str, ...]
    public_lb: tuple[float, ...]
    cutoff: float
    class_weighted: bool
    tag: str


_VOTE_TOKEN = re.compile(r"^(\d)([a-z]+\d?)(\d{3})$")
_CUTOFF = re.compile(r"^\d+(\.\d+)?$")


def parse_vote_filename(name: str) -> VoteSpec:
    """Our reading of Team 4's weighted-vote file names (teams.md §4.1 step 4; the script is not in the repo).

    ``enstw36_1shai562_3russ616_3dieter580_2shai593_3dmytro617_2kevin602_1l2615_7.15_clswt.csv`` reads as: tag
    ``enstw36``; then one token per voting sub-ensemble, ``<weight digit><member><3-digit public LB>`` (``1shai562``
    = weight 1, Shai's sub-ensemble with public LB .562; ``1l2615`` = weight 1, ``l2`` (a level-2 blend), .615);
    then the vote cut-off (7.15, out of a total weight of 15); then ``clswt`` if class weights were used.

    Returns:
        `VoteSpec`.

    Raises:
        ConfigError: the name does not follow that pattern (names the token that does not).
    """
    stem = Path(name).name
    stem = stem[:-4] if stem.endswith(".csv") else stem
    parts = stem.split("_")
    class_weighted = parts[-1] == "clswt"
    if class_weighted:
        parts = parts[:-1]
    if len(parts) < 3 or not _CUTOFF.match(parts[-1]):
        raise ConfigError(f"{name!r}: expected <tag>_<w><member><lb>_..._<cutoff>[_clswt].csv, e.g. "
                          f"enstw36_1shai562_3russ616_7.15_clswt.csv")
    weights, members, lbs = [], [], []
    for token in parts[1:-1]:
        match = _VOTE_TOKEN.match(token)
        if not match:
            raise ConfigError(f"{name!r}: token {token!r} is not <weight digit><member><3-digit LB>")
        weights.append(float(match.group(1)))
        members.append(match.group(2))
        lbs.append(int(match.group(3)) / 1000.0)
    return VoteSpec(tuple(weights), tuple(members), tuple(lbs), float(parts[-1]), class_weighted, parts[0])


def weighted_vote(binary_list: Sequence, weights, cutoff: float) -> np.ndarray:
    """Weighted vote over M binary submissions (teams.md §4.1 step 4).

    A label is on when the summed weight of the submissions that predict it is strictly above ``cutoff``:
    ``sum_m W[m, c] * b_m[n, c] > cutoff``. With ``weights`` (M,) the same weight applies to every class; with
    (M, C) each class has its own (our reading of ``clswt``).

    Args:
        binary_list: M uint8/bool (N, C) label arrays (e.g. read from submissions with `hpa_zoo.data.labels`).
        weights: (M,) or (M, C) non-negative vote weights.
        cutoff: the threshold on the summed weight (Team 4 example: 7.15 of 15).

    Returns:
        uint8 (N, C) labels.
    """
    stack = _stack(binary_list, "weighted_vote")
    if not np.isin(stack, (0.0, 1.0)).all():
        raise HpaDataError("weighted_vote: submissions must be 0/1 labels; threshold probabilities first "
                           "(threshold_labels)")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = np.repeat(w[:, None], stack.shape[2], axis=1)
    w = _check_weights(w, (stack.shape[0], stack.shape[2]), "weighted_vote")
    votes = np.einsum("mnc,mc->nc", stack, w)
    return (votes > float(cutoff)).astype(np.uint8)


def vote_from_filename(binary_by_member: Mapping[str, Any], filename: str) -> np.ndarray:
    """Apply the vote a Team 4 file name describes (`parse_vote_filename`) to submissions keyed by token.

    Args:
        binary_by_member: ``{"<member><lb>": (N, C) labels}``, e.g. ``{"shai562": ..., "russ616": ...}``.
        filename: the ensemble's file name.

    Returns:
        uint8 (N, C) labels (uniform weights per member; class weights are not encoded in the name).
    """
    spec = parse_vote_filename(filename)
    keys = [f"{m}{round(lb * 1000):03d}" for m, lb in zip(spec.members, spec.public_lb)]
    missing = [k for k in keys if k not in binary_by_member]
    if missing:
        raise ConfigError(f"{filename}: no submission for {missing}; pass one per token ({keys})")
    return weighted_vote([binary_by_member[k] for k in keys], spec.weights, spec.cutoff)


# ---------------------------------------------------------------------------------------------- team blends
def blend(config: BlendConfig, probs: Mapping[str, Any]) -> np.ndarray:
    """Combine models' probabilities by a team's declared rule (`hpa_zoo.recipe.BlendConfig`, ``recipe.blend``).

    ``"mean"`` (Team 2): the unweighted mean. ``"weighted_mean"`` (Team 3): ``Σ w_m p_m / Σ w_m`` with
    ``config.kwargs["weights"]`` mapping a model name to its weight; a key may carry a suffix after ``_`` (e.g.
    ``team3_resnet34_512_fold3``), matching the longest weighted name it starts with. ``"hill_climb_vote"`` needs
    OOF labels: use `multiscale_vote`.

    Args:
        config: the rule.
        probs: model key -> probabilities (N, C), all the same shape.
    Returns:
        (N, C) float32.
    Raises:
        ConfigError: no entries, shapes that differ, a key without a weight, or a rule that needs labels.
    """
    if not probs:
        raise ConfigError(f"blend ({config.rule}): no probabilities given; pass {{model_name: (N, 28) probabilities}}")
    arrays = {k: np.asarray(v, np.float64) for k, v in probs.items()}
    shapes = {k: a.shape for k, a in arrays.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ConfigError(f"blend ({config.rule}): every entry must be (N, C) with the same N and C, got {shapes}")
    if config.rule == "mean":
        return blend_mean(list(arrays.values()))
    if config.rule == "weighted_mean":
        table = dict(config.kwargs.get("weights", {}))
        weights = {k: _name_weight(k, table) for k in arrays}
        total = sum(weights.values())
        return (sum(weights[k] * arrays[k] for k in arrays) / total).astype(np.float32)
    raise ConfigError(f"blend rule {config.rule!r} needs out-of-fold labels: call "
                      f"hpa_zoo.infer.ensemble.multiscale_vote(members, y_true, ...)")


def _name_weight(key: str, table: Mapping[str, float]) -> float:
    """The weight of the `table` name that `key` is, or starts with followed by ``_`` (the longest one)."""
    matches = [name for name in table if key == name or key.startswith(name + "_")]
    if not matches:
        raise ConfigError(f"blend: {key!r} is not a model of this blend; keys are model names, optionally with a "
                          f"suffix such as '_fold2': {sorted(table)}")
    return float(table[max(matches, key=len)])


@dataclass(frozen=True)
class MultiscaleVote:
    """The result of `multiscale_vote`.

    Attributes:
        labels: uint8 (N, C) the voted labels.
        member_probs: member -> float32 (N, C) hill-climbed test blend.
        member_labels: member -> uint8 (N, C) its thresholded labels.
        climbs: member -> `HillClimbResult` (weights per model).
    """

    labels: np.ndarray
    member_probs: dict
    member_labels: dict
    climbs: dict


def multiscale_vote(members: Mapping[str, Mapping[str, tuple]], y_true, *, thresholds: ThresholdConfig,
                    ratios=None, vote_weights: Optional[Mapping[str, float]] = None,
                    cutoff: Optional[float] = None, n_steps: int = HILL_CLIMB_STEPS) -> MultiscaleVote:
    """Team 4's ensemble (docs/teams.md §4.1; ``BlendConfig("hill_climb_vote")``): per member, hill climbing on
    OOF scored with the threshold rule; the member's test blend thresholded by that rule; then a weighted vote
    across members.

    Args:
        members: ``{member: {model_name: (oof_probs (N_oof, C), test_probs (N, C))}}`` — e.g. ``{"christof":
            {"team4_gapnet_resnet18_512": (...), "team4_gapnet_resnet18_1024crop512": (...)}}``. All OOF arrays
            of all members cover the same images (``y_true``), all test arrays the same test images.
        y_true: (N_oof, C) labels of the OOF images.
        thresholds: the rule (Team 4: ``recipe.thresholds``, frequency matching).
        ratios: (C,) desired positive fractions for the test labels (default the rule's own); hill climbing
            scores the OOF with its label frequency.
        vote_weights: member -> vote weight (default 1 each).
        cutoff: the vote cut-off (default half the total weight: a weighted majority; one member = its labels).
        n_steps: hill-climbing steps (Team 4: 30).

    Returns:
        `MultiscaleVote`.
    Raises:
        ConfigError: no members.
    """
    if not members:
        raise ConfigError("multiscale_vote: no members given; pass {member: {model_name: (oof, test)}}")
    member_probs, member_labels, climbs = {}, {}, {}
    for member, models in members.items():
        names = list(models)
        climb = hill_climb([models[n][0] for n in names], y_true, n_steps=n_steps, names=names)
        test = climb.apply([models[n][1] for n in names])
        kwargs = {} if ratios is None else {"ratios": tuple(float(r) for r in ratios)}
        member_probs[member], climbs[member] = test, climb
        member_labels[member] = threshold_labels(test, thresholds, **kwargs)
    weights = np.array([float((vote_weights or {}).get(m, 1.0)) for m in members])
    cut = float(weights.sum() / 2.0) if cutoff is None else float(cutoff)
    labels = weighted_vote([member_labels[m] for m in members], weights, cut)
    return MultiscaleVote(labels=labels, member_probs=member_probs, member_labels=member_labels, climbs=climbs)


# ---------------------------------------------------------------------------------------------- leak exploit
def metric_learning_replace(labels, match_index, matched, reference_labels, *,
                            keep_classes: Sequence[int] | None = None) -> np.ndarray:
    """Team 1's label replacement by the metric-learning match (docs/teams.md §1.7) — **a leak exploit**.

    A test image whose best same-sample match passed the cut-off (`zoo_models.teams.team1_metric_learning.match`) gets
    the match's labels instead of its own prediction, except for ``keep_classes`` (default the five tags
    bestfitting's ``post_processing/s2_modify_result.py`` leaves alone: Peroxisomes, Endosomes, Lysosomes, Lipid
    droplets, Cytoplasmic bodies), which keep the CNN's decision; a replacement that would leave no label keeps the
    CNN's row. The paper found this scores by same-sample leaks between test and HPAv18, not by better
    localisation: use it only to measure such a leak, never for a claim about a model. Nothing in hpa-zoo calls it.

    Args:
        labels: (N, K) bool/0-1 CNN predictions of the test images.
        match_index: (N,) int, each test image's best reference image.
        matched: (N,) bool, the match passed the cut-off.
        reference_labels: (M, K) bool/0-1 labels of the reference images.
        keep_classes: class ids whose CNN decision is kept.

    Returns:
        (N, K) bool.

    Raises:
        ConfigError: shapes that do not fit.
    """
    from hpa_zoo.nn.matching import KEEP_CLASSES

    cnn = np.asarray(labels).astype(bool)
    ref = np.asarray(reference_labels).astype(bool)
    idx, hit = np.asarray(match_index, np.int64), np.asarray(matched, bool)
    if (cnn.ndim != 2 or ref.ndim != 2 or ref.shape[1] != cnn.shape[1] or idx.shape != (len(cnn),)
            or hit.shape != (len(cnn),)):
        raise ConfigError(f"metric_learning_replace: labels {cnn.shape}, reference {ref.shape}, match_index "
                          f"{idx.shape}, matched {hit.shape} do not fit ((N, K), (M, K), (N,), (N,))")
    keep = np.zeros(cnn.shape[1], bool)
    keep[list(KEEP_CLASSES if keep_classes is None else keep_classes)] = True
    out = cnn.copy()
    for n in np.flatnonzero(hit):
        row = np.where(keep, cnn[n], ref[idx[n]])
        out[n] = row if row.any() else cnn[n]
    return out
