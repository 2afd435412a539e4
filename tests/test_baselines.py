"""hpa_zoo.train.baselines on constructed data, against sklearn's f1_score and a direct NumPy computation."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from hpa_zoo.train.baselines import BASELINE_PERCENTILES, LabelPriorBaseline, PixelStatsBaseline, pixel_features
from hpa_zoo.errors import HpaDataError


def _labels(n, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 28)) < np.linspace(0.02, 0.4, 28)).astype(np.uint8)
    y[:, 27] = 0  # a class never seen in training
    return y


def test_label_prior_switches_every_seen_class_on_everywhere():
    y = _labels(300, 0)
    base = LabelPriorBaseline().fit(y)
    np.testing.assert_allclose(base.predict_proba(5), np.tile(y.mean(0), (5, 1)))
    labels = base.predict(300)
    np.testing.assert_array_equal(labels[:, :27], 1)
    np.testing.assert_array_equal(labels[:, 27], 0)
    p = y[:, :27].mean(0)  # F1 of "always on" is 2p / (1 + p)
    np.testing.assert_allclose(f1_score(y[:, :27], labels[:, :27], average=None, zero_division=0), 2 * p / (1 + p))


def test_pixel_features_and_the_logistic_baseline_learn_a_brightness_class():
    rng = np.random.default_rng(1)
    y = _labels(200, 1)
    images = rng.integers(0, 30, (200, 16, 16, 4)).astype(np.uint8)
    images[y[:, 5] == 1, :, :, 1] += 60  # class 5: a bright green channel
    f = pixel_features(images)
    assert f.shape == (200, 4 * (2 + len(BASELINE_PERCENTILES)))
    np.testing.assert_allclose(f[:, 1], images[..., 1].reshape(200, -1).mean(1))
    np.testing.assert_allclose(f[:, 4 + 1], images[..., 1].reshape(200, -1).std(1))
    for j, q in enumerate(BASELINE_PERCENTILES):  # then 4 columns per percentile, channel-minor
        for c in range(4):
            np.testing.assert_array_equal(f[:, 8 + 4 * j + c], [np.percentile(im[..., c], q) for im in images])
    base = PixelStatsBaseline().fit(images[:150], y[:150])
    pred = base.predict(images[150:])
    assert f1_score(y[150:, 5], pred[:, 5]) > 0.95
    assert base.predict_proba(images[150:]).shape == (50, 28)
    with pytest.raises(HpaDataError, match="150 training images but 10 label rows"):
        PixelStatsBaseline().fit(images[:150], y[:10])
