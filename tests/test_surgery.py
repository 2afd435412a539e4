"""zoo_models.surgery: stem widening rules and ImageNet -> RGBY weight transplants, checked offline.

References: NumPy for the kernel rules; for whole backbones the linearity of the stem convolution: with the
red-copy rule, conv(W4, [R, G, B, Y]) = conv(W3, [R + Y, G, B]), so the 4-channel model on (R, G, B, Y) must give
exactly the 3-channel model's output on (R + Y, G, B) — which holds only if every other weight was copied right.
With the zeros rule the 4-channel model must ignore Y entirely.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import keras

from hpa_zoo.errors import ConfigError, WeightsError  # noqa: E402
from zoo_models import surgery  # noqa: E402

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------- kernel rules
def test_copy_red_rule_is_team1_concat_of_red_filter():
    k = RNG.normal(size=(7, 7, 3, 64)).astype(np.float32)
    out = surgery.widen_stem_kernel(k, 4, "copy_red")
    np.testing.assert_array_equal(out, np.concatenate([k, k[:, :, 0:1, :]], axis=2))
    assert out.shape == (7, 7, 4, 64) and out.dtype == np.float32


def test_mean_zeros_sum_select_rules_match_numpy():
    k = RNG.normal(size=(3, 3, 3, 8)).astype(np.float32)
    mean = surgery.widen_stem_kernel(k, 5, "mean")
    np.testing.assert_array_equal(mean[:, :, :3], k)
    np.testing.assert_allclose(mean[:, :, 3], k.mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(mean[:, :, 4], k.mean(axis=2), rtol=1e-6)
    zeros = surgery.widen_stem_kernel(k, 4, "zeros")
    np.testing.assert_array_equal(zeros[:, :, :3], k)
    assert not zeros[:, :, 3].any()
    np.testing.assert_allclose(surgery.widen_stem_kernel(k, 1, "sum")[:, :, 0], k.sum(axis=2), rtol=1e-6)
    np.testing.assert_array_equal(surgery.widen_stem_kernel(k, 2, "select", source=(1, 1)),
                                  k[:, :, [1, 1]])
    np.testing.assert_array_equal(surgery.widen_stem_kernel(k, 4, "select", source=(0, 1, 2, 0)),
                                  surgery.widen_stem_kernel(k, 4, "copy_red"))


def test_sum_rule_on_grey_image_equals_rgb_conv_in_torch():
    """Independent reference: torch conv2d of the grey image replicated to RGB with the original kernel."""
    k = RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)
    grey = RNG.uniform(size=(1, 1, 9, 9)).astype(np.float32)
    k1 = surgery.widen_stem_kernel(k, 1, "sum")
    to_oihw = lambda w: torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))  # noqa: E731
    ref = torch.nn.functional.conv2d(torch.from_numpy(grey).repeat(1, 3, 1, 1), to_oihw(k))
    got = torch.nn.functional.conv2d(torch.from_numpy(grey), to_oihw(k1))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_in, rule, kw", [(2, "copy_red", {}), (2, "mean", {}), (4, "sum", {}),
                                            (4, "select", {"source": (0, 1)}), (4, "nearest", {})])
def test_impossible_rules_raise_config_error_naming_the_fix(n_in, rule, kw):
    with pytest.raises(ConfigError, match="rule|source"):
        surgery.widen_stem_kernel(np.zeros((3, 3, 3, 2), np.float32), n_in, rule, **kw)


# ---------------------------------------------------------------------------------------------- whole backbones
def _run(model, x):
    """Inference outputs as NumPy (an eager call: cheaper than tracing ``predict`` for one batch)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def _saved_rgb_backbone(app_fn, size, tmp_path):
    """A 3-channel app with random (non-trivial) weights saved to a local file: the offline 'ImageNet'."""
    src = app_fn(include_top=False, weights=None, input_shape=(size, size, 3))
    for layer in src.layers:  # random BN statistics so a skipped/misplaced BN copy shows
        if isinstance(layer, keras.layers.BatchNormalization):
            for var, (lo, hi) in ((layer.gamma, (0.5, 1.5)), (layer.beta, (-0.1, 0.1)),
                                  (layer.moving_mean, (-0.1, 0.1)), (layer.moving_variance, (0.5, 1.5))):
                if var is not None:  # InceptionV3's BN has no gamma (scale=False)
                    var.assign(RNG.uniform(lo, hi, var.shape).astype(np.float32))
    path = tmp_path / f"{src.name}_rgb.weights.h5"
    src.save_weights(path)
    return src, path


