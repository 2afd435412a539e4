"""The team epoch samplers (`hpa_zoo.recipe.Recipe.train_sampler`): Team 2's rare-class oversampling (teams.md §2.4)
and Team 4's rarest-label weighted sampling with Kaggle / external alternating batches (teams.md §4.2), each
checked against a NumPy computation written here from the facts (the rule tables, w_i = max_c 1/n_c), plus
determinism per seed and the recipes that carry them."""
from __future__ import annotations

import collections
import uuid

import numpy as np
import pytest

import keras  # noqa: F401
from hpa_zoo.errors import ConfigError  # noqa: E402
from zoo_models.teams import team2_wair as t2  # noqa: E402
from zoo_models.teams import team4_wsg as t4  # noqa: E402

C = 28
# teams.md §2.4, copied from the facts (not from the module): (class, copies), first matching rule wins.
V2 = [(27, 10), (15, 10), (10, 5), (9, 5), (8, 4), (20, 3), (17, 3), (24, 2), (26, 2)]
V3 = [(27, 10), (15, 10), (10, 4), (9, 4), (8, 4), (20, 3), (17, 3), (16, 2), (18, 2), (22, 2), (26, 2)]


def _kaggle_ids(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def _v18_ids(n: int) -> list[str]:
    return [f"{10000 + k}_{1600 + k}_C{k % 9 + 1}_{k % 4 + 1}" for k in range(n)]  # e.g. 10580_1610_C1_1


def _labels(n: int, seed: int, p: float = 0.12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, C)) < p).astype(np.float32)
    y[np.arange(n), rng.integers(0, C, n)] = 1.0  # every image has a label
    return y


def _expected_copies(ids, y, table, drop_external_only=False) -> list[int]:
    out = []
    for image_id, row in zip(ids, y):
        labels = set(np.flatnonzero(row).tolist())
        external = not (len(image_id) == 36 and image_id.count("-") == 4)
        if drop_external_only and external and labels in ({0}, {25}, {0, 25}):
            out.append(0)
            continue
        out.append(next((n for cls, n in table if cls in labels), 1))
    return out


# ------------------------------------------------------------------------------------------- Team 2
@pytest.mark.parametrize("rule, table, drop", [("v2", V2, False), ("v3", V3, False), ("v4", V3, True)])
def test_team2_sampler_repeats_each_image_by_its_first_matching_rule(rule, table, drop):
    ids = _kaggle_ids(60, 1) + _v18_ids(40)
    y = _labels(100, 2)
    y[60:66] = 0
    y[60, 0] = y[61, 25] = 1  # external {0}, {25}, {0, 25}: dropped by v4
    y[62, [0, 25]] = 1
    y[63, 0] = y[0:3] = 0
    y[0, 0] = 1  # a Kaggle {0} image is kept by v4
    y[1, [27, 8]] = 1  # 27 is listed before 8
    y[2, [8, 16]] = 1  # 8 before 16
    epoch = t2.oversampling_sampler(ids, y, seed=0, batch_size=16, rule=rule)
    expected = _expected_copies(ids, y, table, drop)
    counts = collections.Counter(epoch)
    assert [counts.get(i, 0) for i in ids] == expected
    assert len(epoch) == sum(expected)
    if drop:
        assert counts.get(ids[60], 0) == counts.get(ids[61], 0) == counts.get(ids[62], 0) == 0
        assert counts[ids[0]] == 1


def test_team2_sampler_shuffles_deterministically_per_seed():
    ids, y = _kaggle_ids(50, 3), _labels(50, 4)
    a = t2.oversampling_sampler(ids, y, seed=7, batch_size=8)
    assert a == t2.oversampling_sampler(ids, y, seed=7, batch_size=8)
    assert a == t2.oversampling_sampler(ids, y, seed=7, batch_size=32)  # the batch size does not change it
    b = t2.oversampling_sampler(ids, y, seed=8, batch_size=8)
    assert a != b and sorted(a) == sorted(b)
    # shuffled: not the duplicated list in input order (oversample_ids), whose copies are consecutive
    import pandas as pd

    df = pd.DataFrame({"Id": ids, "labels": [tuple(np.flatnonzero(r)) for r in y]})
    assert sorted(t2.oversample_ids(df, "v4")) == sorted(a) and t2.oversample_ids(df, "v4") != a


def test_team2_recipe_uses_rule_v4_and_can_switch():
    ids, y = _kaggle_ids(30, 5), _labels(30, 6)
    recipe = t2.make_recipe("team2_densenet121_rgb_512", image_size=64)
    assert recipe.train_sampler(ids, y, seed=1, batch_size=4) == t2.oversampling_sampler(ids, y, seed=1,
                                                                                          batch_size=4, rule="v4")
    v2 = t2.make_recipe(oversampling="v2").train_sampler(ids, y, seed=1, batch_size=4)
    assert collections.Counter(v2) == collections.Counter(
        {i: n for i, n in zip(ids, _expected_copies(ids, y, V2)) if n})
    assert t2.make_recipe(oversampling=None).train_sampler is None
    assert "no sampler hook" not in recipe.notes
    with pytest.raises(ConfigError, match="v5"):
        t2.make_recipe(oversampling="v5")
    with pytest.raises(ConfigError, match=r"\(N, C\)"):
        t2.oversampling_sampler(ids, y[:5], seed=0, batch_size=4)


