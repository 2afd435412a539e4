"""Team 3 (pudae) models: attention head vs NumPy/PyTorch, normalisation, builders vs independent counts/references."""
from __future__ import annotations



import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hpa_zoo.errors import ConfigError, WeightsError  # noqa: E402
from hpa_zoo.registry import get_spec, list_models  # noqa: E402
from zoo_models.teams import team3_pudae as T  # noqa: E402
from zoo_models.attention import AdaptiveAveragePooling2D, attention_head  # noqa: E402

torch = pytest.importorskip("torch")
from tests.torch_refs.resnets import (count_weights, randomize_, torch_resnet,  # noqa: E402
                                      torch_se_resnext50_32x4d)

K = 28
#: Keras documents InceptionV3 with 23,851,784 parameters with the top, whose Dense(2048 -> 1000) holds 2,049,000:
#: the include_top=False trunk has 21,802,784 for 3 channels; a 4th input channel adds 3*3*32 stem weights.
INCEPTION_TRUNK_RGB = 23_851_784 - (2048 * 1000 + 1000)


def _attention_numpy(f, w1, b1, w2, b2):
    """teams.md §3.2 written out: logits_map = F·W1 + b1; att = softmax over h·w of F·W2 + b2; Σ_hw map·att."""
    lm = np.einsum("bhwc,ck->bhwk", f, w1) + b1
    a = np.einsum("bhwc,ck->bhwk", f, w2) + b2
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    a = np.exp(a - a.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    return (lm.reshape(lm.shape[0], -1, lm.shape[-1]) * a).sum(axis=1)


def _set_head(model, name, rng, c):
    ws = []
    for conv in (f"{name}_class_conv", f"{name}_att_conv"):
        w, b = rng.normal(size=(c, K)).astype("float32"), rng.normal(size=(K,)).astype("float32")
        model.get_layer(conv).set_weights([w.reshape(1, 1, c, K), b])
        ws += [w, b]
    return ws


@pytest.mark.parametrize("attention_size", [None, 3])
def test_attention_head_matches_numpy_softmax_over_positions(attention_size):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 5, 6, 16)).astype("float32")
    inp = keras.Input((5, 6, 16))
    model = keras.Model(inp, attention_head(inp, K, attention_size=attention_size, output_name="logits"))
    w1, b1, w2, b2 = _set_head(model, "attention", rng, 16)
    ref_f = f
    if attention_size:  # independent reference for PyTorch's adaptive pooling: torch itself
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(f).permute(0, 3, 1, 2), attention_size)
        ref_f = pooled.permute(0, 2, 3, 1).numpy()
    got = np.asarray(model(f))
    assert got.shape == (2, K) and got.dtype == np.float32
    np.testing.assert_allclose(got, _attention_numpy(ref_f, w1, b1, w2, b2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_hw,out", [((7, 9), 3), ((3, 2), 7), ((30, 30), 30), ((8, 8), 62)])
def test_adaptive_average_pooling_matches_torch(in_hw, out):
    x = np.random.default_rng(1).normal(size=(2, *in_hw, 3)).astype("float32")
    got = np.asarray(AdaptiveAveragePooling2D(out)(x))
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), out).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_per_image_zscore_matches_numpy():
    x = np.random.default_rng(2).uniform(0, 255, (2, 9, 7, 4)).astype("float32")
    x[1, ..., 2] = 17.0  # a constant channel maps to 0, not NaN
    ref = (x - x.mean(axis=(1, 2), keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1e-7)
    np.testing.assert_allclose(np.asarray(T.PerImageStandardization()(x)), ref, rtol=1e-4, atol=1e-4)


def test_inception_aux_head_training_model_float32_under_bf16_and_inference_shares_weights():
    keras.layers.Conv2D(1, 1)  # consume an auto name: the model's stem must still be called "conv2d"
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = T.build_team3_attention_inceptionv3_1024(input_shape=(160, 160, 4), with_aux=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer(T.INCEPTION_FIRST_CONV).kernel.shape == (3, 3, 4, 32)
    assert model.get_layer("conv2d_93") is not None  # canonical names, 94 convs
    heads = 2 * (2048 * K + K) + 2 * (768 * K + K)
    assert model.count_params() == INCEPTION_TRUNK_RGB + 3 * 3 * 32 + heads
    x = np.random.default_rng(3).uniform(0, 255, (2, 160, 160, 4)).astype("float32")
    out = model(x, training=False)
    assert set(out) == {"logits", "aux_logits"}
    for v in out.values():
        assert tuple(v.shape) == (2, K) and keras.backend.standardize_dtype(v.dtype) == "float32"
        assert np.all(np.isfinite(np.asarray(v)))
    inference = T.drop_aux_head(model)
    assert inference.count_params() == model.count_params() - 2 * (768 * K + K)
    assert {id(v) for v in inference.weights} <= {id(v) for v in model.weights}
    np.testing.assert_array_equal(np.asarray(inference(x, training=False)), np.asarray(out["logits"]))


def test_se_resnext_attention_model_counts_and_imagenet_stem(tmp_path):
    ref = randomize_(torch_se_resnext50_32x4d(), seed=4)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    np.savez(tmp_path / "senxt.npz", **sd)
    model = T.build_team3_attention_se_resnext50_1024(input_shape=(64, 64, 4), weights="imagenet",
                                                      imagenet_weights=tmp_path / "senxt.npz")
    trunk = count_weights(ref) - (2048 * 1000 + 1000) + 7 * 7 * 64  # no last_linear; + the Y stem filter
    assert model.count_params() == trunk + 2 * (2048 * K + K)
    stem = np.asarray(model.get_layer(T.SE_RESNEXT_FIRST_CONV).kernel)
    w = sd["layer0.conv1.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(stem[:, :, :3], w)
    np.testing.assert_array_equal(stem[:, :, 3], w[:, :, 0])  # teams.md §3.2: yellow = copy of red
    np.testing.assert_array_equal(np.asarray(model.get_layer("layer4_2_se_module_fc2").bias),
                                  sd["layer4.2.se_module.fc2.bias"])
    assert model.get_layer("attention_pool").output.shape[1:3] == (32, 32)
    out = model(np.random.default_rng(5).uniform(0, 255, (1, 64, 64, 4)).astype("float32"), training=False)
    assert tuple(out.shape) == (1, K) and np.all(np.isfinite(np.asarray(out)))


def test_resnet34_512_matches_torch_resnet34_with_linear_head_on_scaled_input():
    ref = randomize_(torch_resnet(34, in_channels=4, num_classes=K), seed=5)
    spec = get_spec("team3_resnet34_512")
    model = spec.build_fn()(num_classes=K, input_shape=(64, 64, 4))
    assert model.count_params() == count_weights(ref)
    for name in (spec.first_conv, spec.classifier, spec.feature_layer):
        model.get_layer(name)
    from zoo_models.backbones.resnet import load_torch_state_dict

    sd = ref.state_dict()
    load_torch_state_dict(model, sd, skip_classifier=True)
    model.get_layer("logits").set_weights([sd["fc.weight"].numpy().T, sd["fc.bias"].numpy()])
    x = np.random.default_rng(6).uniform(0, 255, (2, 64, 64, 4)).astype("float32")
    with torch.no_grad():
        expected = ref(torch.from_numpy(((x - 127.5) / 255).transpose(0, 3, 1, 2).copy())).numpy()  # teams.md §3.4
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, atol=1e-4, rtol=0)


def test_registry_rows_state_team3_sources_and_builders():
    assert set(list_models(team="team3")) == {"team3_attention_inceptionv3_1024",
                                              "team3_attention_se_resnext50_1024", "team3_resnet34_512"}
    inc = get_spec("team3_attention_inceptionv3_1024")
    assert inc.input_size == 1024 and inc.channels == "RGBY" and inc.recipe == "zoo_models.teams.team3_pudae:make_recipe"
    assert {(s.metric, s.value) for s in inc.reported} == {("private LB macro F1", 0.549),
                                                           ("public LB macro F1", 0.583)}
    assert all("77320" in s.source for s in inc.reported) and inc.weights == ()
    assert get_spec("team3_resnet34_512").input_size == 512
    for name in list_models(team="team3"):
        assert callable(get_spec(name).build_fn())


def test_bad_inputs_raise_with_the_fix():
    with pytest.raises(ConfigError, match="H, W >= 75"):
        T.build_team3_attention_inceptionv3_1024(input_shape=(64, 64, 4))
    with pytest.raises(ConfigError, match="fixed"):
        T.build_team3_resnet34_512(input_shape=(None, None, 4))
    with pytest.raises(WeightsError, match="imagenet_weights="):
        T.build_team3_resnet34_512(input_shape=(64, 64, 4), weights="imagenet")
    with pytest.raises(WeightsError, match="No HPA-trained Team 3 weights"):
        T.build_team3_resnet34_512(input_shape=(64, 64, 4), weights="nope.weights.h5")
