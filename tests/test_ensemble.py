"""hpa_zoo.infer.ensemble: prediction files round-trip and validate; blends equal NumPy formulas; hill climbing finds the
known answer of constructed OOF predictions (and matches a plain greedy loop scored by sklearn); weighted voting
with a known cut-off; Team 4's vote file name (teams.md §4.1)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from hpa_zoo.infer import ensemble
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.recipe import ThresholdConfig, TTAConfig
from hpa_zoo.infer.thresholds import fit_thresholds

C = len(CLASS_NAMES)


def _labels(n, seed=0, p=0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, C)) < p).astype(np.uint8)
    y[np.arange(n) % C, np.arange(n) % C] = 1  # every class has positives when n >= C
    return y


# ------------------------------------------------------------------------------------------- files
def test_predictions_round_trip_with_sidecar(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.random((5, C)).astype(np.float32)
    ids = [f"id{k}" for k in range(5)]
    path = ensemble.save_predictions(tmp_path / "a" / "oof.csv", ids, probs, model_name="m1", fold=2,
                                     tta=TTAConfig("d4", aggregate="max"))
    loaded = ensemble.load_predictions(path)
    assert loaded.ids == tuple(ids) and loaded.model_name == "m1" and loaded.fold == 2
    assert loaded.tta["transforms"] == "d4" and loaded.tta["aggregate"] == "max"
    np.testing.assert_allclose(loaded.probs, probs, atol=1e-6)
    header = pd.read_csv(path, nrows=0).columns.tolist()
    assert header == ["Id", *CLASS_NAMES]
    assert json.loads(ensemble.sidecar_path(path).read_text())["n_rows"] == 5


def test_reads_predict_and_training_csvs_without_sidecar(tmp_path):
    probs = np.full((2, C), 0.25)
    frame = pd.concat([pd.DataFrame({"Id": ["a", "b"], "Target": ["0 3", "27"], "Predicted": ["0", ""]}),
                       pd.DataFrame(probs, columns=list(CLASS_NAMES))], axis=1)
    frame.to_csv(tmp_path / "val_predictions.csv", index=False)
    loaded = ensemble.load_predictions(tmp_path / "val_predictions.csv")
    assert loaded.model_name is None and loaded.probs.shape == (2, C)
    expected = np.zeros((2, C), np.uint8)
    expected[0, [0, 3]] = 1
    expected[1, 27] = 1
    np.testing.assert_array_equal(loaded.y_true, expected)


@pytest.mark.parametrize("ids, probs, match", [
    (["a", "a"], np.zeros((2, C)), "duplicate"),
    (["a", ""], np.zeros((2, C)), "empty Id"),
    (["a"], np.zeros((2, C)), "2 rows"),
    (["a", "b"], np.full((2, C), 1.5), "not probabilities"),
    (["a", "b"], np.zeros((2, 5)), r"\(N, 28\)"),
])
def test_save_refuses_bad_inputs_with_a_clear_message(tmp_path, ids, probs, match):
    with pytest.raises(HpaDataError, match=match):
        ensemble.save_predictions(tmp_path / "x.csv", ids, probs, model_name="m")
    assert not (tmp_path / "x.csv").exists()


def test_load_names_missing_columns_and_stale_sidecars(tmp_path):
    pd.DataFrame({"Id": ["a"], "Nucleoplasm": [0.5]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(HpaDataError, match="missing class column"):
        ensemble.load_predictions(tmp_path / "p.csv")
    path = ensemble.save_predictions(tmp_path / "q.csv", ["a", "b"], np.zeros((2, C)), model_name="m")
    pd.read_csv(path).iloc[:1].to_csv(path, index=False)
    with pytest.raises(HpaDataError, match="stale"):
        ensemble.load_predictions(path)


def test_align_reorders_to_the_first_files_ids(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.random((3, C))
    a = ensemble.load_predictions(ensemble.save_predictions(tmp_path / "a.csv", ["x", "y", "z"], p, model_name="a"))
    b = ensemble.load_predictions(ensemble.save_predictions(tmp_path / "b.csv", ["z", "x", "y"], p[[2, 0, 1]],
                                                            model_name="b"))
    ids, stack = ensemble.align([a, b])
    assert ids == ("x", "y", "z")
    np.testing.assert_allclose(stack[0], stack[1], atol=1e-6)
    c = ensemble.load_predictions(ensemble.save_predictions(tmp_path / "c.csv", ["x", "y", "w"], p, model_name="c"))
    with pytest.raises(HpaDataError, match="other images"):
        ensemble.align([a, c])


# ------------------------------------------------------------------------------------------- blends
def test_blends_equal_numpy_formulas():
    rng = np.random.default_rng(2)
    ps = [rng.uniform(0.01, 0.99, (6, C)) for _ in range(3)]
    w = np.array([22.0, 10.0, 13.0])
    np.testing.assert_allclose(ensemble.blend_mean(ps), (ps[0] + ps[1] + ps[2]) / 3, atol=1e-6)
    logit = [np.log(p / (1 - p)) for p in ps]
    np.testing.assert_allclose(ensemble.blend_logit_mean(ps), 1 / (1 + np.exp(-sum(logit) / 3)), atol=1e-6)
    np.testing.assert_allclose(ensemble.blend_weighted(ps, w), (22 * ps[0] + 10 * ps[1] + 13 * ps[2]) / 45, atol=1e-6)
    wc = rng.uniform(0, 1, (3, C))
    expected = sum(wc[m][None, :] * ps[m] for m in range(3)) / wc.sum(0)[None, :]
    np.testing.assert_allclose(ensemble.blend_class_weighted(ps, wc), expected, atol=1e-6)
    z = sum(wc[m][None, :] * logit[m] for m in range(3)) / wc.sum(0)[None, :]
    np.testing.assert_allclose(ensemble.blend_class_weighted(ps, wc, scale="logit"), 1 / (1 + np.exp(-z)), atol=1e-5)
    with pytest.raises(ConfigError, match="one per model"):
        ensemble.blend_weighted(ps, [1.0, 2.0])
    with pytest.raises(ConfigError, match=">= 0"):
        ensemble.blend_weighted(ps, [1.0, -1.0, 1.0])


# ------------------------------------------------------------------------------------------- hill climbing
def test_hill_climb_picks_the_two_complementary_models_and_ignores_noise():
    n = 200
    y = _labels(n, seed=3)
    rng = np.random.default_rng(3)
    a = np.where(np.arange(C) < 14, y, 0.4).astype(np.float64)  # perfect on classes 0-13, blind on 14-27
    b = np.where(np.arange(C) >= 14, y, 0.4).astype(np.float64)  # the reverse
    noise = [rng.random((n, C)) for _ in range(3)]
    result = ensemble.hill_climb([noise[0], a, noise[1], b, noise[2]], y, names=["n0", "a", "n1", "b", "n2"])
    np.testing.assert_array_equal(result.weights, [0, 1, 0, 1, 0])
    assert sorted(result.picks) == [1, 3] and result.score == pytest.approx(1.0) and result.scores[0] < 1.0
    assert result.weights_by_name() == {"a": 1, "b": 1}
    np.testing.assert_allclose(result.blend, (a + b) / 2, atol=1e-6)


def _greedy_reference(stack, y, n_steps):
    """A plain greedy loop, scored by sklearn's macro F1 after fit_thresholds('freq_match', ratios=y.mean(0))."""
    ratios = y.mean(0)
    picks, scores, total = [], [], np.zeros(stack.shape[1:])
    for _ in range(n_steps):
        cand = []
        for m in range(len(stack)):
            blend = (total + stack[m]) / (len(picks) + 1)
            th = fit_thresholds(blend, "freq_match", ratios=ratios)
            cand.append(f1_score(y, (blend > th).astype(int), average="macro", zero_division=0))
        best = int(np.argmax(cand))
        if picks and cand[best] <= scores[-1]:
            break
        picks.append(best)
        scores.append(cand[best])
        total += stack[best]
    return picks, scores


