"""Team 1's metric-learning model (zoo_models.teams.team1_metric_learning): ArcFace logits and loss against NumPy from
the formulas, the per-set standardised cosine matching against sklearn + NumPy, the network's shapes, and the
label-replacement exploit against a hand computation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.preprocessing import scale

import hpa_zoo
from hpa_zoo.infer.ensemble import metric_learning_replace
from zoo_models.teams import team1_metric_learning as ml


def _numpy_arcface(cos, y, s=30.0, m=0.5):
    sin = np.sqrt(np.clip(1.0 - cos ** 2, 0, None))
    phi = cos * math.cos(m) - sin * math.sin(m)
    phi = np.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
    return s * (y * phi + (1 - y) * cos)


def _numpy_ce(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(y * logp).sum(axis=1)


def test_arcface_logits_and_loss_match_numpy():
    import keras

    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, (16, 7)).astype(np.float32)
    cos[0, 2] = -0.95  # the true class beyond pi - m: the linear branch
    y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, 16)]
    y[0] = np.eye(7)[2]
    ref = _numpy_arcface(cos.astype(np.float64), y)
    got = keras.ops.convert_to_numpy(ml.arcface_logits(cos, y))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    loss = float(keras.ops.convert_to_numpy(ml.ArcFaceLoss()(y, cos)))
    expected = np.mean((_numpy_ce(ref, y) + _numpy_ce(cos.astype(np.float64), y)) / 2)
    assert loss == pytest.approx(expected, rel=1e-5)


def test_matching_standardises_each_set_then_takes_the_best_cosine():
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, (20, 8)) * 3 + 5
    query = np.concatenate([reference[[3, 11]] + rng.normal(0, 0.01, (2, 8)), rng.normal(0, 1, (3, 8))])
    best, score, matched = ml.match(query, reference)
    q, r = scale(query), scale(reference)  # independent: sklearn's standardisation, NumPy cosine
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (r / np.linalg.norm(r, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(best, sims.argmax(1))
    np.testing.assert_allclose(score, sims.max(1), atol=1e-12)
    np.testing.assert_array_equal(matched, sims.max(1) > 0.65)


def test_network_is_registered_with_its_embedding():
    spec = hpa_zoo.get_spec("team1_arcface_resnet50_768")
    assert (spec.input_size, spec.feature_layer) == (768, "embedding")
    model = hpa_zoo.load(spec.name, num_classes=5, input_shape=(64, 64, 4))
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 4)).astype(np.float32)
    cos = np.asarray(model(x, training=False))
    emb = np.asarray(hpa_zoo.feature_extractor(model)(x, training=False))
    assert cos.shape == (2, 5) and emb.shape == (2, 512) and np.all(np.abs(cos) <= 1 + 1e-5)
    assert model.get_layer("conv1_conv").kernel.shape[2] == 4  # the RGBY stem


def test_label_replacement_keeps_the_five_tags_and_never_empties_a_row():
    cnn = np.zeros((3, 28), bool)
    cnn[0, [0, 8]] = True        # nucleoplasm + peroxisomes (a kept tag)
    cnn[1, [25]] = True
    cnn[2, [2]] = True
    ref = np.zeros((2, 28), bool)
    ref[0, [7, 9]] = True        # golgi + endosomes (kept tag: the CNN's decision wins)
    ref[1, [9]] = True           # only a kept tag: the row would be empty
    out = metric_learning_replace(cnn, [0, 1, 0], [True, True, False], ref)
    assert sorted(np.flatnonzero(out[0])) == [7, 8]  # golgi from the match, peroxisomes kept, endosomes not taken
    assert sorted(np.flatnonzero(out[1])) == [25]    # empty after the replacement: the CNN's row
    assert sorted(np.flatnonzero(out[2])) == [2]     # not matched: unchanged
