"""hpa_zoo.infer.tta against NumPy: D4 transforms from np.flipud/np.fliplr/np.transpose, aggregation of a toy
orientation-sensitive model, random-scale crops checked analytically on a linear ramp (bilinear resizing of a
linear function is exact)."""
from __future__ import annotations



import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hpa_zoo.infer import tta  # noqa: E402
from hpa_zoo.errors import ConfigError  # noqa: E402
from hpa_zoo.recipe import TTAConfig  # noqa: E402

S, C, K = 12, 2, 3  # image side, channels, classes


def _np_transpose(a):
    return np.transpose(a, (1, 0, 2))


# Written from the names: operations applied left to right.
NUMPY_D4 = {
    "identity": lambda a: a,
    "flipud": np.flipud,
    "fliplr": np.fliplr,
    "transpose": _np_transpose,
    "flipud_fliplr": lambda a: np.fliplr(np.flipud(a)),
    "flipud_transpose": lambda a: _np_transpose(np.flipud(a)),
    "fliplr_transpose": lambda a: _np_transpose(np.fliplr(a)),
    "flipud_fliplr_transpose": lambda a: _np_transpose(np.fliplr(np.flipud(a))),
}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def dense_model():
    """A fixed-weight Flatten->Dense model: its output depends on the orientation of the input."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 3e-4, size=(S * S * C, K)).astype(np.float32)
    b = rng.normal(0, 0.1, size=(K,)).astype(np.float32)
    inp = keras.Input((S, S, C))
    dense = keras.layers.Dense(K)
    model = keras.Model(inp, dense(keras.layers.Flatten()(inp)))
    dense.set_weights([w, b])
    return model, w, b


def _np_logits(images, w, b):
    return images.reshape(len(images), -1) @ w + b


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, S, S, C)).astype(np.uint8)


def test_d4_apply_matches_numpy_for_all_eight():
    assert tuple(NUMPY_D4) == tta.D4_ORDER
    images = _images(3, 1)
    for k, name in enumerate(tta.D4_ORDER):
        got = keras.ops.convert_to_numpy(tta.d4_apply(images, k))
        expected = np.stack([NUMPY_D4[name](im) for im in images])
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_d4_transforms_are_distinct():
    image = _images(1, 2)
    outs = [keras.ops.convert_to_numpy(tta.d4_apply(image, k)).tobytes() for k in range(8)]
    assert len(set(outs)) == 8


@pytest.mark.parametrize("how,reduce", [("max", np.max), ("mean", np.mean), ("median", np.median)])
def test_d4_aggregation_matches_numpy(dense_model, how, reduce):
    model, w, b = dense_model
    images = _images(5, 3)
    got = tta.predict_tta(model, images, config=TTAConfig("d4", aggregate=how), batch_size=2)
    views = [np.stack([f(im) for im in images.astype(np.float64)]) for f in NUMPY_D4.values()]
    expected = reduce(np.stack([_sigmoid(_np_logits(v, w, b)) for v in views]), axis=0)
    assert got.shape == (5, K) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The toy model really is orientation-sensitive: the 8 views disagree.
    assert np.ptp(np.stack([_sigmoid(_np_logits(v, w, b)) for v in views]), axis=0).min() > 1e-4


def test_d4_invariant_image_gives_identical_views(dense_model):
    model, w, b = dense_model
    raw = np.random.default_rng(4).uniform(0, 255, size=(S, S, C))
    symmetric = np.mean([f(raw) for f in NUMPY_D4.values()], axis=0)[None].astype(np.float32)
    for f in NUMPY_D4.values():  # the input is D4-invariant ...
        np.testing.assert_allclose(f(symmetric[0]), symmetric[0], atol=1e-4)
    single = _sigmoid(_np_logits(symmetric.astype(np.float64), w, b))
    mx = tta.predict_tta(model, symmetric, config=TTAConfig("d4", aggregate="max"))
    mean = tta.predict_tta(model, symmetric, config=TTAConfig("d4", aggregate="mean"))
    # ... so max == mean == the single prediction: all 8 views gave the same output.
    np.testing.assert_allclose(mx, single, rtol=1e-5)
    np.testing.assert_allclose(mean, single, rtol=1e-5)


def test_random_crop_boxes_inside_and_deterministic():
    boxes = tta.random_crop_boxes(50, 3, 40, 30, 16, seed=7)
    assert boxes.shape == (50, 3, 3)
    top, left, side = boxes[..., 0], boxes[..., 1], boxes[..., 2]
    assert (side >= 16).all() and (side <= 30).all() and len(np.unique(side)) > 5
    assert (top >= 0).all() and (left >= 0).all() and (top + side <= 40).all() and (left + side <= 30).all()
    np.testing.assert_array_equal(boxes, tta.random_crop_boxes(50, 3, 40, 30, 16, seed=7))
    assert not np.array_equal(boxes, tta.random_crop_boxes(50, 3, 40, 30, 16, seed=8))


class _Recorder:
    """A callable model that records its input batches and returns fixed-weight linear logits."""

    def __init__(self, w, b):
        self.w, self.b, self.batches = w, b, []

    def __call__(self, x):
        x = keras.ops.convert_to_numpy(x).astype(np.float64)
        self.batches.append(x)
        return _np_logits(x, self.w, self.b).astype(np.float32)


def test_crops_are_resized_boxes_of_the_image():
    h, w_img, size, n_crops = 30, 26, 8, 2
    yy, xx = np.meshgrid(np.arange(h), np.arange(w_img), indexing="ij")
    ramp = np.stack([yy * 3.0 + xx, 100.0 - xx], axis=-1)[None].repeat(2, axis=0)  # linear in (y, x)
    rng = np.random.default_rng(0)
    rec = _Recorder(rng.normal(size=(size * size * C, K)) * 3e-4, np.zeros(K))
    tta.predict_tta(rec, ramp, config=TTAConfig("identity", n_random_crops=n_crops), input_size=size, seed=3,
                    batch_size=16)
    views = np.concatenate(rec.batches)
    assert views.shape == (2 * (1 + n_crops), size, size, C)
    boxes = tta.random_crop_boxes(2, n_crops, h, w_img, size, seed=3)
    for j in range(n_crops):
        for i in range(2):
            top, left, side = boxes[i, j]
            centres = (np.arange(size) + 0.5) * side / size - 0.5  # half-pixel bilinear sampling positions
            y, x = np.meshgrid(top + centres, left + centres, indexing="ij")
            expected = np.stack([y * 3.0 + x, 100.0 - x], axis=-1)
            np.testing.assert_allclose(views[2 * (1 + j) + i], expected, atol=1e-3)


def test_d4_with_crops_aggregates_eight_times_one_plus_n_views():
    n_img, n_crops, size = 3, 2, 8
    rng = np.random.default_rng(5)
    rec = _Recorder(rng.normal(size=(size * size * C, K)) * 3e-4, rng.normal(size=K))
    images = np.random.default_rng(6).integers(0, 256, size=(n_img, 20, 20, C)).astype(np.uint8)
    cfg = TTAConfig("d4", n_random_crops=n_crops, aggregate="max")
    got = tta.predict_tta(rec, images, config=cfg, input_size=size, batch_size=2, seed=1)
    views = np.concatenate(rec.batches)
    assert views.shape == (8 * (1 + n_crops) * n_img, size, size, C)
    assert max(len(b) for b in rec.batches) == 2
    per_view = _sigmoid(_np_logits(views, rec.w, rec.b)).reshape(8 * (1 + n_crops), n_img, K)
    np.testing.assert_allclose(got, per_view.max(axis=0), rtol=1e-5)
    again = tta.predict_tta(rec, images, config=cfg, input_size=size, batch_size=2, seed=1)
    other = tta.predict_tta(rec, images, config=cfg, input_size=size, batch_size=2, seed=2)
    np.testing.assert_array_equal(got, again)
    assert not np.allclose(got, other)


def test_random_flip_ssr_passes(dense_model):
    model, w, b = dense_model
    cfg = TTAConfig("random_flip_ssr", n_random_passes=5, aggregate="mean")
    # A constant image is unchanged by flips and by the affine warp with reflected borders.
    const = np.full((2, S, S, C), 77.0, dtype=np.float32)
    np.testing.assert_allclose(tta.predict_tta(model, const, config=cfg),
                               _sigmoid(_np_logits(const.astype(np.float64), w, b)), rtol=1e-4)
    images = _images(2, 9)
    first = tta.predict_tta(model, images, config=cfg, seed=0)
    np.testing.assert_array_equal(first, tta.predict_tta(model, images, config=cfg, seed=0))
    assert not np.allclose(first, tta.predict_tta(model, images, config=cfg, seed=1))
    plain = tta.predict_tta(model, images, config=TTAConfig("identity"))
    assert not np.allclose(first, plain)


def test_fold_average_is_the_mean():
    folds = [np.random.default_rng(i).random((4, 3)) for i in range(3)]
    np.testing.assert_allclose(tta.fold_average(folds), np.mean(folds, axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        tta.fold_average([np.zeros((2, 3)), np.zeros((3, 3))])


def test_clear_errors(dense_model):
    model = dense_model[0]
    with pytest.raises(ConfigError, match="aggregate"):
        tta.predict_tta(model, _images(1, 0), config=TTAConfig(aggregate="sum"))
    with pytest.raises(ConfigError, match="input_size"):
        tta.predict_tta(model, _images(1, 0), config=TTAConfig(n_random_crops=2))
    with pytest.raises(ConfigError, match="0..7"):
        tta.d4_apply(_images(1, 0), 8)


def _two_heads(seed=5):
    """A tiny functional model with a dict output {"logits", "aux_logits"} (Team 3's Inception-v3 interface) and the
    same graph with only "logits" (shared layers and weights)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((S, S, C))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inp))
    heads = {"logits": keras.layers.Dense(K, name="logits")(x), "aux_logits": keras.layers.Dense(K, name="aux")(x)}
    return keras.Model(inp, heads), keras.Model(inp, heads["logits"])


