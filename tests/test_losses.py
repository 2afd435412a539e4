"""hpa_zoo.nn.losses against independent NumPy references written from the definitions (teams.md §1.3, §2.3, §3.3,
§4.2; Berman et al. 2018), values and gradients (central finite differences on the float64 reference)."""
from __future__ import annotations

from fractions import Fraction


import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from hpa_zoo.nn import losses  # noqa: E402
from hpa_zoo.errors import ConfigError  # noqa: E402


# ----------------------------------------------------------------------------- NumPy references (float64, loops)
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def ref_bce(y, z):
    """-y log p - (1-y) log(1-p), written with p = sigmoid(z) directly."""
    p = _sigmoid(z)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def ref_focal(y, z, gamma=2.0, reduction="sum_over_classes"):
    p = _sigmoid(z)
    p_t = np.where(y == 1, p, 1 - p)
    elem = ref_bce(y, z) * (1 - p_t) ** gamma
    return elem.sum(axis=1).mean() if reduction == "sum_over_classes" else elem.mean()


def ref_lovasz_grad(gt_sorted):
    gts = gt_sorted.sum()
    grad = np.zeros(len(gt_sorted))
    prev = 0.0
    for i in range(len(gt_sorted)):
        inter = gts - gt_sorted[: i + 1].sum()
        union = gts + (1 - gt_sorted[: i + 1]).sum()
        jac = 1.0 - inter / union
        grad[i] = jac - prev if i > 0 else jac
        prev = jac
    return grad


def ref_lovasz_flat(z, y):
    errors = 1.0 - z * (2 * y - 1)
    order = sorted(range(len(z)), key=lambda i: -errors[i])
    e_sorted = np.array([errors[i] for i in order])
    gt_sorted = np.array([y[i] for i in order], dtype=np.float64)
    return float(np.dot(np.maximum(e_sorted, 0), ref_lovasz_grad(gt_sorted)))


def ref_lovasz(y, z, symmetric=True):
    out = []
    for c in range(z.shape[1]):
        loss = ref_lovasz_flat(z[:, c], y[:, c])
        if symmetric:
            loss = (loss + ref_lovasz_flat(-z[:, c], 1 - y[:, c])) / 2
        out.append(loss)
    return float(np.mean(out))


def ref_hard_bce(y, z):
    out = []
    for c in range(z.shape[1]):
        pos = [b for b in range(len(z)) if y[b, c] == 1]
        neg = sorted((b for b in range(len(z)) if y[b, c] == 0), key=lambda b: -z[b, c])
        n_pos, n_neg = len(pos), len(neg)
        # int(r * n) from the definition, in exact rational arithmetic.
        k = min(n_neg, n_pos + max(2, int(Fraction(1, 2) * n_neg)), int(Fraction(7, 10) * n_neg) + 2)
        subset = pos + neg[:k]
        out.append(np.mean([ref_bce(y[b, c], z[b, c]) for b in subset]))
    return float(np.mean(out))


def ref_bestfitting(y, z):
    return 0.5 * ref_focal(y, z) + 0.5 * ref_lovasz(y, z) + 0.5 * ref_hard_bce(y, z)


def ref_weighted_bce(y, z, w=None, pw=None):
    p = _sigmoid(z)
    pw = 1.0 if pw is None else pw
    elem = -(pw * y * np.log(p) + (1 - y) * np.log(1 - p))
    return (elem * (1.0 if w is None else w[None, :])).mean()


def ref_soft_f1(y, z, eps=1e-7):
    p = _sigmoid(z)
    f1s = []
    for c in range(y.shape[1]):
        tp = sum(p[b, c] * y[b, c] for b in range(len(y)))
        fp = sum(p[b, c] * (1 - y[b, c]) for b in range(len(y)))
        fn = sum((1 - p[b, c]) * y[b, c] for b in range(len(y)))
        f1s.append(2 * tp / (2 * tp + fp + fn + eps))
    return -np.log(np.mean(f1s) + eps)


