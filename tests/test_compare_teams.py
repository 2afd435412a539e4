"""benchmarks/compare_teams.py at a micro budget: the report files exist and hold every registered model's row
(trained or "not run"), the pixel-statistics baseline, the teams' own scores labelled as theirs, and the
synthetic-data banner. One GAPNet member keeps it inside the CI budget."""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pandas as pd

import keras  # noqa: F401
import sklearn  # noqa: F401
from hpa_zoo.infer import ensemble  # noqa: E402
from hpa_zoo.constants import CLASS_NAMES  # noqa: E402
from hpa_zoo.registry import list_models  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_teams.py"


def _module():
    spec = importlib.util.spec_from_file_location("compare_teams", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_teams"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_pixel_features_are_per_channel_statistics():
    ct = _module()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 4), dtype=np.uint8)
    f = ct.pixel_features(images)
    assert f.shape == (3, 4 * (2 + len(ct.BASELINE_PERCENTILES)))
    np.testing.assert_allclose(f[:, :4], images.reshape(3, -1, 4).mean(1))
    np.testing.assert_allclose(f[:, 4:8], images.reshape(3, -1, 4).std(1))
    np.testing.assert_allclose(f[:, 8:12], np.percentile(images.reshape(3, -1, 4), 10, axis=1))


def test_micro_budget_report_has_every_team_row_and_the_baseline(tmp_path, capsys):
    ct = _module()
    member = "team4_gapnet_resnet18_512"
    report = ct.compare(tmp_path, budget="micro", models=[member], verbose=1)
    progress = capsys.readouterr().out.splitlines()  # one line before and one after each member run, with its score
    started = [line for line in progress if f"[1/1] {member} seed 0: training" in line]
    finished = [line for line in progress if f"[1/1] {member} seed 0: trained in" in line]
    assert len(started) == 1 and len(finished) == 1 and any("baseline:" in line for line in progress)
    assert progress.index(started[0]) < progress.index(finished[0])
    text = report.read_text()
    table = pd.read_csv(tmp_path / "report.csv")
    assert set(table["model"]) == set(list_models()) | {ct.BASELINE}
    ok = table.set_index("model")
    assert ok.loc[member, "status"] == "ok" and ok.loc[ct.BASELINE, "status"] == "ok"
    for name in (member, ct.BASELINE):
        assert 0.0 <= ok.loc[name, "macro_f1"] <= 1.0 and ok.loc[name, "train_s"] > 0
    assert (ok.drop(index=[member, ct.BASELINE])["status"].str.startswith("not run")).all()
    for name in (member, ct.BASELINE):  # the bootstrap interval over test images brackets the score
        row = ok.loc[name]
        assert row["macro_f1_ci_low"] <= row["macro_f1"] <= row["macro_f1_ci_high"]
    assert "95 % interval" in text and "the intervals" in text
    assert "Synthetic data — not HPA results" in text and "not measured here" in text
    assert "0.565" in text  # Team 1's own private LB score, shown as theirs
    for name in list_models():
        assert f"| {name} |" in text
    assert finished[0].endswith(f"test macro F1 {float(ok.loc[member, 'macro_f1_per_seed']):.3f}")
    per_class = pd.read_csv(tmp_path / "per_class_f1.csv")
    assert len(per_class) == 28 and {member, ct.BASELINE} <= set(per_class.columns)
    # Fig. 2c order: classes by decreasing training frequency, counted here from train.csv
    train = pd.read_csv(tmp_path / "synthetic" / "train.csv", keep_default_na=False)
    counts = np.zeros(28, int)
    for target in train["Target"]:
        counts[[int(c) for c in target.split()]] += 1
    assert list(per_class["class"]) == [CLASS_NAMES[c] for c in np.argsort(-counts, kind="stable")]
    assert counts[[CLASS_NAMES.index(c) for c in per_class["class"]]].tolist() == sorted(counts, reverse=True)
    ranked = ct.ranking([{"model": m, "status": s, "macro_f1": f} for m, s, f in
                         zip(table["model"], table["status"], table["macro_f1"])])
    assert [m for m, _ in ranked] == list(ok.loc[ok["status"] == "ok", "macro_f1"].sort_values(
        ascending=False, kind="stable").index)
    assert "Ranking by macro F1 (ours): 1." in text and "The weak baseline is " in text
    # the member's test probabilities are in the ensembling toolkit's format, with model name, fold and TTA
    page = (tmp_path / "figures" / "report.html").read_text()  # the paper's figures, via hpa_zoo.report
    assert page.count("data:image/png;base64,") >= 5 and "synthetic data — not an HPA result" in page
    summary = json.loads((tmp_path / "figures" / "summary.json").read_text())
    assert list(summary["models"]) == [member]
    assert (tmp_path / "figures" / "fig3_gradcam.png").is_file() == bool(summary.get("cam_panel"))
    saved = ensemble.load_predictions(tmp_path / "runs" / member / "test" / "probabilities.csv")
    assert (saved.model_name, saved.fold, saved.tta["aggregate"]) == (member, "test", "median")
    truth = list(pd.read_csv(tmp_path / "synthetic" / "test_labels.csv")["Id"])
    assert sorted(saved.ids) == sorted(truth) and len(truth) == 16
    for png in ("macro_f1.png", "per_class_f1.png", "single_vs_multi_label.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_two_jobs_train_the_seeds_in_worker_processes_and_report_each_seeds_own_run(tmp_path, capsys):
    """``jobs=2``: the two seeds train at once in spawned workers (one thread each on 2 cores). Each seed's reported
    macro F1 equals sklearn's on the submission that seed's run wrote to its own folder, so no result comes back to
    the wrong seed. ``keep_weights="last"`` reaches the workers' trainings (each preset says it holds the last
    epoch; with the default, one epoch is also the best and the preset would say "best"). ``jobs=0`` and an unknown
    ``keep_weights`` are refused."""
    from sklearn.metrics import f1_score

    ct = _module()
    member = "team4_gapnet_resnet18_512"
    report = ct.compare(tmp_path, budget="micro", models=[member], seeds=[0, 1], verbose=1, jobs=2,
                        keep_weights="last")
    out = capsys.readouterr().out
    assert "2 member runs, 2 at a time" in out
    assert sum(f"{member} seed {s}: trained in" in out for s in (0, 1)) == 2
    table = pd.read_csv(tmp_path / "report.csv").set_index("model")
    assert table.loc[member, "status"] == "ok"
    truth = pd.read_csv(tmp_path / "synthetic" / "test_labels.csv", keep_default_na=False).set_index("Id")

    def multi_hot(targets):
        y = np.zeros((len(targets), 28), int)
        for k, t in enumerate(targets):
            y[k, [int(c) for c in str(t).split()]] = 1
        return y

    per_seed = [float(v) for v in str(table.loc[member, "macro_f1_per_seed"]).split()]
    for s, reported in zip((0, 1), per_seed):
        sub = pd.read_csv(tmp_path / "runs" / f"{member}_seed{s}" / "test" / "submission.csv",
                          keep_default_na=False).set_index("Id").loc[truth.index]
        expected = f1_score(multi_hot(truth["Target"]), multi_hot(sub["Predicted"]), average="macro",
                            zero_division=0)
        assert reported == pytest.approx(expected, abs=5e-5)
    settings = json.loads(report.read_text().split("Settings: `")[1].split("`")[0])
    assert settings["jobs"] == 2 and settings["keep_weights"] == "last"
    for s in (0, 1):
        meta = json.loads((tmp_path / "runs" / f"{member}_seed{s}" / "preset" / "metadata.json").read_text())
        assert meta["weights_from"] == "last" and meta["recipe"]["keep_weights"] == "last"
    with pytest.raises(ct.ConfigError, match="jobs=0"):
        ct.compare(tmp_path / "bad", budget="micro", models=[member], jobs=0)
    with pytest.raises(ct.ConfigError, match=r"keep_weights='first': use one of \['best', 'last'\]"):
        ct.compare(tmp_path / "bad", budget="micro", models=[member], keep_weights="first")


def test_small_budget_overrides_warm_up_and_target_the_training_label_fractions(tmp_path):
    """The small budget's levers, per recipe: Team 1's LB-ratio and Team 4's frequency match keep their rule and
    target the training labels' fractions (counted here with NumPy); Team 3's label-fitted rule is untouched; every
    member's learning rate ramps linearly to 1e-3 over the first epoch, then decays by a cosine to the recipe
    schedule's last rate. The micro budget changes nothing; `Budget.keep_weights="last"` adds itself to any budget's
    overrides, the default ("best", the recipe's own) adds nothing."""
    from hpa_zoo.recipe import load_recipe

    ct = _module()
    targets = ["0", "0 25", "25", "2 5", "0 2", "7"]
    pd.DataFrame({"Id": [f"s{i}" for i in range(len(targets))], "Target": targets}).to_csv(
        tmp_path / "train.csv", index=False)
    expected = np.zeros(28)
    for t in targets:
        expected[[int(c) for c in t.split()]] += 1
    expected /= len(targets)
    small = ct.BUDGETS["small"]
    assert ct._overrides("team1_densenet121_512", tmp_path, ct.BUDGETS["micro"], 48, 32) == {}
    assert ct._overrides("team1_densenet121_512", tmp_path, replace(ct.BUDGETS["micro"], keep_weights="last"),
                         48, 32) == {"keep_weights": "last"}
    assert "keep_weights" not in ct._overrides("team1_densenet121_512", tmp_path, small, 96, 64)
    assert ct._overrides("team1_densenet121_512", tmp_path, replace(small, keep_weights="last"),
                         96, 64)["keep_weights"] == "last"
    steps, epochs = 10, small.epochs
    for name, rule in (("team1_densenet121_512", "lb_ratio_match"), ("team4_gapnet_resnet18_512", "freq_match"),
                       ("team3_resnet34_512", None)):
        overrides = ct._overrides(name, tmp_path, small, 96, 64)
        if rule is None:
            assert "thresholds" not in overrides
        else:
            assert overrides["thresholds"].rule == rule
            np.testing.assert_allclose(overrides["thresholds"].kwargs["ratios"], expected)
        lr = [_rate_at(overrides["make_optimizer"](steps, epochs), s) for s in (0, steps - 1, steps * epochs - 1)]
        assert lr[0] == pytest.approx(1e-3 / steps) and lr[1] == pytest.approx(1e-3, rel=1e-6)
        last = _rate_at(load_recipe(name).make_optimizer(steps, epochs), steps * epochs - 1)
        assert lr[2] == pytest.approx(last, rel=1e-2, abs=1e-5)


def _rate_at(optimizer, step: int) -> float:
    """The optimizer's learning rate at iteration ``step`` (its schedule, read through the public property)."""
    import keras

    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