def test_predict_tta_uses_the_logits_output_of_a_multi_output_model():
    both, single = _two_heads()
    images = _images(3, 7)
    config = TTAConfig("d4", aggregate="mean")
    want = tta.predict_tta(single, images, config=config, batch_size=2)
    np.testing.assert_allclose(tta.predict_tta(both, images, config=config, batch_size=2), want, rtol=1e-6)
    # a plain callable returning the dict goes through the per-batch "logits" lookup instead of main_output
    np.testing.assert_allclose(tta.predict_tta(lambda x: both(x), images, config=config), want, rtol=1e-5)
    aux = tta.predict_tta(keras.Model(both.input, both.output["aux_logits"]), images, config=config)
    assert np.abs(aux - want).max() > 1e-3  # taking the aux head instead would fail the comparisons above
    assert tta.main_output(single) is single
    inp = keras.Input((S, S, C))
    flat = keras.layers.Flatten()(inp)
    no_logits = keras.Model(inp, {"main": keras.layers.Dense(K)(flat)})
    with pytest.raises(ConfigError, match="no 'logits'"):
        tta.predict_tta(no_logits, images, config=config)
    with pytest.raises(ConfigError, match="no 'logits'"):
        tta.predict_tta(lambda x: {"main": no_logits(x)["main"]}, images, config=config)
    with pytest.raises(ConfigError, match="2 outputs as a list"):
        tta.predict_tta(lambda x: [both(x)["logits"]] * 2, images, config=config)