# ----------------------------------------------------------------------------- data
def _batch(b, c, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, size=(b, c))
    y = (rng.random((b, c)) < 0.35).astype(np.float64)
    y[:, 0] = 0.0  # a class with no positives
    if c > 1:
        y[:, 1] = 1.0  # a class with only positives
    return y, z


BATCHES = [(8, 5, 0), (1, 4, 1), (2, 3, 2), (13, 6, 3), (32, 3, 4)]


def _keras_value(fn, y, z, **kw):
    return float(keras.ops.convert_to_numpy(fn(y.astype(np.float32), z.astype(np.float32), **kw)))


def _tape_grad(fn, y, z):
    zt = tf.Variable(z.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = fn(tf.constant(y.astype(np.float32)), zt)
    return tape.gradient(loss, zt).numpy()


def _fd_grad(ref, y, z, h=1e-5):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        g[idx] = (ref(y, zp) - ref(y, zm)) / (2 * h)
    return g


CASES = [
    ("focal_sum", lambda y, z: losses.focal_loss(y, z), ref_focal),
    ("focal_mean", lambda y, z: losses.focal_loss(y, z, reduction="mean"), lambda y, z: ref_focal(y, z, reduction="mean")),
    ("lovasz_sym", lambda y, z: losses.lovasz_hinge_per_class(y, z), ref_lovasz),
    ("lovasz_plain", lambda y, z: losses.lovasz_hinge_per_class(y, z, symmetric=False),
     lambda y, z: ref_lovasz(y, z, symmetric=False)),
    ("hard_bce", losses.hard_negative_bce, ref_hard_bce),
    ("bestfitting", lambda y, z: losses.BestfittingLoss()(y, z), ref_bestfitting),
    ("weighted_bce_team2", lambda y, z: losses.weighted_bce(y, z, class_weights=np.linspace(0.5, 1.5, z.shape[1])),
     lambda y, z: ref_weighted_bce(y, z, w=np.linspace(0.5, 1.5, z.shape[1]))),
    ("weighted_bce_pos10", lambda y, z: losses.weighted_bce(y, z, pos_weight=10.0),
     lambda y, z: ref_weighted_bce(y, z, pw=10.0)),
    ("soft_f1", losses.soft_f1_loss, ref_soft_f1),
]


@pytest.mark.parametrize("name,fn,ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("b,c,seed", BATCHES)
def test_loss_value_matches_numpy_reference(name, fn, ref, b, c, seed):
    y, z = _batch(b, c, seed)
    np.testing.assert_allclose(_keras_value(fn, y, z), ref(y, z), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("b,c,seed", [(8, 4, 10), (1, 3, 11), (11, 3, 12)])
def test_loss_gradient_matches_finite_differences(name, fn, ref, b, c, seed):
    y, z = _batch(b, c, seed, scale=1.5)
    np.testing.assert_allclose(_tape_grad(fn, y, z), _fd_grad(ref, y, z), rtol=2e-3, atol=2e-5)


def test_hard_negative_keeps_the_right_subset():
    # One class, 10 samples: 2 positives, 8 negatives -> k = min(8, 2 + max(2, 4), int(5.6) + 2) = 6.
    y = np.array([[1], [1], [0], [0], [0], [0], [0], [0], [0], [0]], dtype=np.float64)
    z = np.array([[0.3], [-1.0], [5.0], [-4.0], [2.0], [-3.0], [1.0], [-2.0], [0.0], [3.0]])
    kept = [0, 1, 2, 9, 4, 6, 8, 7]  # both positives + the 6 negatives with the largest logits
    expected = np.mean([ref_bce(y[b, 0], z[b, 0]) for b in kept])
    np.testing.assert_allclose(_keras_value(losses.hard_negative_bce, y, z), expected, rtol=1e-6)


def test_lovasz_edge_cases_all_negative_and_single_sample():
    # No positives: jaccard = 1 everywhere, grad = e_1, loss = relu(largest error).
    z = np.array([[0.5], [-2.0], [1.5]])
    y = np.zeros_like(z)
    assert _keras_value(losses.lovasz_hinge_per_class, y, z, symmetric=False) == pytest.approx(2.5, rel=1e-6)
    # B = 1, positive with logit 0.25: error 0.75, grad [1] -> 0.75; mirrored problem has no positives: 0.75.
    assert _keras_value(losses.lovasz_hinge_per_class, np.ones((1, 1)), np.full((1, 1), 0.25)) == pytest.approx(0.75)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_losses_are_float32_under_low_precision_inputs(dtype):
    y, z = _batch(8, 5, 7)
    z_low = tf.cast(tf.constant(z), dtype)
    z_rounded = tf.cast(z_low, tf.float64).numpy()
    for fn, ref in [(losses.focal_loss, ref_focal), (losses.lovasz_hinge_per_class, ref_lovasz),
                    (losses.hard_negative_bce, ref_hard_bce), (losses.BestfittingLoss(), ref_bestfitting),
                    (losses.FocalLoss(mode="mean"), lambda y, z: ref_focal(y, z, reduction="mean"))]:
        out = fn(tf.cast(tf.constant(y), dtype), z_low)
        assert out.dtype == tf.float32 and out.shape == ()
        np.testing.assert_allclose(out.numpy(), ref(y, z_rounded), rtol=1e-5)


def test_team2_class_weights_formula():
    w = losses.team2_class_weights()
    assert w.shape == (28,) and w.dtype == np.float32
    assert w[0] == pytest.approx((1 - 12885 / 30000) ** 2)
    assert w[25] == pytest.approx((1 - 4114 / 30000) ** 2)  # 8228 halved
    assert w[27] == pytest.approx((1 - 11 / 30000) ** 2)


def test_serialisation_round_trip_keeps_config_and_value():
    y, z = _batch(6, 4, 5)
    for loss in [losses.BestfittingLoss(focal_weight=0.3, hard_weight=0.7), losses.FocalLoss(gamma=1.5, mode="mean")]:
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
        np.testing.assert_allclose(float(clone(y, z)), float(loss(y, z)), rtol=1e-7)
    np.testing.assert_allclose(float(losses.FocalLoss(gamma=1.5, mode="mean")(y, z)),
                               ref_focal(y, z, gamma=1.5, reduction="mean"), rtol=1e-5)


def test_focal_metric_averages_per_sample_over_uneven_batches():
    y1, z1 = _batch(3, 4, 20)
    y2, z2 = _batch(5, 4, 21)
    metric = losses.make_focal_metric()
    assert metric.name == "focal"
    metric.update_state(y1.astype(np.float32), z1.astype(np.float32))
    metric.update_state(y2.astype(np.float32), z2.astype(np.float32))
    expected = ref_focal(np.concatenate([y1, y2]), np.concatenate([z1, z2]))
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-5)


def test_clear_errors():
    with pytest.raises(ConfigError, match="sum_over_classes"):
        losses.focal_loss(np.zeros((2, 3)), np.zeros((2, 3)), reduction="sum")
    with pytest.raises(ValueError, match="same shape"):
        losses.focal_loss(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="batch, classes"):
        losses.lovasz_hinge_per_class(np.zeros(3), np.zeros(3))


def test_bestfitting_loss_trains_and_reports_val_focal(tmp_path):
    rng = np.random.default_rng(30)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    y = (rng.random((24, 4)) < 0.3).astype(np.float32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=losses.BestfittingLoss(),
                  metrics=[losses.make_focal_metric()])
    hist = model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0]
    logits = model.predict(x, verbose=0)
    np.testing.assert_allclose(hist["val_focal"][-1], ref_focal(y.astype(np.float64), logits.astype(np.float64)),
                               rtol=1e-4)
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.loss, losses.BestfittingLoss)