@pytest.mark.parametrize("app_name, size, first_conv", [("DenseNet121", 32, "conv1_conv"),
                                                        ("ResNet50", 32, "conv1_conv"),
                                                        ("InceptionV3", 75, None)])
def test_imagenet_backbone_copies_every_weight_and_red_copy_stem_acts_as_red_plus_yellow(
        app_name, size, first_conv, tmp_path):
    app_fn = getattr(keras.applications, app_name)
    src, path = _saved_rgb_backbone(app_fn, size, tmp_path)
    dst = surgery.imagenet_backbone(app_fn, (size, size, 4), imagenet_weights=str(path), first_conv=first_conv)
    assert dst.input_shape[-1] == 4

    src_layers, dst_layers = surgery._weighted_layers(src), surgery._weighted_layers(dst)
    assert len(src_layers) == len(dst_layers)
    for i, (s, d) in enumerate(zip(src_layers, dst_layers)):
        sw, dw = s.get_weights(), d.get_weights()
        if i == 0:  # the stem: RGB slices equal, the Y slice equals the red slice
            np.testing.assert_array_equal(dw[0][:, :, :3], sw[0])
            np.testing.assert_array_equal(dw[0][:, :, 3], sw[0][:, :, 0])
            sw, dw = sw[1:], dw[1:]
        for a, b in zip(sw, dw):
            np.testing.assert_array_equal(a, b, err_msg=f"{app_name} layer {d.name}")

    rgby = RNG.uniform(0, 1, size=(2, size, size, 4)).astype(np.float32)
    r_plus_y = np.concatenate([rgby[..., :1] + rgby[..., 3:], rgby[..., 1:3]], axis=-1)
    np.testing.assert_allclose(_run(dst, rgby), _run(src, r_plus_y), rtol=2e-4, atol=2e-4)


def _tiny(in_ch, name, conv_filters=4):
    x = inp = keras.Input((8, 8, in_ch))
    x = keras.layers.Conv2D(conv_filters, 3, name="stem")(x)
    x = keras.layers.Conv2D(2, 1, name="mid")(x)
    return keras.Model(inp, x, name=name)


def test_zeros_rule_makes_the_rgby_model_ignore_yellow_and_equal_the_rgb_model():
    src, dst = _tiny(3, "src"), _tiny(4, "dst")
    surgery.transplant_weights(src, dst, first_conv="stem", rule="zeros")
    rgby = RNG.uniform(0, 255, size=(2, 8, 8, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(dst, rgby), _run(src, rgby[..., :3]), rtol=1e-5, atol=1e-4)


def test_transplant_fails_loudly_naming_layer_and_both_shapes_and_writes_nothing():
    src, dst = _tiny(3, "src"), _tiny(4, "dst", conv_filters=5)
    before = [w.copy() for w in dst.get_weights()]
    with pytest.raises(WeightsError, match=r"'stem'.*\(3, 3, 4, 4\).*\(3, 3, 4, 5\)"):
        surgery.transplant_weights(src, dst, first_conv="stem")
    for a, b in zip(before, dst.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightsError, match="nope"):
        surgery.transplant_weights(src, _tiny(4, "dst2"), first_conv="nope")


def test_transplant_reports_untouched_destination_layers_and_missing_source_layers_raise():
    src = _tiny(3, "src")
    x = inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, name="stem")(x)
    x = keras.layers.Conv2D(2, 1, name="mid")(x)
    x = keras.layers.Dense(3, name="new_head")(x)
    dst = keras.Model(inp, x)
    report = surgery.transplant_weights(src, dst, first_conv="stem")
    assert report.copied == ("mid",) and report.widened == "stem" and report.untouched == ("new_head",)
    with pytest.raises(WeightsError, match="'new_head'"):
        surgery.transplant_weights(dst, _tiny(4, "small"), first_conv="stem")


def test_replace_head_keeps_trunk_and_gives_float32_logits_of_new_size():
    x = inp = keras.Input((6,))
    x = keras.layers.Dense(5, name="fc")(x)
    model = keras.Model(inp, keras.layers.Dense(28, name="logits")(x), name="m")
    new = surgery.replace_head(model, 7)
    assert new.output_shape == (None, 7) and new.get_layer("logits").dtype_policy.compute_dtype == "float32"
    assert new.get_layer("fc") is model.get_layer("fc") and new.name == "m"


