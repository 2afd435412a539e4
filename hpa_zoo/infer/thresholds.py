"""Every team's rule for turning probabilities into labels, behind one interface (NumPy).

``fit_thresholds(probs, rule, ...)`` returns per-class thresholds (C,); ``apply_thresholds`` turns probabilities
into uint8 labels (``prob > threshold``), optionally forcing the top class on (Team 1) and retrying empty rows with
scaled thresholds (Team 2). ``from_config`` does both steps from a recipe's `ThresholdConfig`.

| rule | team | fitted on | rule |
|---|---|---|---|
| ``"lb_ratio_match"`` | 1 (teams.md §1.6) | test probs | p in linspace(0,1,10000) minimising abs(mean(prob>p) - ratio), ties -> closest to 0.5 |
| ``"proportion_match"`` | 3 (§3.6) | held-out probs + labels | t in arange(.05,1,.01) minimising abs(frac predicted - frac labelled) |
| ``"f1_optimal"`` | 2 (§2.6) | OOF probs + labels | per-class F1-optimal t in 0.00..0.99 step .01 |
| ``"f1_optimal_scaled"`` | 2 (§2.6) | OOF probs + labels | ``scale`` (0.7) x the F1-optimal t; empty rows retry 0.6x, 0.5x |
| ``"freq_match"`` | 4 (§4.1) | test probs | first t of linspace(.95,.05,101) with mean(prob>t) >= desired |
| ``"fixed"`` | 4 Dmytro (§4.2) | - | a constant or per-class ``value`` |

**Degenerate ratio matching.** Team 1's rule is kept as the team wrote it. On near-constant probabilities (an
under-trained model, or test probabilities raised by max-TTA above thresholds fitted on validation) it, or the
``force_top`` that follows it, can switch a class on for (nearly) every image. `from_config` and
`hpa_zoo.infer.predict.predict` check the labels with `degenerate_classes` and warn (``logging`` and
`DegenerateThresholdsWarning`), naming the classes and their fractions. With ``tie_fallback=True`` the labels
come from the tie-aware variant `rank_ratio_labels` instead (rule name `TIE_AWARE_RULE`): class c is on for the
images ranked above the ``floor(ratio_c * N)``-th largest probability, a group tied at that boundary is left
out, so at most ``ratio_c * N`` images get class c; the top class of a still-empty row is forced on only while
its class stays within ``max(1, floor(ratio_c * N))``, again never splitting a group of tied rows.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from hpa_zoo.constants import KAGGLE_TRAIN_COUNTS, KAGGLE_TRAIN_SIZE, LB_RATIO_PLACEHOLDERS, PUBLIC_LB_RATIOS
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.recipe import ThresholdConfig

log = logging.getLogger(__name__)

RULES: tuple[str, ...] = ("lb_ratio_match", "proportion_match", "f1_optimal", "f1_optimal_scaled", "freq_match",
                          "fixed")
NEEDS_Y_TRUE = ("proportion_match", "f1_optimal", "f1_optimal_scaled")

# teams.md §1.6: Team 1's threshold grid.
LB_RATIO_GRID = np.linspace(0.0, 1.0, 10000)
# teams.md §3.6: Team 3's threshold grid (NumPy's arange, 95 values 0.05..0.99).
PROPORTION_GRID = np.arange(0.05, 1.00, 0.01)
# teams.md §2.6: Team 2's per-class F1 grid 0.00..0.99 step 0.01.
F1_GRID = np.arange(100) / 100.0
# teams.md §2.6: submission thresholds 0.7 x th, empty rows retry 0.6 x th then 0.5 x th.
TEAM2_SCALE = 0.7
TEAM2_FALLBACKS = (0.6, 0.5)
# teams.md §4.1 item 3: scan 0.95 -> 0.05 in 101 steps; eps 0.004 for the rare (placeholder) classes.
FREQ_SCAN = np.linspace(0.95, 0.05, 101)
TEAM4_RARE_EPS = 0.004
#: A class on for at least this fraction of the images (when its target ratio is lower) is degenerate.
DEGENERATE_FRACTION = 0.9
#: Degenerate classes described one by one in the warning (the rest are listed by id).
MAX_NAMED = 4
#: The tie-aware, rank-based variant of ``lb_ratio_match`` (`rank_ratio_labels`).
TIE_AWARE_RULE = "lb_ratio_rank"


class DegenerateThresholdsWarning(UserWarning):
    """A ratio-matching threshold rule switched a class on for (nearly) every image (see `degenerate_classes`)."""


def team1_target_ratios() -> np.ndarray:
    """Team 1's target positive fractions: the public-LB ratios with the 0.01 placeholders replaced by the Kaggle
    train label frequencies (teams.md §1.6). float64 (28,)."""
    ratios = PUBLIC_LB_RATIOS.astype(np.float64).copy()
    idx = list(LB_RATIO_PLACEHOLDERS)
    ratios[idx] = KAGGLE_TRAIN_COUNTS[idx] / KAGGLE_TRAIN_SIZE
    return ratios


def team4_target_ratios(eps: float = TEAM4_RARE_EPS) -> np.ndarray:
    """Team 4's desired positive fractions: the public-LB ratios with the rare placeholder classes set to ``eps``
    (teams.md §4.1). float64 (28,)."""
    ratios = PUBLIC_LB_RATIOS.astype(np.float64).copy()
    ratios[list(LB_RATIO_PLACEHOLDERS)] = eps
    return ratios


def _check_probs(probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise HpaDataError(f"probabilities must be a non-empty (N, C) array; got shape {probs.shape}.")
    return probs


def _check_vector(name: str, values, n_classes: int) -> np.ndarray:
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (n_classes,)) if np.ndim(values) == 0 \
        else np.asarray(values, dtype=np.float64)
    if values.shape != (n_classes,):
        raise HpaDataError(f"{name} must have shape ({n_classes},) to match the probabilities; got {values.shape}.")
    return values.copy()


def _positive_fraction(probs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """mean(probs[:, c] > t) for every t of ``grid`` and class c: float64 (len(grid), C), exact counts / N."""
    sorted_probs = np.sort(probs, axis=0)
    n = probs.shape[0]
    counts = np.stack([n - np.searchsorted(sorted_probs[:, c], grid, side="right") for c in range(probs.shape[1])],
                      axis=1)
    return counts / n


def _lb_ratio_match(probs: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    score = np.abs(_positive_fraction(probs, LB_RATIO_GRID) - ratios[None, :])
    out = np.empty(probs.shape[1])
    for c in range(probs.shape[1]):
        best = np.flatnonzero(score[:, c] == score[:, c].min())
        out[c] = LB_RATIO_GRID[best[np.argmin(np.abs(LB_RATIO_GRID[best] - 0.5))]]  # ties -> closest to 0.5
    return out


def _proportion_match(probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    score = np.abs(_positive_fraction(probs, PROPORTION_GRID) - y_true.mean(axis=0)[None, :])
    return PROPORTION_GRID[np.argmin(score, axis=0)]  # ties -> the smallest t (np.argmin)


def _f1_optimal(probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Per-class F1-optimal t of `F1_GRID` (labels prob > t), ties -> the smallest t; F1 = 0 when undefined."""
    out = np.empty(probs.shape[1])
    for c in range(probs.shape[1]):
        pos = y_true[:, c] > 0.5
        # Counts of positives / negatives above each t, from sorted scores (O(N log N) per class).
        tp = pos.sum() - np.searchsorted(np.sort(probs[pos, c]), F1_GRID, side="right")
        fp = (~pos).sum() - np.searchsorted(np.sort(probs[~pos, c]), F1_GRID, side="right")
        fn = pos.sum() - tp
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)  # sklearn's zero_division=0
        out[c] = F1_GRID[np.argmax(f1)]
    return out


