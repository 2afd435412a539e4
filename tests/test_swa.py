"""hpa_zoo.train.swa: Team 3's SWA (checkpoint averaging + BN recalibration), against NumPy references."""
from __future__ import annotations



import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hpa_zoo.train import swa  # noqa: E402
from hpa_zoo.errors import ConfigError, WeightsError  # noqa: E402


def _conv_bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(4, name="logits")(x))


def _batches(rng, n_batches=4, batch=5, shape=(6, 6, 2)):
    return [rng.normal(3.0, 2.0, size=(batch, *shape)).astype("float32") for _ in range(n_batches)]


def test_average_checkpoints_equals_numpy_mean_and_keeps_bn_statistics_of_last_file(tmp_path):
    files, snapshots = [], []
    for k in range(3):
        model = _conv_bn_model(seed=k)
        bn = model.get_layer("bn")
        bn.moving_mean.assign(np.full(3, 10.0 * k, "float32"))  # distinct BN statistics per file
        snapshots.append({w.path: keras.ops.convert_to_numpy(w) for w in model.weights})
        files.append(tmp_path / f"epoch_{k + 1:03d}.weights.h5")
        model.save_weights(files[-1])

    target = _conv_bn_model(seed=99)
    swa.average_checkpoints(target, files)
    for w in target.weights:
        got = keras.ops.convert_to_numpy(w)
        if w.path in ("bn/moving_mean", "bn/moving_variance"):
            np.testing.assert_array_equal(got, snapshots[-1][w.path])  # not averaged: recalibrated later
        else:
            np.testing.assert_allclose(got, np.mean([s[w.path] for s in snapshots], axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(keras.ops.convert_to_numpy(target.get_layer("conv").kernel), snapshots[-1]["conv/kernel"])


def test_average_checkpoints_errors_name_the_problem(tmp_path):
    model = _conv_bn_model()
    with pytest.raises(ConfigError, match="no weight files"):
        swa.average_checkpoints(model, [])
    with pytest.raises(WeightsError, match="does not exist"):
        swa.average_checkpoints(model, [tmp_path / "missing.weights.h5"])
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(WeightsError, match="other.weights.h5"):
        swa.average_checkpoints(model, [tmp_path / "other.weights.h5"])


@pytest.mark.parametrize("unbiased", [True, False])
def test_recalibrate_input_bn_sets_cumulative_average_of_batch_statistics(unbiased):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    model = keras.Model(inp, keras.layers.BatchNormalization(name="bn")(inp))
    batches = _batches(np.random.default_rng(1), n_batches=3, batch=4)
    batches.append(batches[0][:2] * 0.5 + 7.0)  # a smaller last batch: weighting by batch size matters
    bn = model.get_layer("bn")
    before = (keras.ops.convert_to_numpy(bn.moving_mean), keras.ops.convert_to_numpy(bn.moving_variance))

    seen = swa.recalibrate_batchnorm(model, [(b, np.zeros(len(b))) for b in batches], unbiased=unbiased, verbose=0)

    sizes = np.array([len(b) for b in batches], np.float64)
    means = np.stack([b.reshape(-1, 2).mean(0) for b in batches])
    variances = np.stack([b.reshape(-1, 2).var(0, ddof=1 if unbiased else 0) for b in batches])
    want_mean = (sizes[:, None] * means).sum(0) / sizes.sum()
    want_var = (sizes[:, None] * variances).sum(0) / sizes.sum()
    assert seen == sizes.sum()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), want_mean, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), want_var, rtol=1e-5)
    assert not np.allclose(before[0], want_mean) and not np.allclose(before[1], want_var)
    assert "call" not in vars(bn)  # the recording hook is removed again


def test_recalibrate_conv_bn_uses_the_conv_features_and_touches_nothing_else():
    model = _conv_bn_model()
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(3, 5.0, "float32"))
    bn.moving_variance.assign(np.full(3, 9.0, "float32"))
    trainable_before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    batches = _batches(np.random.default_rng(2))
    features = keras.Model(model.input, model.get_layer("conv").output)

    swa.recalibrate_batchnorm(model, iter(batches), steps=3, verbose=0)  # the 4th batch is not used

    feats = [keras.ops.convert_to_numpy(features(b)).reshape(-1, 3).astype(np.float64) for b in batches[:3]]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), np.mean([f.mean(0) for f in feats], 0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance),
                               np.mean([f.var(0, ddof=1) for f in feats], 0), rtol=1e-4)
    for before, w in zip(trainable_before, model.trainable_weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(w))


def test_recalibrate_refuses_an_empty_dataset():
    with pytest.raises(ConfigError, match="no batch"):
        swa.recalibrate_batchnorm(_conv_bn_model(), [], verbose=0)


def test_epoch_checkpoints_saves_every_epoch_and_keeps_the_newest(tmp_path):
    model = _conv_bn_model()
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype("float32")
    y = np.zeros((8, 4), "float32")
    kernels = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: kernels.append(
        keras.ops.convert_to_numpy(model.get_layer("conv").kernel)))
    model.fit(x, y, epochs=5, batch_size=4, verbose=0,
              callbacks=[record, swa.EpochCheckpoints(tmp_path / "ckpt", keep_last=3)])

    files = swa.epoch_checkpoints(tmp_path / "ckpt")
    assert [f.name for f in files] == ["epoch_003.weights.h5", "epoch_004.weights.h5", "epoch_005.weights.h5"]
    assert not list((tmp_path / "ckpt").glob(".*tmp*"))  # no temporary file left behind
    assert [f.name for f in swa.epoch_checkpoints(tmp_path / "ckpt", last_n=2)] == ["epoch_004.weights.h5",
                                                                                  "epoch_005.weights.h5"]
    probe = _conv_bn_model(seed=5)
    probe.load_weights(files[0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(probe.get_layer("conv").kernel), kernels[2])
