"""hpa_zoo.train.policy_search: Team 3's random policy search (scoring, flattening, a tiny resumable run, CLI)."""
from __future__ import annotations

import logging
import json


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hpa_zoo.augment import autoaugment
from hpa_zoo.train import policy_search as aas  # noqa: E402
from hpa_zoo.errors import ConfigError  # noqa: E402


def test_best_moving_average_matches_a_hand_computed_sequence():
    f1 = [0.1, 0.3, 0.2, 0.6, 0.4, 0.0]
    # windows of 3: 0.2, 0.3667, 0.4, 0.3333 -> best 0.4
    assert aas.best_moving_average(f1, 3) == pytest.approx(0.4)
    assert aas.best_moving_average(f1, 1) == pytest.approx(0.6)
    rng = np.random.default_rng(0)
    x = rng.random(60)
    ref = max(np.mean(x[i:i + 10]) for i in range(51))
    assert aas.best_moving_average(x, 10) == pytest.approx(ref)
    assert aas.best_moving_average([0.2, 0.4], 10) == pytest.approx(0.3)  # shorter than the window: mean of all
    with pytest.raises(ConfigError, match="no per-epoch values"):
        aas.best_moving_average([], 3)


def test_flatten_top_k_keeps_the_best_policies_in_order():
    policies = [aas.candidate_policy(7, i) for i in range(4)]
    scored = list(zip([0.2, 0.5, 0.1, 0.5], policies))
    flat = aas.flatten_top_k(scored, 2)
    assert flat == policies[1] + policies[3]  # tie at 0.5: the earlier candidate first
    assert len(aas.flatten_top_k(scored, 3)) == 15
    with pytest.raises(ConfigError, match="k=5"):
        aas.flatten_top_k(scored, 5)


def test_candidate_policies_depend_only_on_seed_and_index():
    a = aas.candidate_policy(3, 4)
    assert a == aas.candidate_policy(3, 4) and a != aas.candidate_policy(3, 5) and a != aas.candidate_policy(4, 4)
    assert len(a) == 5 and all(sub.first.name != sub.second.name for sub in a)  # teams.md §3.5: 2 distinct ops


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("aas") / "data", n_train=8, n_test=0, size=32,
                                   workers=0, progress=False)


def test_tiny_search_writes_policy_and_results_and_resumes(tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hpa_zoo")
    # three proxy trainings in all (each one traces a new model and a new augmentation graph)
    out = tmp_path / "policy.json"
    kw = dict(epochs=1, size=32, window=1, batch_size=4, proxy="small_cnn", seed=0)
    aas.search(tiny_data, out, candidates=1, top_k=1, **kw)
    assert autoaugment.load_policy(out) == aas.candidate_policy(0, 0)
    results = pd.read_csv(tmp_path / "policy.results.csv")
    assert sorted(results["candidate"]) == [aas.BASELINE_ID, 0]
    assert "[1/2] baseline" in caplog.text  # the library logs; only the CLI prints
    caplog.clear()

    aas.search(tiny_data, out, candidates=2, top_k=2, **kw)  # resume: only candidate 1 is trained
    log = caplog.text
    assert "2 already in" in log and "[1/1] candidate_001" in log and "candidate_000:" not in log
    assert "baseline:" not in log

    policy = autoaugment.load_policy(out)
    assert len(policy) == 2 * 5
    results = pd.read_csv(tmp_path / "policy.results.csv")
    assert sorted(results["candidate"]) == [aas.BASELINE_ID, 0, 1]
    for row in results.itertuples():
        f1 = json.loads(row.f1_per_epoch)
        assert len(f1) == 1 and 0.0 <= f1[0] <= 1.0 and row.score == pytest.approx(f1[0], abs=1e-6)
    # the written policy is both candidates' sub-policies, best score first (ties: the lower id first)
    cands = results[results["candidate"] >= 0].sort_values(["score", "candidate"], ascending=[False, True])
    assert policy == sum((aas.candidate_policy(0, int(c)) for c in cands["candidate"]), [])

    with pytest.raises(ConfigError, match="epochs"):
        aas.search(tiny_data, out, candidates=2, top_k=2, **{**kw, "epochs": 2})


def test_cli_autoaugment_search_on_synthetic_data(tiny_data, tmp_path):
    from hpa_zoo.cli import main

    out = tmp_path / "cli_policy.json"
    code = main(["autoaugment-search", "--data", str(tiny_data), "--out", str(out), "--candidates", "1",
                 "--epochs", "1", "--size", "32", "--top-k", "1", "--window", "1", "--batch-size", "4",
                 "--proxy", "small_cnn", "--no-baseline"])
    assert code == 0
    assert autoaugment.load_policy(out) == aas.candidate_policy(0, 0)
    assert main(["autoaugment-search", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--candidates",
                 "2", "--top-k", "1", "--proxy", "small_cnn", "--results", str(tmp_path / "other.csv")]) == 1