def test_ssr_matrix_geometry_matches_numpy():
    image = _images(1, 11).astype(np.float32)

    def warp(**kw):
        m = tta.ssr_matrix(S, S, **kw)[None]
        return keras.ops.convert_to_numpy(keras.ops.image.affine_transform(image, m, interpolation="nearest"))[0]

    np.testing.assert_array_equal(warp(), image[0])
    np.testing.assert_array_equal(warp(flip_lr=True), np.fliplr(image[0]))
    np.testing.assert_array_equal(warp(flip_ud=True, flip_lr=True), np.rot90(image[0], 2))
    # +90 degrees with y pointing down is a clockwise quarter turn: np.rot90(k=-1).
    np.testing.assert_array_equal(warp(angle_deg=90.0), np.rot90(image[0], -1))
    shifted = warp(shift=(2.0, 1.0))  # content moves right by 2, down by 1
    np.testing.assert_array_equal(shifted[1:, 2:], image[0, :-1, :-2])


def test_d4_order_agrees_with_the_data_pipeline():
    from hpa_zoo.data import image_ops  # a hard dependency: a broken install fails here, it does not skip
    assert tuple(image_ops.D4_ORDER) == tta.D4_ORDER
    image = _images(1, 12)
    for k in range(8):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(tta.d4_apply(image, k))[0],
                                      np.asarray(image_ops.d4_transform(image[0], k)))