def test_hill_climb_matches_a_plain_greedy_loop_with_replacement():
    n = 150
    y = _labels(n, seed=4)
    rng = np.random.default_rng(4)
    stack = np.stack([np.clip(y * s + rng.normal(0.3, 0.25, (n, C)), 0, 1) for s in (0.5, 0.4, 0.3, 0.2)])
    result = ensemble.hill_climb(list(stack), y, n_steps=12)
    picks, scores = _greedy_reference(stack, y, 12)
    assert list(result.picks) == picks
    np.testing.assert_allclose(result.scores, scores, atol=1e-12)
    np.testing.assert_array_equal(result.weights, np.bincount(picks, minlength=4))
    assert all(b > a for a, b in zip(scores, scores[1:]))  # every kept step improved
    np.testing.assert_allclose(result.apply(list(stack)), (result.weights[:, None, None] * stack).sum(0)
                               / result.weights.sum(), atol=1e-6)


def test_hill_climb_without_early_stop_takes_n_steps_and_repeats_models():
    y = _labels(60, seed=5)
    good = np.clip(y * 0.6 + 0.2, 0, 1)
    result = ensemble.hill_climb([good, np.full_like(good, 0.5)], y, n_steps=5, stop_when_no_gain=False,
                                 threshold_rule=ThresholdConfig("fixed", kwargs={"value": 0.5}))
    assert len(result.picks) == 5 and result.weights[0] == 5 and result.score == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------- voting, thresholds
