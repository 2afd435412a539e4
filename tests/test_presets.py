"""hpa_zoo.load / save_preset / feature_extractor: presets and .keras files give back the same model; the
published-weights path converts ONNX once and reuses its cache.

The reference for a round trip is the original model's own outputs on the same images (inference mode).

The preset mechanics (registry builder + build config + weights + metadata) are the same for every registry row,
so the round trips use the tiny registry row of tests/conftest.py (Team 1's ``input_norm`` and head layer names,
built in a fraction of a second); Team 1's DenseNet121 row is used where the row itself matters (published
weights, its ``feature_layer``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import keras

import hpa_zoo  # noqa: E402
from hpa_zoo.zoo import models_api  # noqa: E402
from hpa_zoo.errors import ConfigError  # noqa: E402
from tests.conftest import TINY_REGISTRY_NAME  # noqa: E402
from zoo_models.teams import team1_bestfitting as t1  # noqa: E402

NAME, SIZE = "team1_densenet121_512", 32
X = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 4)).astype(np.float32)


def _out(model, x=X):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _scramble(model, seed=0):
    """Non-trivial weights everywhere (BN statistics included), so a missed weight changes the outputs."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        v = rng.normal(0, 0.05, w.shape) + (1.0 if "variance" in w.path or "gamma" in w.path else 0.0)
        w.assign(v.astype(np.float32))
    return model


@pytest.fixture(scope="module")
def model():
    return _scramble(hpa_zoo.load(NAME, input_shape=(SIZE, SIZE, 4)))


@pytest.fixture
def tiny(tiny_registry_model):
    """The tiny registry row's model at SIZE px, scrambled."""
    return _scramble(hpa_zoo.load(tiny_registry_model, input_shape=(SIZE, SIZE, 4)))


def test_preset_round_trip_gives_the_same_outputs_and_keras_hub_layout(tiny, tmp_path):
    model = tiny
    preset = hpa_zoo.save_preset(model, tmp_path / "p", metadata={"thresholds": np.full(28, 0.3), "fold": 0})
    assert sorted(p.name for p in preset.iterdir()) == ["config.json", "metadata.json", "model.weights.h5"]
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp folders left behind
    config = json.loads((preset / "config.json").read_text())
    assert config["model_name"] == TINY_REGISTRY_NAME and config["build_config"] == {"num_classes": 28,
                                                                       "input_shape": [SIZE, SIZE, 4]}
    meta = models_api.load_metadata(preset)
    assert meta["class_names"][0] == "Nucleoplasm" and meta["thresholds"] == [0.3] * 28 and meta["fold"] == 0
    np.testing.assert_allclose(meta["normalization"]["mean"], t1.RGBY_MEAN, atol=1e-6)
    np.testing.assert_allclose(meta["normalization"]["std"], t1.RGBY_STD, atol=1e-6)
    assert meta["keras_version"] == keras.__version__ and meta["parameter_count"] == model.count_params()

    loaded = hpa_zoo.load(preset)
    assert loaded.name == TINY_REGISTRY_NAME
    np.testing.assert_allclose(_out(loaded), _out(model), rtol=1e-5, atol=1e-5)

    # overrides: another input size and class count: every weight but the new head's is the preset's
    bigger = hpa_zoo.load(str(preset), input_shape=(64, 64, 4), num_classes=5)
    assert bigger.input_shape == (None, 64, 64, 4) and bigger.output_shape == (None, 5)
    for layer in bigger.layers:
        if layer.weights and layer.name != "logits":
            for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b, err_msg=layer.name)


