"""Team 2 (WAIR, teams.md §2): DenseNet121/169 on RGB (yellow dropped inside), loss weights, oversampling rules,
schedule, recipe and registry rows. References: keras.applications DenseNets, NumPy from the §2.3 formula, a
constructed label table whose duplicated list is written out by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import keras

import hpa_zoo  # noqa: E402
from hpa_zoo.constants import KAGGLE_TRAIN_COUNTS  # noqa: E402
from hpa_zoo.errors import ConfigError  # noqa: E402
from hpa_zoo.registry import get_spec  # noqa: E402
from zoo_models.teams import team2_wair as t2  # noqa: E402

KAGGLE_A = "00000000-0000-4000-8000-000000000001"
KAGGLE_B = "00000000-0000-4000-8000-000000000002"


def _trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("depth, app, feat", [(121, keras.applications.DenseNet121, 1024),
                                              (169, keras.applications.DenseNet169, 1664)])
def test_densenet_matches_keras_applications_plus_a_28_way_head(depth, app, feat):
    model = t2.build_densenet(depth, input_shape=(32, 32, 4))
    ref = app(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert model.input_shape == (None, 32, 32, 4) and model.output_shape == (None, 28)
    assert _trainable(model) == _trainable(ref) + feat * 28 + 28  # GAP -> Linear(feat -> 28), no dropout / FC
    assert model.get_layer("conv1_conv").kernel.shape == (7, 7, 3, 64)  # 3-channel ImageNet stem
    assert model.get_layer("head_gap").output.shape == (None, feat)


def test_yellow_is_dropped_inside_and_imagenet_normalisation_applied():
    model = t2.build_densenet(121, input_shape=(32, 32, 4), num_classes=5)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 4)).astype(np.float32)
    y = x.copy()
    y[..., 3] = rng.uniform(0, 255, (2, 32, 32))
    np.testing.assert_allclose(model(x), model(y), atol=1e-6)  # the yellow plane has no effect
    norm = keras.Model(model.input, model.get_layer("input_norm").output)
    expected = (x[..., :3] / 255.0 - np.array(t2.IMAGENET_MEAN)) / np.array(t2.IMAGENET_STD)
    np.testing.assert_allclose(norm(x), expected, atol=1e-4)
    assert model(x).dtype == "float32"


def test_class_weights_follow_the_formula_with_halved_counts():
    counts = KAGGLE_TRAIN_COUNTS.astype(float)
    for c in (3, 5, 6, 19, 21, 25):  # teams.md §2.3
        counts[c] /= 2
    np.testing.assert_allclose(t2.class_weights(), (1 - counts / 30000) ** 2, rtol=1e-6)
    assert t2.class_weights()[25] == pytest.approx((1 - 4114 / 30000) ** 2, rel=1e-6)
    y = np.zeros((2, 28), np.float32)
    y[0, 0] = 1
    z = np.linspace(-2, 2, 56).reshape(2, 28).astype(np.float32)
    bce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    assert float(t2.make_loss()(y, z)) == pytest.approx(float((bce * t2.class_weights()).mean()), rel=1e-5)


def test_oversampling_first_matching_rule_wins():
    df = pd.DataFrame({"Id": [KAGGLE_A, "ext_0", "ext_1", "ext_2", KAGGLE_B, "ext_3"],
                       "labels": [(8, 27), (16,), (0,), (0, 25), (0,), (10, 0)]})
    # v2: 27 (x10) is listed before 8; 16 has no v2 rule; 10 -> x5
    assert t2.oversample_ids(df, "v2") == ([KAGGLE_A] * 10 + ["ext_0", "ext_1", "ext_2", KAGGLE_B]
                                           + ["ext_3"] * 5)
    # v3: 16 -> x2; 10 -> x4
    assert t2.oversample_ids(df, "v3") == ([KAGGLE_A] * 10 + ["ext_0"] * 2 + ["ext_1", "ext_2", KAGGLE_B]
                                           + ["ext_3"] * 4)
    # v4 = v3 without the external images labelled only {0} / {25} / {0, 25}; the Kaggle {0} image stays
    assert t2.oversample_ids(df, "v4") == [KAGGLE_A] * 10 + ["ext_0"] * 2 + [KAGGLE_B] + ["ext_3"] * 4
    target = df.assign(Target=[" ".join(map(str, t)) for t in df["labels"]]).drop(columns="labels")
    assert t2.oversample_ids(target, "v3") == t2.oversample_ids(df, "v3")
    with pytest.raises(ConfigError, match="v5"):
        t2.oversample_ids(df, "v5")


def test_schedule_cosine_restarts_then_amsgrad_rates():
    sched = t2.Team2Schedule(steps_per_epoch=3, epochs=24)
    lr = np.array([float(sched(e * 3 + 1)) for e in range(24)])
    # torch CosineAnnealing with T_max 10 then a restart with T_max 20 (teams.md §2.5), per epoch
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi * e / 10)) / 2 for e in range(10)]
    expected += [1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi * (e - 10) / 20)) / 2 for e in range(10, 19)]
    np.testing.assert_allclose(lr[:19], expected, rtol=1e-4)
    np.testing.assert_allclose(lr[19:21], 1e-5, rtol=1e-5)
    np.testing.assert_allclose(lr[21:], 1e-6, rtol=1e-5)
    short = t2.Team2Schedule(steps_per_epoch=1, epochs=8)  # 8 epochs map to team epochs 0, 3, 6, ..., 21
    assert float(short(7)) == pytest.approx(1e-6) and float(short(0)) == pytest.approx(1e-3)
    assert isinstance(t2.make_optimizer(3, 24), keras.optimizers.Adamax)
    ams = t2.make_amsgrad_optimizer(1e-5)
    assert ams.amsgrad and ams.weight_decay == pytest.approx(1e-5)


def test_recipe_tta_thresholds_and_train_map():
    import tensorflow as tf
    recipe = t2.make_recipe("team2_densenet169_rgb_512", image_size=48, epochs=2)
    assert (recipe.image_size, recipe.input_size, recipe.epochs, recipe.batch_size) == (48, 48, 2, 48)
    assert recipe.tta.transforms == "random_flip_ssr" and recipe.tta.n_random_passes == 5
    assert recipe.tta.aggregate == "mean"
    assert recipe.thresholds.rule == "f1_optimal_scaled" and recipe.thresholds.kwargs["scale"] == 0.7
    example = {"image": tf.cast(tf.random.stateless_uniform((64, 64, 4), (1, 2), 0, 255), tf.uint8),
               "multi_hot": tf.one_hot(3, 28, dtype=tf.uint8)}
    a, y = recipe.train_map(example, tf.constant([5, 6], tf.int64))
    b, _ = recipe.train_map(example, tf.constant([5, 6], tf.int64))
    assert a.shape == (48, 48, 4) and a.dtype == tf.float32 and float(y[3]) == 1.0
    np.testing.assert_array_equal(a, b)  # stateless: same seed, same augmentation
    assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 255.0


def test_registry_rows_build_through_hpa_zoo_load():
    for name in ("team2_densenet121_rgb_512", "team2_densenet169_rgb_512"):
        spec = get_spec(name)
        assert spec.team == "team2" and spec.input_size == 512 and spec.channels == "RGBY"
        assert any(s.value == 0.571 and "7-model" in s.metric for s in spec.reported)  # teams.md §2.6
    model = hpa_zoo.load("team2_densenet121_rgb_512", input_shape=(32, 32, 4), num_classes=3)
    assert model.name == "team2_densenet121_rgb_512" and model.output_shape == (None, 3)
    assert hpa_zoo.feature_extractor(model).output_shape == (None, 1024)
    rng = np.random.default_rng(1)
    members = [rng.random((4, 28)) for _ in range(3)]
    blend = t2.make_recipe().blend  # teams.md §2.6: the recipe declares the unweighted mean; infer carries it out
    assert blend.rule == "mean"
    from hpa_zoo.infer import ensemble

    got = ensemble.blend(blend, {f"m{i}": m for i, m in enumerate(members)})
    np.testing.assert_allclose(got, np.mean(members, axis=0), atol=1e-6)
