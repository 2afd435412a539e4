"""zoo_models.teams.team3_pudae: Team 3's recipe facts, loss weighting, data maps, policy loading, blend, and a few real
training steps of each of the three real networks with the recipe's loss and optimiser (the loss falls).

Training Team 3 through the generic trainer (loss falls, 0.4 x aux, SWA preset, predict) is in
tests/test_train_team3.py; the SWA arithmetic against NumPy is in tests/test_swa.py.
"""
from __future__ import annotations

import functools


import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from hpa_zoo.augment import autoaugment
from hpa_zoo.data import image_ops
from hpa_zoo.errors import ConfigError  # noqa: E402
from hpa_zoo.infer import ensemble  # noqa: E402
from zoo_models.teams import team3_pudae as t3  # noqa: E402

INCEPTION, SERESNEXT, RESNET34 = ("team3_attention_inceptionv3_1024", "team3_attention_se_resnext50_1024",
                                  "team3_resnet34_512")


def _np_focal_mean(y, z):
    """Independent reference: mean over elements of -(1 - p_t)^2 log p_t (teams.md §3.3)."""
    p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    pt = np.where(y > 0.5, p, 1.0 - p)
    return float(np.mean(-((1.0 - pt) ** 2) * np.log(pt)))


def _two_output_model(size, seed=0):
    """A tiny stand-in with Inception-v3's training interface: dict outputs ``logits`` and ``aux_logits``."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 4))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inp, {"logits": keras.layers.Dense(28, name="logits")(x),
                             "aux_logits": keras.layers.Dense(28, name="aux_logits")(x)})


def test_recipes_carry_team3_facts():
    expected = {INCEPTION: (1024, 24, 2, 28), SERESNEXT: (1024, 8, 4, 23), RESNET34: (512, 32, 1, 41)}
    for name, (input_size, batch, accum, epochs) in expected.items():
        r = t3.make_recipe(name)
        assert (r.image_size, r.input_size, r.batch_size, r.grad_accum_steps, r.epochs) == \
            (512, input_size, batch, accum, epochs)
        assert r.swa_last_n == 10
        assert (r.tta.transforms, r.tta.aggregate, r.tta.n_random_crops) == ("d4", "mean", 0)
        assert (r.thresholds.rule, r.thresholds.force_top) == ("proportion_match", False)
        opt = r.make_optimizer(100, epochs)
        assert isinstance(opt, keras.optimizers.Adam)
        assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(5e-4)
        assert (opt.beta_1, opt.beta_2, opt.weight_decay) == (0.9, 0.999, None)
        assert opt.gradient_accumulation_steps == (accum if accum > 1 else None)
    assert t3.make_recipe(INCEPTION).loss_weights == {"logits": 1.0, "aux_logits": 0.4}
    assert t3.make_recipe(RESNET34).loss_weights is None
    loss = t3.make_recipe(RESNET34).make_loss()
    y = (np.random.default_rng(0).random((4, 28)) > 0.8).astype("float32")
    z = np.random.default_rng(1).normal(0, 2, (4, 28)).astype("float32")
    assert float(loss(y, z)) == pytest.approx(_np_focal_mean(y, z), rel=1e-5)
    with pytest.raises(ConfigError, match="not a Team 3 model"):
        t3.make_recipe("team1_densenet121_512")


def test_inception_recipe_loss_is_main_plus_point_four_aux():
    recipe = t3.make_recipe(INCEPTION, image_size=32, input_size=32)
    model = _two_output_model(32)
    model.compile(optimizer=recipe.make_optimizer(1, 1), loss=recipe.make_loss(), loss_weights=recipe.loss_weights)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (6, 32, 32, 4)).astype("float32")
    y = (rng.random((6, 28)) > 0.7).astype("float32")
    out = model.predict(x, verbose=0)
    want = _np_focal_mean(y, out["logits"]) + 0.4 * _np_focal_mean(y, out["aux_logits"])
    got = model.evaluate(x, {"logits": y, "aux_logits": y}, batch_size=6, verbose=0, return_dict=True)["loss"]
    assert got == pytest.approx(want, rel=1e-4)


def test_train_map_is_a_dihedral_transform_then_resize_and_eval_map_resizes():
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 16, 4)), tf.uint8)
    off = autoaugment.PolicyOp("InvertImg", 0.0, {})
    recipe = t3.make_recipe(SERESNEXT, policy=[autoaugment.SubPolicy(off, off)], image_size=16, input_size=24)
    resized = image_ops.resize(image, 24).numpy().astype(np.float32)
    d4 = [np.rot90(resized, k) for k in range(4)] + [np.rot90(resized.transpose(1, 0, 2), k) for k in range(4)]
    def same(a, b):  # uint8 rounding of bilinear ties may differ by 1 between a flipped and an unflipped resize
        return np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.1

    hits = set()
    for s in range(12):
        out, hot = recipe.train_map({"image": image, "multi_hot": tf.ones(28, tf.uint8)}, tf.constant([s, 1]))
        assert out.dtype == tf.float32 and out.shape == (24, 24, 4) and hot.dtype == tf.float32
        matches = {k for k, ref in enumerate(d4) if same(out.numpy(), ref)}
        assert len(matches) == 1
        hits |= matches
    assert len(hits) > 1  # the D4 base really is random
    ev, _ = recipe.eval_map({"image": image, "multi_hot": tf.zeros(28, tf.uint8)})
    np.testing.assert_array_equal(ev.numpy(), resized)


def test_make_recipe_reads_a_policy_file(tmp_path):
    policy = autoaugment.sample_policy(3, n_subpolicies=2)
    path = autoaugment.save_policy(policy, tmp_path / "p.json")
    recipe = t3.make_recipe(RESNET34, policy=path)
    assert recipe.train_map.keywords["policy"] == autoaugment.load_policy(path)
    assert len(t3.make_recipe(RESNET34).train_map.keywords["policy"]) == 25  # teams.md §3.5: pudae's final policy


def test_blend_team3_is_the_weighted_mean():
    rng = np.random.default_rng(0)
    probs = {f"team3_resnet34_512_fold{i}": rng.random((5, 28)) for i in range(5)}
    probs[INCEPTION] = rng.random((5, 28))
    probs[SERESNEXT] = rng.random((5, 28))
    want = (sum(probs[f"team3_resnet34_512_fold{i}"] for i in range(5)) / 5 + probs[INCEPTION] + probs[SERESNEXT]) / 3
    blend_team3 = functools.partial(ensemble.blend, t3.make_recipe(RESNET34).blend)  # the recipe declares it
    got = blend_team3(probs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(blend_team3({INCEPTION: probs[INCEPTION], SERESNEXT: probs[SERESNEXT]}),
                               (probs[INCEPTION] + probs[SERESNEXT]) / 2, rtol=1e-6)
    with pytest.raises(ConfigError, match="not a model of this blend"):
        blend_team3({"team1_densenet121_512": probs[INCEPTION]})
    with pytest.raises(ConfigError, match="same N and C"):
        blend_team3({INCEPTION: probs[INCEPTION], SERESNEXT: probs[SERESNEXT][:3]})


def test_the_declared_swa_window_is_what_the_trainer_carries_out(tmp_path):
    from hpa_zoo.train import swa

    recipe = t3.make_recipe(RESNET34)
    (callback,) = swa.epoch_callbacks(tmp_path, recipe.swa_last_n)
    assert isinstance(callback, swa.EpochCheckpoints) and callback.keep_last == 10  # teams.md §3.3
    assert callback.directory == tmp_path / "checkpoints" / "epochs" == tmp_path / swa.EPOCH_CHECKPOINT_DIR
    assert swa.epoch_callbacks(tmp_path, t3.make_recipe(RESNET34, swa_last_n=0).swa_last_n) == []
    with pytest.raises(ConfigError, match="no epoch_NNN"):
        swa.apply_swa(tmp_path / "empty", _two_output_model(8), [], last_n=recipe.swa_last_n, verbose=0)


def _recipe_loss_np(outputs, y, loss_weights):
    """NumPy recipe loss of a model's outputs: focal mean, or Σ_k w_k focal_mean(y, outputs[k]) (teams.md §3.2)."""
    if loss_weights is None:
        return _np_focal_mean(y, keras.ops.convert_to_numpy(outputs))
    return sum(w * _np_focal_mean(y, keras.ops.convert_to_numpy(outputs[k])) for k, w in loss_weights.items())