def test_replace_head_rebuilds_the_attention_head_and_keeps_the_trunk():
    """Team 3's class-wise attention head (two 1x1 convs -> ClassAttentionPooling "logits"): both per-class convs
    get the new class count; the pooled feature map and the trunk are shared; the new logits equal the NumPy
    formula (teams.md §3.2) on the shared features with the new convs' weights."""
    from zoo_models.attention import attention_head

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    feat = keras.layers.Conv2D(6, 3, name="feat")(inp)
    main = attention_head(feat, 28, attention_size=4, name="attention", output_name="logits")
    aux = attention_head(feat, 28, name="aux_attention", output_name="aux_logits")
    model = keras.Model(inp, {"logits": main, "aux_logits": aux}, name="att")

    new = surgery.replace_head(model, 5)
    assert tuple(new.output["logits"].shape) == (None, 5) and tuple(new.output["aux_logits"].shape) == (None, 28)
    assert new.get_layer("feat") is model.get_layer("feat") and new.name == "att"
    assert new.get_layer("attention_pool") is model.get_layer("attention_pool")
    assert new.get_layer("aux_attention_class_conv") is model.get_layer("aux_attention_class_conv")
    for name in ("attention_class_conv", "attention_att_conv"):
        assert new.get_layer(name) is not model.get_layer(name) and new.get_layer(name).kernel.shape == (1, 1, 6, 5)

    x = RNG.normal(size=(2, 12, 12, 3)).astype(np.float32)
    pooled = keras.ops.convert_to_numpy(keras.Model(inp, model.get_layer("attention_pool").output)(x))
    conv = lambda name: np.einsum("bhwc,ck->bhwk", pooled, keras.ops.convert_to_numpy(  # noqa: E731
        new.get_layer(name).kernel)[0, 0]) + keras.ops.convert_to_numpy(new.get_layer(name).bias)
    logits_map, att = conv("attention_class_conv").reshape(2, -1, 5), conv("attention_att_conv").reshape(2, -1, 5)
    att = np.exp(att - att.max(1, keepdims=True))
    want = (logits_map * att / att.sum(1, keepdims=True)).sum(1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(new(x)["logits"]), want, rtol=1e-4, atol=1e-5)

    both = surgery.replace_head(model, 5, classifier=("logits", "aux_logits"))
    assert tuple(both.output["logits"].shape) == tuple(both.output["aux_logits"].shape) == (None, 5)
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        surgery.replace_head(model, 5, classifier="nope")


# ---------------------------------------------------------------------------------------------- BatchNorm momentum
def _conv_bn_model(momentum_default=0.99):
    """A functional model with one BN at top level and one inside a nested sub-model (both Keras' 0.99)."""
    inner_in = keras.Input((6, 6, 4))
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(momentum=momentum_default, name="bn_inner")(
        keras.layers.Conv2D(4, 3, padding="same", name="conv_inner")(inner_in)), name="block")
    inp = keras.Input((6, 6, 3))
    x = keras.layers.BatchNormalization(momentum=momentum_default, name="bn_top")(inp)
    x = keras.layers.Conv2D(4, 1, name="conv_top")(x)
    return keras.Model(inp, inner(x), name="outer")


def test_set_batchnorm_momentum_reaches_nested_layers_and_survives_a_keras_save(tmp_path):
    model = _conv_bn_model()
    assert surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM) == ["bn_top", "block/bn_inner"]
    assert model.get_layer("bn_top").momentum == 0.9
    assert model.get_layer("block").get_layer("bn_inner").momentum == 0.9
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("bn_top").momentum == 0.9
    assert loaded.get_layer("block").get_layer("bn_inner").momentum == 0.9
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"\[0, 1\).*PyTorch's momentum=0.1 is Keras 0.9"):
            surgery.set_batchnorm_momentum(model, bad)