def test_weighted_vote_with_a_known_cutoff():
    b1 = np.array([[1, 0], [1, 1]])
    b2 = np.array([[1, 1], [0, 0]])
    b3 = np.array([[0, 1], [1, 0]])
    out = ensemble.weighted_vote([b1, b2, b3], [1.0, 3.0, 2.0], cutoff=3.0)
    # votes: [[4, 5], [3, 1]] -> strictly above 3
    np.testing.assert_array_equal(out, [[1, 1], [0, 0]])
    per_class = ensemble.weighted_vote([b1, b2, b3], [[1, 0], [3, 0], [2, 5]], cutoff=3.0)
    np.testing.assert_array_equal(per_class, [[1, 1], [0, 0]])  # votes [[4, 5], [3, 0]]
    with pytest.raises(HpaDataError, match="0/1"):
        ensemble.weighted_vote([b1 * 0.5], [1.0], cutoff=0.1)


def test_team4_vote_file_name_reading():
    name = "enstw36_1shai562_3russ616_3dieter580_2shai593_3dmytro617_2kevin602_1l2615_7.15_clswt.csv"
    spec = ensemble.parse_vote_filename(name)
    assert spec.weights == (1, 3, 3, 2, 3, 2, 1) and sum(spec.weights) == 15  # teams.md §4.1 step 4
    assert spec.members == ("shai", "russ", "dieter", "shai", "dmytro", "kevin", "l2")
    assert spec.public_lb == (0.562, 0.616, 0.580, 0.593, 0.617, 0.602, 0.615)
    assert spec.cutoff == 7.15 and spec.class_weighted and spec.tag == "enstw36"
    subs = {f"{m}{round(lb * 1000):03d}": np.full((1, C), k % 2, np.uint8)
            for k, (m, lb) in enumerate(zip(spec.members, spec.public_lb))}
    # members 1, 3, 5 (weights 3 + 2 + 2 = 7) vote yes: 7 <= 7.15 -> off
    assert ensemble.vote_from_filename(subs, name).sum() == 0
    with pytest.raises(ConfigError, match="token"):
        ensemble.parse_vote_filename("ens_xx_7.15.csv")


def test_threshold_labels_uses_each_teams_rule():
    rng = np.random.default_rng(6)
    probs = rng.random((40, C))
    y = _labels(40, seed=6)
    team2 = ThresholdConfig("f1_optimal_scaled", kwargs={"scale": 0.7, "fallbacks": (0.6, 0.5)})
    th = 0.7 * fit_thresholds(probs, "f1_optimal", y_true=y)
    labels = ensemble.threshold_labels(probs, team2, y_true=y)
    plain = (probs > th).astype(np.uint8)
    full = plain.any(1)
    np.testing.assert_array_equal(labels[full], plain[full])
    fixed = ensemble.threshold_labels(probs, "fixed", value=0.9)
    np.testing.assert_array_equal(fixed, (probs > 0.9).astype(np.uint8))


def _independent_freq_match(probs, ratios):
    """teams.md §4.1 step 3, written as the loop it describes: per class scan t from 0.95 down to 0.05 in 101 steps
    and stop at the first t whose predicted-positive fraction reaches the desired one."""
    out = np.empty(probs.shape[1])
    for c in range(probs.shape[1]):
        out[c] = 0.05
        for t in np.linspace(0.95, 0.05, 101):
            if (probs[:, c] > t).mean() >= ratios[c]:
                out[c] = t
                break
    return out


