"""Team 4 (Wienerschnitzelgemeinschaft, teams.md §4): GWAP against a NumPy reference, GAPNet/GWAP member shapes and
parameter counts, the 5-crop stacker (shapes, learns a constructed problem), loss vs NumPy, sampling weights on a
known table, Kaggle/external alternation, 5-crop prediction order, the multi-scale ensemble, recipes and rows."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import keras
import tensorflow as tf

import hpa_zoo  # noqa: E402
from hpa_zoo.errors import ConfigError  # noqa: E402
from hpa_zoo.infer import ensemble  # noqa: E402
from hpa_zoo.nn.metrics import macro_f1  # noqa: E402
from hpa_zoo.registry import get_spec  # noqa: E402
from zoo_models.teams import team4_wsg as t4  # noqa: E402
from zoo_models.backbones.resnet import resnet18  # noqa: E402
from zoo_models.pooling import GlobalWeightedAveragePooling2D  # noqa: E402

C = 28


def _trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# ------------------------------------------------------------------------------------------- GWAP
@pytest.mark.parametrize("crop", [0, 2])
def test_gwap_matches_numpy_reference(crop):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 5)).astype(np.float32)
    layer = GlobalWeightedAveragePooling2D(crop=crop)
    out = np.asarray(layer(x))
    kernel, bias = (np.asarray(w) for w in layer.score.weights)
    xc = x[:, crop:9 - crop, crop:11 - crop, :] if crop else x
    score = np.einsum("bhwc,c->bhw", xc, kernel[0, 0, :, 0]) + bias[0]
    w = np.exp(3.0 / (1.0 + np.exp(-score)))  # exp(3 * sigmoid(score))
    expected = np.einsum("bhw,bhwc->bc", w, xc) / w.sum(axis=(1, 2))[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert out.shape == (2, 5)
    restored = GlobalWeightedAveragePooling2D.from_config(layer.get_config())
    assert (restored.crop, restored.scale) == (crop, 3.0)


def test_gwap_refuses_maps_too_small_for_the_crop():
    with pytest.raises(ConfigError, match="crop=0"):
        GlobalWeightedAveragePooling2D(crop=2)(np.zeros((1, 4, 4, 3), np.float32))


# ------------------------------------------------------------------------------------------- models
def test_gapnet_shapes_parameters_and_rgb_input():
    model = t4.build_team4_gapnet_resnet18_512(input_shape=(64, 64, 4))
    assert model.output_shape == (None, C) and model.get_layer("head_concat").output.shape == (None, 1024)
    ref = resnet18(input_shape=(64, 64, 3))
    se = sum(c * (c // 16) + c // 16 + (c // 16) * c + c for c in (64, 64, 128, 256, 512))
    head = 2 * 1024 + 1024 * 256 + 256 + 2 * 256 + 256 * C + C
    assert _trainable(model) == _trainable(ref) + se + head  # teams.md §4.2 GAPNet head
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 4)).astype(np.float32)
    y = x.copy()
    y[..., 3] = 0
    np.testing.assert_allclose(model(x), model(y), atol=1e-6)  # GAPNet is RGB: yellow has no effect
    assert model(x).dtype == "float32"


def test_gwap_member_pools_three_levels_with_gwap():
    model = t4.build_team4_gwap_resnet34_512(input_shape=(64, 64, 4), num_classes=6)
    gwaps = [layer for layer in model.layers if isinstance(layer, GlobalWeightedAveragePooling2D)]
    assert len(gwaps) == 3 and model.get_layer("head_concat").output.shape == (None, 128 + 256 + 512)
    assert all(g.crop == 0 for g in gwaps)  # 8/4/2-px maps at 64 px: no border crop
    big = t4.build_gwap_net(input_shape=(320, 320, 4))
    assert [layer.crop for layer in big.layers if isinstance(layer, GlobalWeightedAveragePooling2D)] == [2, 2, 2]
    assert model.get_layer("conv1").kernel.shape == (7, 7, 4, 64) and model.output_shape == (None, 6)


# ------------------------------------------------------------------------------------------- stacker
def test_stacker_shapes_and_statistics():
    stacker = t4.build_stacker()
    assert stacker.input_shape == (None, 5, C) and stacker.output_shape == (None, C)
    x = np.random.default_rng(2).random((3, 5, C)).astype(np.float32)
    stats = np.asarray(t4.CropStatistics()(x))
    np.testing.assert_allclose(stats, np.concatenate([x.reshape(3, -1), x.mean(1), x.std(1), x.max(1)], 1),
                               atol=1e-6)
    assert _trainable(stacker) == (5 * C + 3 * C) * 256 + 256 + 256 * C + C


def _crop_problem(n, rng):
    """A label is visible in exactly one random crop (p ~ U(.7, 1)); everything else is low (U(0, .3))."""
    y = (rng.random((n, C)) < 0.2).astype(np.float32)
    x = rng.uniform(0.0, 0.3, (n, 5, C))
    which = rng.integers(0, 5, (n, C))
    hot = rng.uniform(0.7, 1.0, (n, C))
    for k in range(5):
        x[:, k, :] = np.where((which == k) & (y > 0), hot, x[:, k, :])
    return x.astype(np.float32), y


def test_stacker_learns_a_constructed_crop_problem():
    rng = np.random.default_rng(3)
    x, y = _crop_problem(1500, rng)
    x_test, y_test = _crop_problem(400, rng)
    baseline = macro_f1(y_test, (x_test.mean(1) > 0.5).astype(np.uint8))  # averaging the crops misses them
    stacker = t4.train_stacker(x, y, epochs=25, seed=0)
    learned = macro_f1(y_test, (np.asarray(stacker(x_test)) > 0.5).astype(np.uint8))
    assert baseline < 0.1 and learned > 0.95


def test_predict_five_crops_order_and_probabilities():
    image = np.zeros((1, 8, 8, 1), np.float32)
    image[0, :4, :4], image[0, :4, 4:], image[0, 4:, :4], image[0, 4:, 4:] = 1, 2, 3, 4
    model = lambda batch, training=False: tf.reduce_mean(batch, axis=(1, 2))  # noqa: E731 (logit = crop mean)
    probs = t4.predict_five_crops(model, image, crop_size=4, batch_size=2)
    expected_logits = np.array([1, 2, 2.5, 3, 4])  # ul, ur, centre, bl, br
    np.testing.assert_allclose(probs[0, :, 0], 1 / (1 + np.exp(-expected_logits)), rtol=1e-6)


# ------------------------------------------------------------------------------------------- loss, data
def test_loss_is_4_weighted_bce_minus_log_hard_f1():
    rng = np.random.default_rng(4)
    y = (rng.random((6, C)) < 0.3).astype(np.float32)
    z = rng.normal(0, 2, (6, C)).astype(np.float32)
    p = 1 / (1 + np.exp(-z))
    bce = -(10 * y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    hard = np.round(p)
    tp, fp, fn = (hard * y).sum(0), (hard * (1 - y)).sum(0), ((1 - hard) * y).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + 1e-7)
    expected = 4 * bce - np.log(f1.mean() + 1e-7)
    assert float(t4.make_loss()(y, z)) == pytest.approx(expected, rel=1e-4)


def test_sampling_weights_on_a_known_table():
    labels = [(0,), (0, 1), (1, 27), (), (0,)]
    # counts: class 0 -> 3, class 1 -> 2, class 27 -> 1
    np.testing.assert_allclose(t4.sampling_weights(labels), [1 / 3, 1 / 2, 1.0, 1 / 3, 1 / 3])
    multi_hot = np.zeros((5, C), np.uint8)
    for i, row in enumerate(labels):
        multi_hot[i, list(row)] = 1
    np.testing.assert_allclose(t4.sampling_weights(multi_hot), t4.sampling_weights(labels))
    ids = t4.weighted_sample_ids(["a", "b", "c", "d", "e"], [0, 0, 1, 0, 0], 4)
    assert ids == ["c"] * 4


def test_batches_alternate_between_kaggle_and_external():
    kaggle = tf.data.Dataset.from_tensors(tf.constant(0)).repeat()
    external = tf.data.Dataset.from_tensors(tf.constant(1)).repeat()
    seq = [int(v) for v in t4.alternate_batches(kaggle, external).take(6)]
    assert seq == [0, 1, 0, 1, 0, 1]
    seq = [int(v) for v in t4.alternate_batches(kaggle, external, kaggle_fraction=0.6).take(10)]
    assert seq == [0, 0, 1, 0, 1] * 2 and seq.count(0) == 6  # 13_ext_60_40


# ------------------------------------------------------------------------------------------- ensemble, recipes
def test_multiscale_ensemble_hill_climbs_each_member_then_votes():
    rng = np.random.default_rng(5)
    y = (rng.random((120, C)) < 0.25).astype(np.uint8)
    y[np.arange(C), np.arange(C)] = 1
    good_oof = np.clip(0.6 * y + rng.uniform(0, 0.3, y.shape), 0, 1)
    noise_oof = rng.random(y.shape)
    test_y = (rng.random((50, C)) < 0.25).astype(np.uint8)
    good_test = np.clip(0.6 * test_y + rng.uniform(0, 0.3, test_y.shape), 0, 1)
    member = {"gapnet_512": (good_oof, good_test), "noise": (noise_oof, rng.random(test_y.shape))}
    ratios = test_y.mean(0)
    recipe = t4.make_recipe("team4_gapnet_resnet18_512")
    assert recipe.blend.rule == "hill_climb_vote"  # declared by the recipe, carried out by hpa_zoo.infer.ensemble
    vote = functools.partial(ensemble.multiscale_vote, thresholds=recipe.thresholds, **recipe.blend.kwargs)
    result = vote({"christof": member}, y, ratios=ratios)
    assert result.climbs["christof"].weights_by_name() == {"gapnet_512": 1}
    np.testing.assert_array_equal(result.labels, result.member_labels["christof"])  # one member: its labels
    assert macro_f1(test_y, result.labels) > 0.9
    three = vote({"a": member, "b": member, "c": {"noise": member["noise"]}}, y, ratios=ratios)
    np.testing.assert_array_equal(three.labels, result.labels)  # a and b (2 of 3 votes) outvote c


def test_recipes_and_registry_rows():
    crop = t4.make_recipe("team4_gapnet_resnet18_1024crop512", image_size=128)
    assert (crop.image_size, crop.input_size) == (128, 64) and crop.thresholds.rule == "freq_match"
    example = {"image": tf.cast(tf.random.stateless_uniform((96, 96, 4), (1, 2), 0, 255), tf.uint8),
               "multi_hot": tf.one_hot(5, C, dtype=tf.uint8)}
    image, target = crop.train_map(example, tf.constant([3, 4], tf.int64))
    assert image.shape == (64, 64, 4) and float(target[5]) == 1.0
    assert crop.eval_map(example)[0].shape == (64, 64, 4)
    full = t4.make_recipe("team4_gapnet_resnet18_512")
    assert (full.image_size, full.input_size, full.epochs) == (512, 512, 20)
    assert full.tta.aggregate == "median" and isinstance(full.make_loss(), t4.Team4Loss)
    gwap = t4.make_recipe("team4_gwap_resnet34_512")
    assert isinstance(gwap.make_optimizer(10, 2), keras.optimizers.SGD)
    for name in ("team4_gapnet_resnet18_512", "team4_gapnet_resnet18_1024crop512", "team4_gwap_resnet34_512"):
        spec = get_spec(name)
        assert spec.team == "team4" and spec.recipe == "zoo_models.teams.team4_wsg:make_recipe" and not spec.reported  # §4: no score
        model = hpa_zoo.load(name, input_shape=(64, 64, 4), num_classes=4)
        assert model.name == name and model.output_shape == (None, 4)
        assert isinstance(model.get_layer(spec.first_conv), keras.layers.Conv2D)
        assert hpa_zoo.feature_extractor(model).output_shape == (None, 256)
    with pytest.raises(ConfigError, match="imagenet_weights"):
        t4.build_gapnet(input_shape=(64, 64, 4), weights="imagenet")