BATCH = 4  # not 2: at these sizes the last feature map is 1x1, and BatchNorm over 2 values maps each to +-1


# The smallest input each real network accepts (team3_pudae._shape minimums), a few Adam updates, run_eagerly: on a
# busy 2-core machine the first compiled step (graph tracing) alone took ResNet34 37 s, Inception-v3 72 s and
# SE-ResNeXt50 76 s, longer than all eager steps together (about 3, 5 and 12 s CPU per eager update; SE-ResNeXt's
# cost is Keras' TF backend XLA-compiling each grouped conv and its gradient on every eager call).
@pytest.mark.parametrize("name,size,updates", [(INCEPTION, 75, 2), (SERESNEXT, 32, 2), (RESNET34, 32, 3)])
def test_each_real_team3_model_trains_and_its_recipe_loss_falls(name, size, updates):
    """The real registry network with Team 3's real loss (Inception-v3: focal + 0.4 x aux on its with_aux=True
    graph) and Adam trains on a fixed batch of four synthetic images: the first step's loss is the NumPy recipe
    loss of the untrained outputs, and after `updates` steps the loss is below 0.6 x its initial value, with
    every weight and output finite. grad_accum_steps=1: on one fixed batch k accumulated gradients are the same
    gradient, so accumulation would only make each update k times slower."""
    from hpa_zoo.zoo import models_api
    from hpa_zoo.data import synthetic
    from hpa_zoo.registry import get_spec

    rng = np.random.default_rng(0)
    labels = synthetic.sample_labels(BATCH, rng)
    x = np.stack([synthetic.synthesize_field(lab, size=size, rng=rng) for lab in labels]).astype("float32")
    y = np.zeros((BATCH, 28), "float32")
    for i, lab in enumerate(labels):
        y[i, list(lab)] = 1.0
    recipe = t3.make_recipe(name, image_size=size, input_size=size, grad_accum_steps=1)
    keras.utils.set_random_seed(0)
    if recipe.loss_weights:  # the training graph, as hpa_zoo.train.trainer builds it
        spec = get_spec(name)
        model = spec.build_fn()(num_classes=28, input_shape=(size, size, 4), weights=None, with_aux=True,
                                **spec.builder_kwargs)
        targets = {key: y for key in recipe.loss_weights}
    else:
        model = models_api.load(name, input_shape=(size, size, 4))
        targets = y
    model.compile(optimizer=recipe.make_optimizer(updates, 1), loss=recipe.make_loss(),
                  loss_weights=recipe.loss_weights, run_eagerly=True)
    # BatchNorm in training mode (batch statistics) is what train_on_batch sees; none of the models has dropout.
    before = _recipe_loss_np(model(x, training=True), y, recipe.loss_weights)
    losses = [float(np.ravel(model.train_on_batch(x, targets))[0]) for _ in range(updates)]
    outputs = model(x, training=True)
    after = _recipe_loss_np(outputs, y, recipe.loss_weights)
    assert losses[0] == pytest.approx(before, rel=1e-4)
    assert np.all(np.isfinite(losses)) and np.isfinite(after)
    assert after < 0.6 * before, (before, losses, after)
    for tensor in keras.tree.flatten(outputs):
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(tensor)))
    for weight in model.weights:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(weight))), weight.path
