"""hpa_zoo.infer.thresholds on constructed data with known answers, and against brute-force scans written from the
rules in teams.md §1.6, §2.6, §3.6, §4.1 (sklearn's f1_score for the F1 rule)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from hpa_zoo.infer import thresholds as th
from hpa_zoo.constants import KAGGLE_TRAIN_COUNTS, KAGGLE_TRAIN_SIZE, LB_RATIO_PLACEHOLDERS, PUBLIC_LB_RATIOS
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.recipe import ThresholdConfig


def _uniform_columns(n, n_classes, seed):
    """Each column: the n values (i + 0.5) / n in random order, so mean(col > t) is known for every t."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation((np.arange(n) + 0.5) / n) for _ in range(n_classes)], axis=1)


def _noisy_labelled(n, n_classes, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, n_classes)) < rng.uniform(0.05, 0.5, n_classes)).astype(np.uint8)
    probs = np.clip(0.35 * y + rng.uniform(0, 0.7, (n, n_classes)), 0, 1)
    return probs, y


def test_team1_ratios_replace_placeholders_with_train_frequency():
    ratios = th.team1_target_ratios()
    for c in range(28):
        expected = KAGGLE_TRAIN_COUNTS[c] / KAGGLE_TRAIN_SIZE if c in LB_RATIO_PLACEHOLDERS else PUBLIC_LB_RATIOS[c]
        assert ratios[c] == pytest.approx(expected)
    assert ratios[27] == pytest.approx(11 / 31072) and ratios[0] == pytest.approx(0.3624)


def test_lb_ratio_match_hits_the_ratio_and_prefers_half():
    probs = _uniform_columns(1000, 3, 0)
    ratios = np.array([0.25, 0.9, 0.0423])
    got = th.fit_thresholds(probs, "lb_ratio_match", ratios=ratios)
    np.testing.assert_allclose((probs > got).mean(axis=0), [0.25, 0.9, 0.042], atol=1e-12)
    grid = np.linspace(0, 1, 10000)
    for c, r in enumerate(ratios):  # brute force: min |frac - r|, then closest to 0.5
        scores = [(abs(np.mean(probs[:, c] > p) - r), abs(p - 0.5), p) for p in grid]
        assert got[c] == min(scores)[2]
    # 0.25 -> the tie interval [0.7495, 0.7505): the grid point closest to 0.5 is its lowest one.
    assert 0.7495 <= got[0] < 0.7495 + 1 / 9999
    # 0.9 -> the interval [0.0995, 0.1005): the highest grid point is the closest to 0.5.
    assert 0.1005 - 1 / 9999 <= got[1] < 0.1005


def test_lb_ratio_match_defaults_to_team1_ratios():
    probs = _uniform_columns(400, 28, 1)
    got = th.fit_thresholds(probs, "lb_ratio_match")
    np.testing.assert_array_equal(got, th.fit_thresholds(probs, "lb_ratio_match", ratios=th.team1_target_ratios()))
    np.testing.assert_allclose((probs > got).mean(axis=0), np.round(th.team1_target_ratios() * 400) / 400,
                               atol=1e-12)


def test_proportion_match_matches_bruteforce_scan():
    probs, y = _noisy_labelled(300, 5, 2)
    got = th.fit_thresholds(probs, "proportion_match", y_true=y)
    for c in range(5):
        best, best_t = np.inf, None
        t = 0.05
        for t in np.arange(0.05, 1.00, 0.01):
            score = abs(np.mean(probs[:, c] > t) - y[:, c].mean())
            if score < best:  # first minimum wins
                best, best_t = score, t
        assert got[c] == best_t
    # Known answer: uniform probabilities, 30% labelled -> t = 0.70.
    u = _uniform_columns(100, 1, 3)
    labels = (np.arange(100) < 30).astype(np.uint8)[:, None]
    assert th.fit_thresholds(u, "proportion_match", y_true=labels)[0] == pytest.approx(0.70)