def test_saving_again_replaces_a_preset_but_never_a_foreign_folder(tiny, tmp_path):
    model = tiny
    preset = hpa_zoo.save_preset(model, tmp_path / "p", metadata={"fold": 1})
    hpa_zoo.save_preset(model, preset, metadata={"fold": 2})
    assert models_api.load_metadata(preset)["fold"] == 2 and len(list(tmp_path.iterdir())) == 1
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an hpa-zoo preset"):
        hpa_zoo.save_preset(model, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    unnamed = keras.Model(model.inputs[0], model.outputs[0], name="my_model")
    with pytest.raises(ConfigError, match="model_name"):
        hpa_zoo.save_preset(unnamed, tmp_path / "q")


def test_metadata_that_is_not_json_is_refused_naming_its_key_and_nothing_is_written(tiny, tmp_path):
    meta = {"fold": np.int64(1), "thresholds": np.full(28, 0.5, np.float32), "data": tmp_path, "bad": {1, 2}}
    with pytest.raises(ConfigError, match=r"metadata\['bad'\] cannot be written to metadata\.json.*set"):
        hpa_zoo.save_preset(tiny, tmp_path / "p", metadata=meta)
    assert not (tmp_path / "p").exists()
    del meta["bad"]  # NumPy values and paths are converted, as before
    saved = models_api.load_metadata(hpa_zoo.save_preset(tiny, tmp_path / "p", metadata=meta))
    assert saved["fold"] == 1 and saved["thresholds"] == [0.5] * 28 and saved["data"] == str(tmp_path)


def test_keras_file_round_trip(tiny, tmp_path):
    model = tiny
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = hpa_zoo.load(path)
    np.testing.assert_allclose(_out(loaded), _out(model), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="does not exist"):
        hpa_zoo.load(tmp_path / "missing.keras")


def test_feature_extractor_is_the_head_dropout2_output(model):
    feats = hpa_zoo.feature_extractor(model)
    manual = keras.Model(model.inputs[0], model.get_layer("head_bn2").output)  # dropout = identity at inference
    np.testing.assert_allclose(_out(feats), _out(manual), rtol=1e-6, atol=1e-6)
    assert _out(feats).shape == (2, 1024)


def test_published_onnx_weights_are_converted_once_then_read_from_the_cache(model, tmp_path, monkeypatch):
    """`hpa_zoo.zoo.weights.fetch` and `onnx_to_keras_weights` are replaced by fakes: this tests load()'s own logic
    (build with 28 classes, convert, cache next to the download, reuse, then a new head for num_classes)."""
    from hpa_zoo.zoo import onnx_convert, weights

    onnx_file = tmp_path / "team1.onnx"
    onnx_file.write_bytes(b"fake onnx")
    calls = []
    monkeypatch.setattr(weights, "fetch", lambda spec, local_path=None: onnx_file)

    def fake_convert(path, keras_model):
        calls.append(path)
        keras_model.set_weights(model.get_weights())  # "the published weights" = the fixture's

    monkeypatch.setattr(onnx_convert, "onnx_to_keras_weights", fake_convert)
    first = hpa_zoo.load(NAME, weights="hpa", input_shape=(SIZE, SIZE, 4))
    cache = tmp_path / f"team1.{NAME}.weights.h5"
    assert calls == [onnx_file] and cache.is_file()
    np.testing.assert_allclose(_out(first), _out(model), rtol=1e-5, atol=1e-5)

    monkeypatch.setattr(onnx_convert, "onnx_to_keras_weights", lambda *a: pytest.fail("converted twice"))
    second = hpa_zoo.load(NAME, weights="hpa", input_shape=(SIZE, SIZE, 4), num_classes=3)
    assert second.output_shape == (None, 3) and second.get_layer("logits").dtype_policy.compute_dtype == "float32"
    np.testing.assert_allclose(_out(hpa_zoo.feature_extractor(second)), _out(hpa_zoo.feature_extractor(model)),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- every preset kind
def _two_stain_single_label(tiny):
    """What `hpa_zoo.train.finetune` makes of a zoo model for nucleus + protein images and 3 exclusive classes: the
    channel surgery (blue, green, with the user's own statistics) and a new 3-class head."""
    from zoo_models.surgery import adapt_channels, replace_head

    two = adapt_channels(tiny, ["blue", None], first_conv="conv1_conv", unknown_stats=[(0, 1), (40.0, 20.0)])
    return _scramble(replace_head(two, 3, classifier="logits"), seed=3)


@pytest.mark.parametrize("kind", ["two_stains_single_label", "three_stains_five_classes"])
def test_fine_tuned_presets_with_other_channels_and_classes_load_as_saved(kind, tiny, tmp_path):
    """The issue's crash: a preset with 2 channels went through the RGBY builder (Incompatible shapes [1,1,1,4]
    vs [1,1,1,2]). Now the row's model is put through the same surgery with the recorded normalisation."""
    from zoo_models.surgery import adapt_channels, replace_head

    if kind == "two_stains_single_label":
        model, stains, meta = _two_stain_single_label(tiny), ["blue", None], {
            "activation": "softmax", "multi_label": False, "class_names": ["a", "b", "c"]}
    else:
        model = _scramble(replace_head(adapt_channels(tiny, ["red", "green", "blue"], first_conv="conv1_conv"), 5,
                                       classifier="logits"), seed=4)
        stains, meta = ["red", "green", "blue"], {"class_names": list("vwxyz"), "thresholds": [0.3] * 5}
    preset = hpa_zoo.save_preset(model, tmp_path / "p", model_name=TINY_REGISTRY_NAME,
                                 metadata={**meta, "stains": stains, "channels": ["c"] * len(stains)})
    loaded = hpa_zoo.load(preset)
    x = X[..., : len(stains)] * np.linspace(0.5, 1.0, len(stains), dtype=np.float32)
    assert loaded.input_shape == model.input_shape and loaded.output_shape == model.output_shape
    np.testing.assert_allclose(_out(loaded, x), _out(model, x), rtol=1e-5, atol=1e-5)
    info = hpa_zoo.preset_info(preset)
    assert info["stains"] == stains and info["class_names"] == meta["class_names"]
    assert info["num_classes"] == len(meta["class_names"]) and info["input_shape"][-1] == len(stains)
    assert info["activation"] == meta.get("activation", "sigmoid")
    norm = info["normalization"]
    expected = np.asarray(model.get_layer("input_norm").get_config()["mean"], np.float64).ravel() / 255.0
    np.testing.assert_allclose(norm["mean"], expected, atol=1e-6)


def test_team3_training_model_with_its_aux_output_round_trips(tmp_path):
    spec = hpa_zoo.get_spec("team3_attention_inceptionv3_1024")
    model = _scramble(spec.build_fn()(num_classes=28, input_shape=(75, 75, 4), weights=None, with_aux=True), seed=5)
    preset = hpa_zoo.save_preset(model, tmp_path / "t3", model_name=spec.name)
    assert json.loads((preset / "config.json").read_text())["build_config"]["with_aux"] is True
    loaded = hpa_zoo.load(preset)
    x = X[:, :, :, :].repeat(3, axis=1).repeat(3, axis=2)[:, :75, :75]
    a, b = loaded(x, training=False), model(x, training=False)
    assert sorted(a) == ["aux_logits", "logits"]
    for key in a:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a[key]), keras.ops.convert_to_numpy(b[key]),
                                   rtol=1e-4, atol=1e-4)


def test_damaged_presets_fail_naming_the_file(tiny, tmp_path):
    from hpa_zoo.errors import WeightsError

    preset = hpa_zoo.save_preset(tiny, tmp_path / "p", model_name=TINY_REGISTRY_NAME)
    (preset / "model.weights.h5").unlink()
    with pytest.raises(WeightsError, match=r"p: no model\.weights\.h5; the preset is incomplete"):
        hpa_zoo.load(preset)
    (preset / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: unreadable"):
        hpa_zoo.load(preset)
    other = hpa_zoo.save_preset(_two_stain_single_label(tiny), tmp_path / "q", model_name=TINY_REGISTRY_NAME)
    with pytest.raises(ConfigError, match="records no 'stains'"):  # 2 channels, but which stains?
        hpa_zoo.load(other)