# ------------------------------------------------------------------------------------------- Team 4
def _rarest_label_weights(y: np.ndarray) -> np.ndarray:
    counts = y.sum(0)
    return np.array([max(1.0 / counts[c] for c in np.flatnonzero(row)) for row in y])


def test_team4_draws_follow_rarest_label_weights_over_many_seeds():
    ids, y = _kaggle_ids(12, 7), np.zeros((12, C), np.float32)
    y[0:8, 0] = 1  # class 0: 8 images, class 1: 3, class 2: 2, class 27: 1
    y[8:11, 1] = y[0:2, 2] = y[11, 27] = 1
    p = _rarest_label_weights(y)
    np.testing.assert_allclose(p, [1 / 2] * 2 + [1 / 8] * 6 + [1 / 3] * 3 + [1.0])
    p = p / p.sum()
    draws = collections.Counter()
    seeds = 1500
    for seed in range(seeds):
        epoch = t4.rarest_label_sampler(ids, y, seed=seed, batch_size=4)
        assert len(epoch) == len(ids)
        draws.update(epoch)
    freq = np.array([draws[i] for i in ids]) / (seeds * len(ids))
    # 18,000 draws: the standard error of each frequency is <= 0.0037; 0.015 is > 4 standard errors
    np.testing.assert_allclose(freq, p, atol=0.015)
    assert freq.argmax() == 11 and freq[2:8].max() < freq[8:11].min() < freq[0:2].min()


def test_team4_batches_alternate_kaggle_and_external_in_the_team_ratio():
    kaggle, external = _kaggle_ids(20, 9), _v18_ids(15)
    ids = kaggle[:10] + external + kaggle[10:]  # sources interleaved in the input
    y = _labels(35, 10, p=0.1)
    bs = 4
    for fraction, pattern in ((0.5, "KE"), (0.6, "KKEKE")):  # 13_ext_60_40: 3 Kaggle batches in 5
        epoch = t4.rarest_label_sampler(ids, y, seed=3, batch_size=bs, kaggle_fraction=fraction)
        assert len(epoch) == len(ids)
        batches = [epoch[k:k + bs] for k in range(0, len(epoch), bs)]
        seen = "".join("K" if all(i in kaggle for i in b) else "E" if all(i in external for i in b) else "?"
                       for b in batches)
        assert seen == (pattern * len(batches))[:len(batches)]
    # within a source, draws follow that source's own rarest-label weights
    draws = collections.Counter()
    for seed in range(800):
        draws.update(t4.rarest_label_sampler(ids, y, seed=seed, batch_size=bs))
    for members in (kaggle, external):
        rows = [ids.index(i) for i in members]
        p = _rarest_label_weights(y[rows])
        freq = np.array([draws[i] for i in members], float)
        np.testing.assert_allclose(freq / freq.sum(), p / p.sum(), atol=0.02)


def test_team4_sampler_is_deterministic_per_seed_and_validates():
    ids, y = _kaggle_ids(10, 11) + _v18_ids(10), _labels(20, 12)
    a = t4.rarest_label_sampler(ids, y, seed=5, batch_size=4)
    assert a == t4.rarest_label_sampler(ids, y, seed=5, batch_size=4)
    assert a != t4.rarest_label_sampler(ids, y, seed=6, batch_size=4)
    assert len(t4.rarest_label_sampler(ids, y, seed=5, batch_size=4, n=33)) == 33
    assert t4.is_external_id("10580_1610_C1_1") and not t4.is_external_id(ids[0])
    with pytest.raises(ConfigError, match=r"\(N, C\)"):
        t4.rarest_label_sampler(ids, y[:3], seed=0, batch_size=4)
    with pytest.raises(ConfigError, match="kaggle_fraction"):
        t4.make_sampler(1.5)


def test_team4_recipes_carry_the_sampler_except_gwap():
    ids, y = _kaggle_ids(16, 13), _labels(16, 14)
    for name in ("team4_gapnet_resnet18_512", "team4_gapnet_resnet18_1024crop512"):
        recipe = t4.make_recipe(name, image_size=64)
        assert recipe.train_sampler(ids, y, seed=2, batch_size=4) == t4.rarest_label_sampler(ids, y, seed=2,
                                                                                              batch_size=4)
        assert "no sampler hook" not in recipe.notes
    assert t4.make_recipe("team4_gwap_resnet34_512").train_sampler is None