def test_every_team_rule_through_one_interface_matches_its_definition():
    rng = np.random.default_rng(7)
    oof, test = rng.random((60, C)), rng.random((50, C))
    y = _labels(60, seed=7, p=0.2)
    # Team 4: frequency-matched on the probabilities being labelled
    ratios = np.linspace(0.02, 0.4, C)
    team4 = ensemble.threshold_labels(test, ThresholdConfig("freq_match", kwargs={"ratios": tuple(ratios)}))
    np.testing.assert_array_equal(team4, (test > _independent_freq_match(test, ratios)).astype(np.uint8))
    # Team 1: LB-ratio match and the most probable class forced on in every row
    team1 = ensemble.threshold_labels(test, ThresholdConfig("lb_ratio_match", force_top=True,
                                                            kwargs={"ratios": (0.0,) * C}))
    top = np.zeros_like(team1)
    top[np.arange(50), test.argmax(1)] = 1
    assert (team1 >= top).all() and team1.any(1).all()
    # Team 3: proportion match fitted on labelled OOF: each class's predicted fraction on the OOF is the grid
    # value closest to its label fraction
    team3_oof = ensemble.threshold_labels(oof, "proportion_match", y_true=y)
    grid = np.arange(0.05, 1.00, 0.01)
    for c in range(C):
        fractions = np.array([(oof[:, c] > t).mean() for t in grid])
        assert team3_oof[:, c].mean() == fractions[np.argmin(np.abs(fractions - y[:, c].mean()))]
    # Team 2 on test images: thresholds 0.7 x the F1-optimal ones of the OOF; empty rows retry 0.6x, then 0.5x
    th = fit_thresholds(oof, "f1_optimal", y_true=y)
    team2 = ensemble.threshold_labels(test, ThresholdConfig("f1_optimal_scaled", kwargs={"scale": 0.7}),
                                      fit_probs=oof, y_true=y)
    expected = test > 0.7 * th
    for f in (0.6, 0.5):
        empty = ~expected.any(1)
        expected[empty] = test[empty] > f * th
    np.testing.assert_array_equal(team2, expected.astype(np.uint8))


def test_label_fitted_rules_say_what_is_missing():
    rng = np.random.default_rng(8)
    oof, test, y = rng.random((30, C)), rng.random((20, C)), _labels(30, seed=8)
    with pytest.raises(ConfigError, match="fit_probs=.*y_true="):
        ensemble.threshold_labels(test, "f1_optimal_scaled")
    with pytest.raises(HpaDataError, match=r"y_true \(30, 28\) does not match .*\(20, 28\).*fit_probs="):
        ensemble.threshold_labels(test, "proportion_match", y_true=y)
    assert ensemble.threshold_labels(test, "proportion_match", fit_probs=oof, y_true=y).shape == (20, C)


def test_sidecar_for_a_csv_written_elsewhere_and_newer_formats_refused(tmp_path):
    probs = np.random.default_rng(9).random((3, C))
    frame = pd.concat([pd.DataFrame({"Id": ["a", "b", "c"]}), pd.DataFrame(probs, columns=list(CLASS_NAMES))], axis=1)
    frame.to_csv(tmp_path / "probabilities.csv", index=False)  # as hpa_zoo.infer.predict writes it
    ensemble.write_sidecar(tmp_path / "probabilities.csv", model_name="team4_gapnet_resnet18_512", fold="test",
                           tta=TTAConfig("d4", aggregate="median"), n_rows=3)
    loaded = ensemble.load_predictions(tmp_path / "probabilities.csv")
    assert (loaded.model_name, loaded.fold, loaded.tta["aggregate"]) == ("team4_gapnet_resnet18_512", "test", "median")
    np.testing.assert_allclose(loaded.probs, probs, atol=1e-6)
    side = ensemble.sidecar_path(tmp_path / "probabilities.csv")
    side.write_text(json.dumps({**json.loads(side.read_text()), "format_version": ensemble.FORMAT_VERSION + 1}))
    with pytest.raises(HpaDataError, match="newer.*upgrade hpa-zoo"):
        ensemble.load_predictions(tmp_path / "probabilities.csv")