def test_batchnorm_walk_lists_a_shared_layer_once_and_swa_uses_the_same_walk():
    """A BatchNorm shared by two nested models is one set of running statistics: it is listed (and SWA
    recalibrates it) once, at its first path; the top-level and nested ones keep graph order."""
    from hpa_zoo.train import swa

    shared = keras.layers.BatchNormalization(name="bn_shared")
    a_in = keras.Input((4, 4, 3))
    a = keras.Model(a_in, shared(a_in), name="a")
    b_in = keras.Input((4, 4, 3))
    b = keras.Model(b_in, keras.layers.BatchNormalization(name="bn_b")(shared(b_in)), name="b")
    x = keras.Input((4, 4, 3))
    y = keras.layers.BatchNormalization(name="bn_top")(x)
    model = keras.Model(x, keras.layers.Add()([a(y), b(y)]))
    pairs = surgery.batchnorm_layers_by_path(model)
    assert [p for p, _ in pairs] == ["bn_top", "a/bn_shared", "b/bn_b"]
    assert pairs[1][1] is shared
    assert surgery.set_batchnorm_momentum(model, 0.5) == ["bn_top", "a/bn_shared", "b/bn_b"]
    assert shared.momentum == 0.5
    assert swa.batchnorm_layers(model) == [layer for _, layer in pairs]


def test_torch_rate_gives_torch_running_mean_after_training_steps():
    """After 3 training-mode batches the Keras moving mean equals torch BatchNorm2d(momentum=0.1)'s running_mean.
    The moving variance follows the same rate on the *biased* batch variance (Keras); torch's running_var uses
    the unbiased one (x n/(n-1)), so it is checked against NumPy from the formula, and the two differ by exactly
    that factor on the update term."""
    bn = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")  # Keras' 0.99
    model = keras.Sequential([keras.Input((5, 5, 3)), bn])
    keras_default = keras.layers.BatchNormalization(epsilon=1e-5)  # left at 0.99: the contrast
    surgery.set_batchnorm_momentum(model, surgery.TORCH_BN_MOMENTUM)
    tbn = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.1).train()
    want_mean, want_var, torch_var = np.zeros(3), np.ones(3), np.ones(3)
    for step in range(3):
        x = RNG.normal(loc=step + 1.0, scale=2.0, size=(4, 5, 5, 3)).astype(np.float32)
        model(x, training=True)
        keras_default(x, training=True)
        with torch.no_grad():
            tbn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        want_mean = 0.9 * want_mean + 0.1 * x.mean(axis=(0, 1, 2))
        want_var = 0.9 * want_var + 0.1 * x.var(axis=(0, 1, 2))  # biased (ddof=0)
        torch_var = 0.9 * torch_var + 0.1 * x.var(axis=(0, 1, 2), ddof=1)  # torch: unbiased
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    np.testing.assert_allclose(mean, tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), want_var, rtol=1e-5)
    np.testing.assert_allclose(tbn.running_var.numpy(), torch_var, rtol=1e-5)
    # Keras' 0.99 lags torch by far more than the tolerance after 3 steps (about 0.06 against 0.5)
    lag = np.abs(keras.ops.convert_to_numpy(keras_default.moving_mean) - tbn.running_mean.numpy())
    assert lag.min() > 0.2, lag


# one build per builder function (the 512/1024 rows of Team 1 and of GAPNet share theirs)
_TEAM_BUILDS = {
    "team1_densenet121_512": ((64, 64, 4), {}, 0.9),
    "team1_densenet121_1024": ((64, 64, 4), {}, 0.9),
    "team1_arcface_resnet50_768": ((64, 64, 4), {"num_classes": 8}, 0.9),
    "team2_densenet121_rgb_512": ((64, 64, 4), {}, 0.9),
    "team3_attention_inceptionv3_1024": ((160, 160, 4), {"with_aux": True}, 0.9),
    "team3_attention_se_resnext50_1024": ((64, 64, 4), {}, 0.9),
    "team3_resnet34_512": ((64, 64, 4), {}, 0.9),
    "team4_gapnet_resnet18_512": ((64, 64, 4), {}, 0.99),  # Christof: Keras 2 + qubvel ResNet18
    "team4_gwap_resnet34_512": ((64, 64, 4), {}, 0.9),
}


@pytest.mark.parametrize("name", sorted(_TEAM_BUILDS))
def test_every_team_model_updates_batchnorm_at_its_framework_rate(name):
    from hpa_zoo.registry import get_spec

    shape, kwargs, want = _TEAM_BUILDS[name]
    model = get_spec(name).build_fn()(input_shape=shape, **kwargs)
    found = {}

    def visit(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            found[layer.name] = layer.momentum
        for inner in getattr(layer, "layers", ()):
            visit(inner)

    visit(model)
    assert len(found) >= 2, f"{name}: expected the trunk's BatchNorm layers, found {sorted(found)}"
    assert {k: v for k, v in found.items() if v != want} == {}