def test_f1_optimal_equals_sklearn_scan():
    probs, y = _noisy_labelled(200, 6, 4)
    y[:, 5] = 0  # a class without positives: every t scores 0 -> the first, 0.0
    got = th.fit_thresholds(probs, "f1_optimal", y_true=y)
    for c in range(6):
        f1s = [f1_score(y[:, c], probs[:, c] > t, zero_division=0) for t in np.arange(100) / 100]
        assert got[c] == np.arange(100)[int(np.argmax(f1s))] / 100
    assert got[5] == 0.0
    np.testing.assert_allclose(th.fit_thresholds(probs, "f1_optimal_scaled", y_true=y), 0.7 * got)
    np.testing.assert_allclose(th.fit_thresholds(probs, "f1_optimal_scaled", y_true=y, scale=0.5), 0.5 * got)


def test_force_top_switches_on_the_argmax_of_every_row():
    probs = np.array([[0.1, 0.3, 0.2], [0.9, 0.6, 0.1], [0.5, 0.45, 0.1]])
    thresholds = np.array([0.95, 0.5, 0.5])
    plain = th.apply_thresholds(probs, thresholds)
    np.testing.assert_array_equal(plain, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    forced = th.apply_thresholds(probs, thresholds, force_top=True)
    assert forced.dtype == np.uint8
    # Row 0 had nothing -> argmax on; row 1: class 1 passes and the argmax (class 0) is added, as Team 1 does.
    np.testing.assert_array_equal(forced, [[0, 1, 0], [1, 1, 0], [1, 0, 0]])


def test_team2_fallbacks_fill_empty_rows():
    base = np.array([0.5, 0.8])  # F1-optimal thresholds
    probs = np.array([
        [0.36, 0.1],  # passes 0.7*0.5=0.35
        [0.32, 0.1],  # fails 0.35, passes 0.6*0.5=0.30
        [0.27, 0.1],  # passes only 0.5*0.5=0.25
        [0.20, 0.1],  # stays empty
        [0.40, 0.45],  # class 1 only passes at 0.5*0.8=0.4, but the row is not empty at 0.7x: not retried
    ])
    fitted = th.FittedThresholds(0.7 * base, fallbacks=(0.6 / 0.7, 0.5 / 0.7))
    np.testing.assert_array_equal(fitted.apply(probs), [[1, 0], [1, 0], [1, 0], [0, 0], [1, 0]])
    # from_config on OOF data reproduces the same rule.
    oof, y = _noisy_labelled(150, 2, 5)
    fitted = th.from_config(ThresholdConfig("f1_optimal_scaled"), oof, y_true=y)
    f1_th = th.fit_thresholds(oof, "f1_optimal", y_true=y)
    np.testing.assert_allclose(fitted.thresholds, 0.7 * f1_th)
    np.testing.assert_allclose(np.array(fitted.fallbacks) * 0.7, [0.6, 0.5])
    test = np.random.default_rng(6).uniform(0, 0.6, (50, 2))
    expected = test > 0.7 * f1_th
    for f in (0.6, 0.5):
        empty = ~expected.any(axis=1)
        expected[empty] = test[empty] > f * f1_th
    np.testing.assert_array_equal(fitted.apply(test), expected.astype(np.uint8))


def test_freq_match_scans_from_high_to_low():
    probs = _uniform_columns(200, 3, 7)
    desired = np.array([0.2, 0.5, 0.99])
    got = th.fit_thresholds(probs, "freq_match", ratios=desired)
    for c in range(3):
        expected = 0.05
        for t in np.linspace(0.95, 0.05, 101):
            if np.mean(probs[:, c] > t) >= desired[c]:
                expected = t
                break
        assert got[c] == expected
    assert got[0] == pytest.approx(0.797) and (probs[:, 0] > got[0]).mean() >= 0.2  # first t from the top
    assert got[2] == pytest.approx(0.05)  # 0.99 is never reached -> the last t


def test_team4_ratios_use_eps_for_rare_classes():
    ratios = th.team4_target_ratios()
    assert all(ratios[c] == 0.004 for c in LB_RATIO_PLACEHOLDERS)
    assert ratios[0] == pytest.approx(0.3624)


def test_fixed_and_from_config_team1():
    probs = _uniform_columns(100, 4, 8)
    np.testing.assert_array_equal(th.fit_thresholds(probs, "fixed"), [0.5] * 4)
    np.testing.assert_array_equal(th.fit_thresholds(probs, "fixed", value=[0.1, 0.2, 0.3, 0.4]), [0.1, 0.2, 0.3, 0.4])
    cfg = ThresholdConfig("lb_ratio_match", force_top=True, kwargs={"ratios": [0.0, 0.0, 0.0, 0.0]})
    labels = th.from_config(cfg, probs).apply(probs)
    np.testing.assert_array_equal(labels.sum(axis=1), 1)  # nothing passes -> exactly the argmax
    np.testing.assert_array_equal(labels.argmax(axis=1), probs.argmax(axis=1))


def test_clear_errors():
    probs = np.full((4, 3), 0.5)
    with pytest.raises(ConfigError, match="lb_ratio_match, proportion_match"):
        th.fit_thresholds(probs, "otsu")
    with pytest.raises(ConfigError, match="y_true"):
        th.fit_thresholds(probs, "f1_optimal")
    with pytest.raises(HpaDataError, match="shape"):
        th.fit_thresholds(probs, "proportion_match", y_true=np.zeros((4, 2)))
    with pytest.raises(HpaDataError, match=r"\(3,\)"):
        th.fit_thresholds(probs, "lb_ratio_match")  # default ratios are for 28 classes
    with pytest.raises(HpaDataError, match="thresholds"):
        th.apply_thresholds(probs, np.zeros(2))
    with pytest.raises(HpaDataError, match="N, C"):
        th.apply_thresholds(np.zeros(3), np.zeros(3))
    with pytest.raises(ConfigError, match="scale"):
        th.fit_thresholds(probs, "fixed", scale=0.7)


# ---------------------------------------------------------------------------------------------- degenerate LB ratios
def _rank_reference(probs, ratios):
    """Image i is on for class c iff at most floor(ratio_c * N) images (i and its ties included) have a
    probability >= its own: an O(N^2) count per image, written from the rule, not from the implementation."""
    n, n_classes = probs.shape
    out = np.zeros((n, n_classes), np.uint8)
    for c in range(n_classes):
        k = int(np.floor(ratios[c] * n + 1e-9))
        for i in range(n):
            out[i, c] = int((probs[:, c] >= probs[i, c]).sum() <= k)
    return out


def test_team1_rule_on_tied_probabilities_warns_and_names_the_class(caplog):
    # An untrained model: every image gets the same probabilities, class 1 (Nuclear membrane) the highest.
    row = np.full(28, 0.1)
    row[1] = 0.3
    probs = np.tile(row, (56, 1))
    cfg = ThresholdConfig("lb_ratio_match", force_top=True)
    with pytest.warns(th.DegenerateThresholdsWarning, match=r"1 Nuclear membrane on for 100% of 56 images"):
        fitted = th.from_config(cfg, probs, where="validation")
    # Team 1's rule is unchanged: the same thresholds, and force_top switches class 1 on everywhere
    np.testing.assert_array_equal(fitted.thresholds, th.fit_thresholds(probs, "lb_ratio_match"))
    labels = fitted.apply(probs)
    assert labels[:, 1].all() and labels.sum() == 56
    assert [b["class"] for b in fitted.degenerate] == [1]
    assert fitted.degenerate[0]["tied"] == 1.0 and fitted.degenerate[0]["spread"] == 0.0
    assert any("degenerate" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_distinct_probabilities_do_not_warn():
    import warnings

    probs = _uniform_columns(200, 28, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", th.DegenerateThresholdsWarning)
        fitted = th.from_config(ThresholdConfig("lb_ratio_match", force_top=True), probs, tie_fallback=True)
    assert fitted.rank_ratios is None and fitted.degenerate == ()


def test_degenerate_classes_reports_fraction_and_ties():
    labels = np.zeros((10, 28), np.uint8)
    labels[:9, 4] = 1  # 90 %: degenerate (target 0.075)
    labels[:8, 0] = 1  # 80 %: below the 90 % line
    probs = np.zeros((10, 28))
    probs[:, 4] = [0.5] * 7 + [0.6, 0.7, 0.8]
    bad = th.degenerate_classes(labels, th.team1_target_ratios(), probs)
    assert [b["class"] for b in bad] == [4]
    assert bad[0]["fraction"] == pytest.approx(0.9) and bad[0]["tied"] == pytest.approx(0.7)
    assert bad[0]["spread"] == pytest.approx(0.3)
    # a class whose own target is that high is not degenerate
    assert th.degenerate_classes(labels, np.full(28, 0.95)) == []


def test_rank_ratio_labels_match_a_counting_reference_with_ties():
    rng = np.random.default_rng(0)
    probs = np.round(rng.random((60, 28)), 1)  # ten values: many ties at every boundary
    ratios = th.team1_target_ratios()
    labels = th.rank_ratio_labels(probs, ratios, force_top=False)
    np.testing.assert_array_equal(labels, _rank_reference(probs, ratios))
    assert (labels.sum(axis=0) <= np.floor(ratios * 60 + 1e-9)).all()


def test_rank_ratio_labels_force_top_stays_within_the_caps():
    rng = np.random.default_rng(1)
    probs = np.round(rng.random((80, 28)) ** 3, 2)
    ratios = th.team1_target_ratios()
    labels = th.rank_ratio_labels(probs, ratios, force_top=True)
    base = _rank_reference(probs, ratios)
    assert (labels >= base).all()  # force_top only adds
    cap = np.maximum(np.floor(ratios * 80 + 1e-9), 1)
    assert (labels.sum(axis=0) <= cap).all()
    added = np.argwhere(labels > base)
    for i, c in added:  # what force_top adds: a row's top class, on a row that was empty
        assert not base[i].any() and probs[i, c] == probs[i].max()
    # fully tied rows: the rank rule can not order them, so no class goes beyond its cap
    tied = np.tile(np.linspace(0.1, 0.2, 28), (56, 1))
    out = th.rank_ratio_labels(tied, ratios, force_top=True)
    assert (out.sum(axis=0) <= np.maximum(np.floor(ratios * 56 + 1e-9), 1)).all()


def test_tie_fallback_switches_the_fit_to_the_rank_variant():
    row = np.full(28, 0.1)
    row[1] = 0.3
    probs = np.tile(row, (56, 1))
    probs[:5, 0] = 0.9  # five images rank above the rest for class 0 (target 0.3624 -> 20 of 56)
    with pytest.warns(th.DegenerateThresholdsWarning, match="using the tie-aware variant"):
        fitted = th.from_config(ThresholdConfig("lb_ratio_match", force_top=True), probs, tie_fallback=True)
    assert fitted.rank_ratios is not None
    labels = fitted.apply(probs)
    np.testing.assert_array_equal(labels[:5, 0], 1)
    assert labels[:, 1].sum() <= max(1, int(np.floor(th.team1_target_ratios()[1] * 56)))


def test_check_evidence_replaces_unsupported_and_extreme_thresholds_and_says_why():
    from hpa_zoo.infer.thresholds import check_evidence

    y = np.zeros((40, 4), int)
    y[:10, 0] = 1   # 10 positives: kept
    y[:3, 1] = 1    # 3 positives: too few
    y[:20, 2] = 1   # enough, but its fitted threshold is 0.0 (on for every image)
    y[:8, 3] = 1    # enough, fitted 0.995: on for none
    fitted = np.array([0.42, 0.37, 0.0, 0.995])
    th, why = check_evidence(fitted, y, default=0.5, class_names=["a", "b", "c", "d"])
    # independent reference: the rule written out with NumPy
    positives = y.sum(0)
    expected = np.where((positives < 5) | (fitted <= 0.01) | (fitted >= 0.99), 0.5, fitted)
    np.testing.assert_allclose(th, expected, rtol=1e-6)
    assert sorted(why) == ["b", "c", "d"]
    assert "3 validation positive(s) < 5" in why["b"] and "extreme" in why["c"] and "extreme" in why["d"]