def _freq_match(probs: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    ok = _positive_fraction(probs, FREQ_SCAN) >= ratios[None, :]  # (T, C), scan from high to low t
    first = np.argmax(ok, axis=0)
    return np.where(ok.any(axis=0), FREQ_SCAN[first], FREQ_SCAN[-1])  # never reached: the lowest t


def fit_thresholds(probs, rule: str, *, y_true=None, ratios=None, **kw) -> np.ndarray:
    """Fit per-class thresholds with one of the teams' rules (see the module table).

    Args:
        probs: (N, C) float probabilities (test probabilities for ``lb_ratio_match`` / ``freq_match``; held-out or
            OOF probabilities for the label-based rules).
        rule: one of `RULES`.
        y_true: (N, C) multi-hot labels, required by ``proportion_match``, ``f1_optimal``, ``f1_optimal_scaled``.
        ratios: (C,) target positive fractions for ``lb_ratio_match`` (default `team1_target_ratios`) and
            ``freq_match`` (default `team4_target_ratios`); a scalar is broadcast.
        **kw: ``scale`` (``f1_optimal_scaled``, default 0.7), ``value`` (``fixed``, default 0.5, scalar or (C,)).

    Returns:
        float64 (C,) thresholds; labels are ``prob > threshold``.
    """
    if rule not in RULES:
        raise ConfigError(f"unknown threshold rule {rule!r}; valid rules: {', '.join(RULES)}.")
    probs = _check_probs(probs)
    n, n_classes = probs.shape
    if rule in NEEDS_Y_TRUE:
        if y_true is None:
            raise ConfigError(f"threshold rule {rule!r} fits on labels: pass y_true (N, C) for the same images.")
        y_true = np.asarray(y_true, dtype=np.float64)
        if y_true.shape != probs.shape:
            raise HpaDataError(f"y_true {y_true.shape} must have the shape of probs {probs.shape}.")
    allowed = {"f1_optimal_scaled": {"scale"}, "fixed": {"value"}}.get(rule, set())
    unexpected = set(kw) - allowed
    if unexpected:
        raise ConfigError(f"threshold rule {rule!r} takes no argument(s) {sorted(unexpected)}; it takes {sorted(allowed)}.")

    if rule == "lb_ratio_match":
        target = team1_target_ratios() if ratios is None else ratios
        return _lb_ratio_match(probs, _check_vector("ratios", target, n_classes))
    if rule == "freq_match":
        target = team4_target_ratios() if ratios is None else ratios
        return _freq_match(probs, _check_vector("ratios", target, n_classes))
    if rule == "proportion_match":
        return _proportion_match(probs, y_true)
    if rule == "f1_optimal":
        return _f1_optimal(probs, y_true)
    if rule == "f1_optimal_scaled":
        return float(kw.get("scale", TEAM2_SCALE)) * _f1_optimal(probs, y_true)
    return _check_vector("value", kw.get("value", 0.5), n_classes)


def apply_thresholds(probs, thresholds, *, force_top: bool = False, fallbacks=()) -> np.ndarray:
    """Labels from probabilities: ``prob > threshold`` per class.

    Args:
        probs: (N, C) float probabilities.
        thresholds: (C,) thresholds (or a scalar).
        force_top: also switch on each row's most probable class (Team 1's ``generate_labels`` sets
            ``prob[argmax] = 1`` for every row, teams.md §1.6), so no row is empty.
        fallbacks: scale factors tried in order on rows that are still empty: ``prob > f * thresholds``
            (Team 2: thresholds 0.7*th and factors (0.6/0.7, 0.5/0.7); `from_config` converts).

    Returns:
        uint8 (N, C) labels.
    """
    probs = _check_probs(probs)
    thresholds = _check_vector("thresholds", thresholds, probs.shape[1])
    labels = probs > thresholds[None, :]
    for factor in fallbacks:
        empty = ~labels.any(axis=1)
        labels[empty] = probs[empty] > float(factor) * thresholds[None, :]
    if force_top:
        labels[np.arange(len(probs)), np.argmax(probs, axis=1)] = True
    return labels.astype(np.uint8)


def degenerate_classes(labels, ratios, probs=None, *, fraction: float = DEGENERATE_FRACTION) -> list[dict]:
    """The classes a ratio rule switched on for (nearly) every image although their target ratio is lower.

    Args:
        labels: (N, C) 0/1 labels the rule produced.
        ratios: (C,) target positive fractions (a scalar is broadcast).
        probs: optional (N, C) probabilities the labels came from, to describe the ties.
        fraction: a class on for ``>= fraction`` of the images with ``ratio < fraction`` is degenerate.
    Returns:
        one dict per degenerate class, in class order: ``class`` (int), ``fraction`` (float, share of images on),
        ``ratio`` (float target), and with ``probs`` ``spread`` (float, max - min of its probabilities) and
        ``tied`` (float, share of images whose probability equals the class's most common value to 1e-4).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise HpaDataError(f"labels must be a non-empty (N, C) array; got shape {labels.shape}.")
    ratios = _check_vector("ratios", ratios, labels.shape[1])
    on = (labels > 0).mean(axis=0)
    out = []
    for c in np.flatnonzero((on >= fraction) & (ratios < fraction)):
        row = {"class": int(c), "fraction": float(on[c]), "ratio": float(ratios[c])}
        if probs is not None:
            col = np.asarray(probs, np.float64)[:, c]
            _, counts = np.unique(np.round(col, 4), return_counts=True)
            row.update(spread=float(col.max() - col.min()), tied=float(counts.max() / len(col)))
        out.append(row)
    return out


def warn_degenerate(labels, ratios, probs=None, *, where: str = "", fallback: bool = False) -> list[dict]:
    """`degenerate_classes`, and when there are any a log record plus a `DegenerateThresholdsWarning`.

    Args:
        labels, ratios, probs: as for `degenerate_classes`.
        where: what was labelled (e.g. ``"validation"``), for the message.
        fallback: whether the caller switches to `rank_ratio_labels` (said in the message).
    Returns:
        the `degenerate_classes` list (empty: nothing was said).
    """
    from hpa_zoo.constants import CLASS_NAMES

    bad = degenerate_classes(labels, ratios, probs)
    if not bad:
        return bad
    names = ", ".join(f"{b['class']} {CLASS_NAMES[b['class']]} on for {b['fraction']:.0%} of "
                      f"{len(labels)} images (target ratio {b['ratio']:.3g}"
                      + (f", {b['tied']:.0%} of its probabilities tied, spread {b['spread']:.2g}"
                         if "tied" in b else "")
                      + ")" for b in bad[:MAX_NAMED])
    if len(bad) > MAX_NAMED:
        names += f" and {len(bad) - MAX_NAMED} more classes ({', '.join(str(b['class']) for b in bad[MAX_NAMED:])})"
    then = (f"using the tie-aware variant {TIE_AWARE_RULE!r} (at most ratio x N images per class)" if fallback else
            f"pass tie_fallback=True (CLI: --tie-fallback) for the tie-aware variant {TIE_AWARE_RULE!r}")
    msg = (f"LB-ratio thresholds{' on ' + where if where else ''} are degenerate: {names}. The probabilities are "
           f"(nearly) tied, so matching the ratios cannot rank the images; {then}.")
    log.warning(msg)
    warnings.warn(msg, DegenerateThresholdsWarning, stacklevel=2)
    return bad


def rank_ratio_labels(probs, ratios, *, force_top: bool = True) -> np.ndarray:
    """Tie-aware rank-based LB-ratio labels: at most ``ratio_c * N`` images per class (module docstring).

    Class c is on for the images whose probability is above the ``k_c + 1``-th largest one, ``k_c =
    floor(ratio_c * N)`` (so a group tied across the boundary is left out and fewer than ``k_c`` may be on). With
    ``force_top`` each row left empty gets its most probable class while that class holds fewer than
    ``max(1, k_c)`` images; rows are taken by decreasing top probability and a group of rows tied on the same class
    and probability goes in whole or not at all.

    Args:
        probs: (N, C) float probabilities of the images being labelled (label-free, like Team 1's rule).
        ratios: (C,) target positive fractions (a scalar is broadcast).
        force_top: fill empty rows with their top class, within the caps.
    Returns:
        uint8 (N, C) labels.
    """
    probs = _check_probs(probs)
    n, n_classes = probs.shape
    ratios = _check_vector("ratios", ratios, n_classes)
    k = np.floor(np.clip(ratios, 0, 1) * n + 1e-9).astype(np.int64)
    ordered = -np.sort(-probs, axis=0)  # descending per class
    boundary = np.where(k < n, ordered[np.minimum(k, n - 1), np.arange(n_classes)], -np.inf)
    labels = probs > boundary[None, :]
    labels[:, k == 0] = False
    if force_top:
        cap = np.maximum(k, 1)
        count = labels.sum(axis=0)
        empty = np.flatnonzero(~labels.any(axis=1))
        top = np.argmax(probs[empty], axis=1) if len(empty) else np.zeros(0, np.int64)
        value = probs[empty, top] if len(empty) else np.zeros(0)
        for c in np.unique(top):
            rows, vals = empty[top == c], value[top == c]
            for v in np.unique(vals)[::-1]:  # groups of rows tied on (class, probability), best first
                group = rows[vals == v]
                if count[c] + len(group) > cap[c]:
                    break
                labels[group, c] = True
                count[c] += len(group)
    return labels.astype(np.uint8)


@dataclass(frozen=True)
class FittedThresholds:
    """Thresholds fitted by `from_config`, ready to apply.

    Attributes:
        thresholds: float64 (C,).
        force_top: see `apply_thresholds`.
        fallbacks: scale factors relative to ``thresholds`` (see `apply_thresholds`).
        rank_ratios: float64 (C,) when the tie-aware variant replaced the degenerate rule: `apply` then labels
            with `rank_ratio_labels` on the probabilities it is given (``thresholds`` are the rule's, unused).
        degenerate: the `degenerate_classes` found when fitting (empty when there were none).
    """

    thresholds: np.ndarray
    force_top: bool = False
    fallbacks: tuple[float, ...] = ()
    rank_ratios: Optional[np.ndarray] = None
    degenerate: tuple = ()

    def apply(self, probs) -> np.ndarray:
        """uint8 (N, C) labels of (N, C) probabilities."""
        if self.rank_ratios is not None:
            return rank_ratio_labels(probs, self.rank_ratios, force_top=self.force_top)
        return apply_thresholds(probs, self.thresholds, force_top=self.force_top, fallbacks=self.fallbacks)


def config_ratios(config: ThresholdConfig, n_classes: int = 28) -> Optional[np.ndarray]:
    """The target ratios (C,) float64 of a ratio rule (``lb_ratio_match``: the config's or Team 1's,
    ``freq_match``: the config's or Team 4's); None for the other rules."""
    ratios = dict(config.kwargs).get("ratios")
    if config.rule == "lb_ratio_match":
        return _check_vector("ratios", team1_target_ratios() if ratios is None else ratios, n_classes)
    if config.rule == "freq_match":
        return _check_vector("ratios", team4_target_ratios() if ratios is None else ratios, n_classes)
    return None


def from_config(config: ThresholdConfig, probs, y_true=None, *, tie_fallback: bool = False,
                where: str = "") -> FittedThresholds:
    """Fit a recipe's threshold rule.

    For ``lb_ratio_match`` the labels it gives on ``probs`` are checked (`warn_degenerate`); with
    ``tie_fallback`` a degenerate fit returns the tie-aware variant (``rank_ratios`` set, `rank_ratio_labels`).

    ``config.kwargs`` may hold ``ratios``, ``scale``, ``value`` and ``fallbacks``. For ``"f1_optimal_scaled"`` the
    fallbacks are factors of the *unscaled* F1-optimal thresholds, as Team 2 states them (default (0.6, 0.5)); they
    are converted to factors of the returned (scaled) thresholds.

    Args:
        config: `hpa_zoo.recipe.ThresholdConfig`.
        probs: (N, C) probabilities to fit on (see `fit_thresholds`).
        y_true: (N, C) labels, for the label-based rules.
        tie_fallback: switch to `rank_ratio_labels` when Team 1's rule is degenerate on ``probs``.
        where: what ``probs`` are (e.g. ``"validation"``), for the warning.

    Returns:
        `FittedThresholds` (call ``.apply(test_probs)`` for uint8 labels).
    """
    kw = dict(config.kwargs)
    ratios = kw.pop("ratios", None)
    fallbacks = tuple(float(f) for f in kw.pop("fallbacks", ()))
    if config.rule == "f1_optimal_scaled":
        scale = float(kw.setdefault("scale", TEAM2_SCALE))
        fallbacks = tuple(f / scale for f in (fallbacks or TEAM2_FALLBACKS))
    thresholds = fit_thresholds(probs, config.rule, y_true=y_true, ratios=ratios, **kw)
    fitted = FittedThresholds(thresholds=thresholds, force_top=bool(config.force_top), fallbacks=fallbacks)
    if config.rule != "lb_ratio_match":
        return fitted
    target = config_ratios(config, thresholds.shape[0])
    bad = warn_degenerate(fitted.apply(probs), target, probs, where=where, fallback=tie_fallback)
    if bad and tie_fallback:
        return FittedThresholds(thresholds=thresholds, force_top=fitted.force_top, fallbacks=fallbacks,
                                rank_ratios=target, degenerate=tuple(bad))
    return FittedThresholds(thresholds=thresholds, force_top=fitted.force_top, fallbacks=fallbacks,
                            degenerate=tuple(bad))


# ---------------------------------------------------------------------------------------------- evidence
#: Fewest validation positives of a class for a label-fitted threshold to be kept.
MIN_POSITIVES = 5
#: Fitted thresholds at or beyond these are never kept silently: they switch the class on for every image (low)
#: or for none (high).
EXTREME_LOW, EXTREME_HIGH = 0.01, 0.99


def check_evidence(thresholds, y_true, *, default=0.5, min_positives: int = MIN_POSITIVES,
                   class_names: Sequence[str] | None = None) -> tuple[np.ndarray, dict]:
    """Replace label-fitted thresholds that the validation labels cannot support by the rule's default.

    A class with fewer than ``min_positives`` positive validation images, or whose fitted threshold is extreme
    (<= `EXTREME_LOW` or >= `EXTREME_HIGH`), gets ``default``; each replacement is logged as a warning and
    returned with its reason, for the preset's metadata.

    Args:
        thresholds: (K,) fitted thresholds (e.g. ``fit_thresholds(..., "f1_optimal", y_true=...)``).
        y_true: (N, K) 0/1 validation labels they were fitted on.
        default: the threshold used instead: a scalar or (K,) (0.5, or the team rule's default).
        min_positives: the fewest positives that count as evidence.
        class_names: K names for the reasons (default the class index).

    Returns:
        (thresholds (K,) float32 with the replacements, ``{class name: reason}`` for every replaced class).

    Raises:
        ConfigError: shapes that do not fit.
    """
    th = np.asarray(thresholds, np.float64).copy()
    y = np.asarray(y_true)
    if th.ndim != 1 or y.ndim != 2 or y.shape[1] != th.shape[0]:
        raise ConfigError(f"check_evidence: thresholds {th.shape} and labels {y.shape} do not fit; expected (K,) "
                          "and (N, K)")
    fallback = np.broadcast_to(np.asarray(default, np.float64), th.shape)
    names = list(class_names) if class_names is not None else [str(i) for i in range(th.shape[0])]
    positives = y.sum(axis=0).astype(int)
    reasons: dict[str, str] = {}
    for k in range(th.shape[0]):
        if positives[k] < min_positives:
            why = (f"{positives[k]} validation positive(s) < {min_positives}: too few to fit a threshold")
        elif th[k] <= EXTREME_LOW or th[k] >= EXTREME_HIGH:
            why = (f"the fitted threshold {th[k]:.3g} is extreme (<= {EXTREME_LOW} switches the class on for every "
                   f"image, >= {EXTREME_HIGH} for none)")
        else:
            continue
        reasons[names[k]] = f"{why}; default {fallback[k]:g} used"
        th[k] = fallback[k]
    if reasons:
        log.warning("thresholds: %d of %d classes use the default instead of the fitted value: %s", len(reasons),
                    th.shape[0], "; ".join(f"{c}: {r}" for c, r in reasons.items()))
    return th.astype(np.float32), reasons
