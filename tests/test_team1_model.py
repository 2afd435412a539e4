"""Team 1's DenseNet121(-large) classifier, schedule and recipe, against independent references.

* Architecture: the plain-PyTorch reference `tests/torch_refs/bestfitting_densenet.py` (written from teams.md §1.2
  with torchvision's module names). Same weight count (parameters + BN running stats), and the same outputs once
  the PyTorch weights are copied in (so stem padding, pooling, concat order, the extra pool and the head match).
* Schedule: the exact epoch table of teams.md §1.5, written out by hand.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import keras

from hpa_zoo.constants import KAGGLE_TRAIN_COUNTS, KAGGLE_TRAIN_SIZE, PUBLIC_LB_RATIOS  # noqa: E402
from hpa_zoo.errors import WeightsError  # noqa: E402
from tests.torch_refs.bestfitting_densenet import build_torch_bestfitting_densenet, randomize_  # noqa: E402
from zoo_models.teams import team1_bestfitting as t1  # noqa: E402

RNG = np.random.default_rng(1)
SIZES = {False: 64, True: 128}  # normal: 64 px -> 2x2 map (stride 32); large: 128 px -> 2x2 map (stride 64)


@pytest.fixture(scope="module", params=[False, True], ids=["normal", "large"])
def pair(request):
    """(large, Keras model, PyTorch reference in eval mode with randomised BN statistics)."""
    large = request.param
    size = SIZES[large]
    model = t1.build_densenet121(input_shape=(size, size, 4), large=large)
    torch.manual_seed(0)
    ref = randomize_(build_torch_bestfitting_densenet(num_classes=28, large=large)).eval()
    return large, model, ref


def _torch_count(ref) -> int:
    """parameters() + BN running_mean/var (not num_batches_tracked, not the mean/std normalisation buffers)."""
    n = sum(p.numel() for p in ref.parameters())
    for m in ref.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n += m.running_mean.numel() + m.running_var.numel()
    return n


def test_weight_count_equals_the_pytorch_architecture(pair):
    _, model, ref = pair
    keras_count = sum(int(np.prod(w.shape)) for w in model.weights)
    assert keras_count == _torch_count(ref)
    # torchvision densenet121 has 7,978,856 parameters, 1,025,000 of them the 1000-class fc; plus the Y stem filter
    assert sum(p.numel() for p in ref.features.parameters()) == 7_978_856 - 1_025_000 + 7 * 7 * 64


def test_shapes_names_and_float32_logits(pair):
    large, model, _ = pair
    size = SIZES[large]
    x = RNG.uniform(0, 255, size=(2, size, size, 4)).astype(np.float32)
    logits = model(x, training=False)
    assert tuple(logits.shape) == (2, 28) and keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert model.get_layer("relu").output.shape[1:] == (2, 2, 1024)  # 16x16 at 512 (normal) / 1024 (large)
    assert model.get_layer("head_dropout2").output.shape[1:] == (1024,)
    assert model.get_layer("head_concat").output.shape[1:] == (2048,)
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["image", "input_norm"] and names[-1] == "logits"
    if large:
        assert names.index("extra_pool") == names.index("pool1") + 1
        assert model.get_layer("extra_pool").input is model.get_layer("pool1").output
    else:
        assert "extra_pool" not in names


def test_input_norm_is_team1_rgby_mean_std_on_0_255_images(pair):
    _, model, _ = pair
    x = RNG.uniform(0, 255, size=(1, 8, 8, 4)).astype(np.float32)
    got = keras.ops.convert_to_numpy(model.get_layer("input_norm")(x))
    ref = (x / 255.0 - np.array(t1.RGBY_MEAN)) / np.array(t1.RGBY_STD)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _copy_torch_into_keras(ref, model) -> None:
    """Pair Conv/BN/Linear modules (definition order) with the Keras layers holding weights (graph order)."""
    mods = [m for m in ref.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
                                                       torch.nn.Linear))]
    layers = [layer for layer in model.layers if layer.weights]
    assert len(mods) == len(layers)
    for m, layer in zip(mods, layers):
        if isinstance(m, torch.nn.Conv2d):
            assert isinstance(layer, keras.layers.Conv2D), layer.name
            values = [m.weight.detach().numpy().transpose(2, 3, 1, 0)]
        elif isinstance(m, torch.nn.Linear):
            assert isinstance(layer, keras.layers.Dense), layer.name
            values = [m.weight.detach().numpy().T, m.bias.detach().numpy()]
        else:
            assert isinstance(layer, keras.layers.BatchNormalization), layer.name
            values = [m.weight.detach().numpy(), m.bias.detach().numpy(), m.running_mean.numpy(),
                      m.running_var.numpy()]
        layer.set_weights(values)  # raises on any shape mismatch


def test_outputs_and_features_match_the_pytorch_reference_with_its_weights(pair):
    large, model, ref = pair
    _copy_torch_into_keras(ref, model)
    size = SIZES[large]
    x = RNG.uniform(0, 255, size=(2, size, size, 4)).astype(np.float32)
    with torch.no_grad():
        ref_logits, ref_feats = ref(torch.from_numpy(x.transpose(0, 3, 1, 2) / 255.0).float())
    feats = keras.Model(model.inputs[0], [model.output, model.get_layer("head_dropout2").output])
    logits, features = (keras.ops.convert_to_numpy(o) for o in feats(x, training=False))
    scale = float(np.abs(ref_logits.numpy()).max())
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-3, atol=1e-3 * scale)
    np.testing.assert_allclose(features, ref_feats.numpy(), rtol=1e-3, atol=1e-3 * float(ref_feats.abs().max()))


def test_logits_stay_float32_under_mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = t1.build_densenet121(num_classes=5, input_shape=(32, 32, 4))
        out = model(np.zeros((1, 32, 32, 4), np.float32), training=False)
        assert model.get_layer("conv1_conv").compute_dtype == "bfloat16"
        assert keras.backend.standardize_dtype(out.dtype) == "float32" and tuple(out.shape) == (1, 5)
    finally:
        keras.config.set_dtype_policy(previous)


def test_imagenet_weights_from_a_local_file_give_red_copied_yellow_stem(tmp_path):
    src = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "d121_notop.weights.h5"
    src.save_weights(path)
    model = t1.build_densenet121(input_shape=(32, 32, 4), weights="imagenet", imagenet_weights=str(path))
    k_src, k = src.get_layer("conv1_conv").kernel.numpy(), model.get_layer("conv1_conv").kernel.numpy()
    np.testing.assert_array_equal(k, np.concatenate([k_src, k_src[:, :, :1]], axis=2))
    np.testing.assert_array_equal(model.get_layer("conv5_block16_2_conv").kernel.numpy(),
                                  src.get_layer("conv5_block16_2_conv").kernel.numpy())


def test_bad_weights_argument_fails_before_building(tmp_path):
    with pytest.raises(WeightsError, match=r"\.weights\.h5"):
        t1.build_densenet121(input_shape=(32, 32, 4), weights=str(tmp_path / "x.onnx"))
    with pytest.raises(WeightsError, match="does not exist"):
        t1.build_densenet121(input_shape=(32, 32, 4), weights=str(tmp_path / "missing.weights.h5"))


# ---------------------------------------------------------------------------------------------- schedule, recipe
def _lr(schedule, epoch_1based: int, steps_per_epoch: int, within: int = 0) -> float:
    return float(schedule((epoch_1based - 1) * steps_per_epoch + within))


def test_adam45_schedule_is_the_teams_epoch_table():
    s = t1.EpochStepSchedule(steps_per_epoch=10, epochs=45)
    table = {1: 3e-4, 25: 3e-4, 26: 1.5e-4, 30: 1.5e-4, 31: 7.5e-5, 35: 7.5e-5, 36: 3e-5, 40: 3e-5, 41: 1e-5,
             45: 1e-5}  # teams.md §1.5, 1-based epochs
    for epoch, lr in table.items():
        assert _lr(s, epoch, 10) == pytest.approx(lr, rel=1e-6)
        assert _lr(s, epoch, 10, within=9) == pytest.approx(lr, rel=1e-6)  # constant within the epoch


def test_schedule_scales_boundaries_for_9_epochs_and_serialises():
    s = t1.EpochStepSchedule(steps_per_epoch=3, epochs=9)
    assert s.epoch_boundaries == (5, 6, 7, 8)
    expected = [3e-4] * 5 + [1.5e-4, 7.5e-5, 3e-5, 1e-5]
    assert [_lr(s, e, 3) for e in range(1, 10)] == pytest.approx(expected, rel=1e-6)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert isinstance(clone, t1.EpochStepSchedule) and clone.get_config() == s.get_config()


def test_recipes_follow_teams_md():
    r = t1.make_recipe(model_name="team1_densenet121_1024")
    assert (r.image_size, r.input_size, r.batch_size, r.epochs) == (1536, 1024, 36, 45)
    assert (r.monitor, r.monitor_mode) == ("val_focal", "min")
    assert (r.tta.transforms, r.tta.n_random_crops, r.tta.aggregate) == ("d4", 3, "max")
    assert (r.thresholds.rule, r.thresholds.force_top) == ("lb_ratio_match", True)
    ratios = np.array(r.thresholds.kwargs["ratios"])
    placeholder = PUBLIC_LB_RATIOS == 0.01
    np.testing.assert_allclose(ratios[placeholder], (KAGGLE_TRAIN_COUNTS / KAGGLE_TRAIN_SIZE)[placeholder])
    np.testing.assert_allclose(ratios[~placeholder], PUBLIC_LB_RATIOS[~placeholder])
    r512 = t1.make_recipe(model_name="team1_densenet121_512", epochs=11)
    assert (r512.image_size, r512.input_size, r512.batch_size, r512.epochs) == (768, 512, 48, 11)
    opt = r.make_optimizer(100, 9)
    assert isinstance(opt, keras.optimizers.Adam) and opt.clipnorm == 1.0 and not opt.weight_decay
    assert opt.learning_rate is not None and float(opt._learning_rate(0)) == pytest.approx(3e-4)
    assert r512.make_optimizer(5, 55)._learning_rate.epoch_boundaries == (25, 35, 45, 50)  # Adam55


def test_train_and_eval_maps_give_float32_crops_of_input_size():
    import tensorflow as tf

    r = t1.make_recipe(image_size=48, input_size=32)
    example = {"id": tf.constant("a"), "image": tf.constant(RNG.integers(0, 256, (40, 40, 4)), tf.uint8),
               "multi_hot": tf.one_hot(3, 28, dtype=tf.uint8)}
    image, label = r.train_map(example, tf.constant([1, 2], tf.int64))
    assert image.shape == (32, 32, 4) and image.dtype == tf.float32 and label.dtype == tf.float32
    assert float(tf.reduce_max(image)) <= 255.0 and float(label[3]) == 1.0
    again, _ = r.train_map(example, tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(image.numpy(), again.numpy())  # stateless: same seed, same crop
    image, label = r.eval_map(example)
    assert image.shape == (32, 32, 4) and image.dtype == tf.float32
    assert r.make_loss().__class__.__name__ == "BestfittingLoss" and r.make_metrics()[0].name == "focal"
