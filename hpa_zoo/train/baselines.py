"""Two deliberately weak baselines that every trained model must beat (NumPy / scikit-learn, no network).

* `LabelPriorBaseline`: looks at no pixel. Every image gets the training label frequencies as probabilities, and
  each class is switched on for every image or for none, whichever gives the higher F1 on the training labels
  (for a class present in training that is "every image": F1 2p / (1 + p) > 0). It is the best an image-blind
  per-class constant can do, so a model at or below it has learned nothing from the pixels.
* `PixelStatsBaseline`: per-class logistic regression (scikit-learn) on `pixel_features` — per-channel mean, std
  and percentiles `BASELINE_PERCENTILES` of the whole image — with per-class F1-optimal thresholds fitted on the
  training images (`hpa_zoo.infer.thresholds`' ``"f1_optimal"``). It sees how bright each stain is, not where.

`hpa_zoo.demo` reports both beside the trained model; ``benchmarks/compare_teams.py`` scores the second one as its
baseline row.
"""
from __future__ import annotations

import numpy as np

from hpa_zoo.constants import NUM_CLASSES
from hpa_zoo.errors import HpaDataError

#: Percentiles of each channel used by `pixel_features` (plus mean and std).
BASELINE_PERCENTILES = (10, 50, 90, 99)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 4) uint8 -> float64 (N, 4·(2 + len(BASELINE_PERCENTILES))): per-channel mean, std, percentiles."""
    x = images.reshape(len(images), -1, images.shape[-1]).astype(np.float64)
    # one np.percentile call for all the percentiles: one partition of each pixel column instead of one per
    # percentile (6x faster on the demo's 2 000 images, the same numbers)
    parts = [x.mean(1), x.std(1), *np.percentile(x, BASELINE_PERCENTILES, axis=1)]
    return np.concatenate(parts, axis=1)


def _check_labels(y, n_images: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[1] != NUM_CLASSES or len(y) == 0:
        raise HpaDataError(f"training labels must be a non-empty (N, {NUM_CLASSES}) 0/1 array; got shape {y.shape}")
    if n_images is not None and len(y) != n_images:
        raise HpaDataError(f"{n_images} training images but {len(y)} label rows; pass one label row per image")
    return (y > 0).astype(np.uint8)


class LabelPriorBaseline:
    """Image-blind: the training label frequencies as probabilities, each class on everywhere or nowhere.

    ``fit(y)`` with (N, 28) 0/1 training labels; ``predict_proba(n)`` -> float64 (n, 28) (every row the
    frequencies); ``predict(n)`` -> uint8 (n, 28) labels (the same row n times).
    """

    def fit(self, y) -> "LabelPriorBaseline":
        """Learn the (28,) float64 label frequencies of ``y`` ((N, 28) 0/1) and F1-optimal thresholds on them."""
        from hpa_zoo.infer.thresholds import fit_thresholds

        y = _check_labels(y)
        self.prior = y.mean(axis=0).astype(np.float64)
        probs = np.tile(self.prior, (len(y), 1))
        self.thresholds = fit_thresholds(probs, "f1_optimal", y_true=y)
        return self

    def predict_proba(self, n: int) -> np.ndarray:
        """float64 (n, 28): the training frequencies, the same row for every image."""
        return np.tile(self.prior, (int(n), 1))

    def predict(self, n: int) -> np.ndarray:
        """uint8 (n, 28) 0/1 labels: `predict_proba` through the fitted thresholds."""
        from hpa_zoo.infer.thresholds import apply_thresholds

        return apply_thresholds(self.predict_proba(n), self.thresholds)


class PixelStatsBaseline:
    """Per-class logistic regression on `pixel_features`, F1-optimal thresholds on the training images.

    ``fit(images, y, seed=0)`` with (N, H, W, 4) uint8 images and (N, 28) 0/1 labels (a class that is always or
    never on becomes the constant of its frequency); ``predict_proba(images)`` -> float64 (M, 28);
    ``predict(images)`` -> uint8 (M, 28).
    """

    def fit(self, images: np.ndarray, y, seed: int = 0) -> "PixelStatsBaseline":
        """Fit on (N, H, W, 4) uint8 images and (N, 28) 0/1 labels; ``seed`` seeds each class's regression."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from hpa_zoo.infer.thresholds import fit_thresholds

        y = _check_labels(y, len(images))
        self.scaler = StandardScaler()
        x = self.scaler.fit_transform(pixel_features(images))
        self.models = [LogisticRegression(max_iter=1000, random_state=seed).fit(x, y[:, c])
                       if 0 < y[:, c].sum() < len(y) else float(y[:, c].mean()) for c in range(NUM_CLASSES)]
        self.thresholds = fit_thresholds(self._proba(x), "f1_optimal", y_true=y)
        return self

    def _proba(self, x: np.ndarray) -> np.ndarray:
        return np.stack([m.predict_proba(x)[:, 1] if not isinstance(m, float) else np.full(len(x), m)
                         for m in self.models], axis=1)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float64 (M, 28) class probabilities for (M, H, W, 4) uint8 images."""
        return self._proba(self.scaler.transform(pixel_features(images)))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (M, 28) 0/1 labels for (M, H, W, 4) uint8 images, through the fitted thresholds."""
        from hpa_zoo.infer.thresholds import apply_thresholds

        return apply_thresholds(self.predict_proba(images), self.thresholds)
