"""The registry table: rows complete and consistent with the models they build; names resolve or suggest.

References: the facts file (teams.md §1.1, §1.6, §1.8) for Team 1's values, and the built Keras models for the
layer names a row promises.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import hpa_zoo
from hpa_zoo.errors import UnknownModelError, WeightsError
from hpa_zoo.registry import ROWS, get_spec, list_models

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.mark.parametrize("spec", ROWS, ids=lambda s: s.name)
def test_every_row_is_complete(spec):
    assert callable(spec.build_fn())
    assert spec.input_size > 0 and spec.channels in ("RGBY", "RGB", "RGBYG") and spec.team
    assert spec.first_conv and spec.classifier and spec.feature_layer and spec.citation and spec.description
    if spec.recipe:  # the one recipe protocol: "module:make_recipe", make_recipe(model_name, **overrides) -> Recipe
        assert spec.recipe.endswith(":make_recipe")
        from hpa_zoo.recipe import Recipe, load_recipe

        recipe = spec.recipe_fn()(spec.name)
        assert isinstance(recipe, Recipe) and recipe == recipe  # plain data
        assert load_recipe(spec.name, epochs=2).epochs == 2
    for score in spec.reported:
        assert 0 < score.value < 1 and score.source and "LB" in score.metric
    for w in spec.weights:
        assert w.urls and all(u.startswith("https://") for u in w.urls) and w.filename and w.format
        assert w.license and w.citation and w.trained_on
        assert HEX64.match(w.sha256) or (w.sha256 == "" and "sha256" in w.notes), \
            f"{spec.name}/{w.name}: a weights row needs a sha256, or notes saying why there is none"


def test_team1_rows_carry_the_facts():
    big, small = get_spec("team1_densenet121_1024"), get_spec("team1_densenet121_512")
    assert (big.input_size, small.input_size) == (1024, 512)  # teams.md §1.1
    assert {s.name for s in (big, small)} <= set(list_models(team="team1"))
    assert (big.first_conv, big.classifier, big.feature_layer) == ("conv1_conv", "logits", "head_dropout2")
    scores = {(s.metric, s.value) for s in big.reported}
    assert ("private LB macro F1", 0.565) in scores and ("public LB macro F1", 0.627) in scores  # teams.md §1.6
    assert {("private LB macro F1", 0.563), ("public LB macro F1", 0.621)} <= {(s.metric, s.value)
                                                                              for s in small.reported}
    hpa = big.weights_spec("hpa")
    assert hpa.sha256 == "0ef125632b0058b2f04448de56dc23339fcbfe4f628601e836e17cef6f344e3f"  # teams.md §1.8
    assert hpa.urls[0] == "https://zenodo.org/api/records/5942853/files/densenet_model.onnx/content"
    assert "/api/files/" in hpa.urls[1] and hpa.format == "onnx" and hpa.license == "MIT"
    assert small.weights_spec("hpa").sha256 == "" and "v0.1.0" in small.weights_spec("hpa").urls[0]


def test_unknown_name_suggests_the_closest_registered_names():
    with pytest.raises(UnknownModelError, match="team1_densenet121_1024"):
        get_spec("team1_densenet121_1042")
    with pytest.raises(UnknownModelError, match="Did you mean"):
        hpa_zoo.load("team1_densnet121_512")


def test_hpa_weights_without_sha256_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HPA_ZOO_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="sha256"):
        hpa_zoo.load("team1_densenet121_512", weights="hpa")
    with pytest.raises(WeightsError, match="'hpa'"):
        hpa_zoo.load("team1_densenet121_512", weights="noisy_student")


def test_row_layer_names_exist_in_the_built_model():
    """(The large variant's names are checked in test_team1_model.py.)"""
    import keras
    name, size = "team1_densenet121_512", 32
    spec = get_spec(name)
    model = hpa_zoo.load(name, input_shape=(size, size, 4), num_classes=7)
    assert model.name == name and model.input_shape == (None, size, size, 4) and model.output_shape == (None, 7)
    stem = model.get_layer(spec.first_conv)
    assert isinstance(stem, keras.layers.Conv2D) and stem.kernel.shape == (7, 7, 4, 64)
    assert isinstance(model.get_layer(spec.classifier), keras.layers.Dense)
    features = hpa_zoo.feature_extractor(model)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 4)).astype(np.float32)
    assert tuple(features(x).shape) == (2, 1024)


@pytest.mark.parametrize("spec", ROWS, ids=lambda s: s.name)
def test_every_row_names_a_cam_layer_of_its_built_model(spec):
    """The registry's Grad-CAM layer (paper Fig. 3: DenseNet Block3, Inception Mixed_7c, ResNet Layer3) is a layer
    of the model the row builds, with a (B, h, w, D) map, and the one `grad_cam` uses by default."""
    from hpa_zoo.infer.explain import default_cam_layer

    size = 96 if "inception" in spec.name else 64  # Keras' Inception-v3 needs >= 75 px
    model = hpa_zoo.load(spec.name, input_shape=(size, size, spec.num_channels), num_classes=5)
    assert spec.cam_layer, f"{spec.name}: registry row without cam_layer"
    shape = model.get_layer(spec.cam_layer).output.shape
    assert len(shape) == 4 and shape[-1] >= 256, (spec.cam_layer, shape)
    assert default_cam_layer(model) == spec.cam_layer
    expected = {"conv4_block24_concat": 1024, "conv4_block32_concat": 1280, "conv4_block6_out": 1024,
                "mixed10": 2048}  # DenseNet121/169 Block3, ResNet50 conv4 (= torch layer3), Inception Mixed_7c
    if spec.cam_layer in expected:
        assert shape[-1] == expected[spec.cam_layer]
    else:  # torchvision-named ResNets: layer3 is the third stage, at 1/16 of the input
        assert spec.cam_layer == "layer3" and shape[1] == size // 16


def test_a_cam_layer_the_model_lacks_is_refused_naming_the_row():
    import keras

    from hpa_zoo import registry
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.infer.explain import default_cam_layer

    inp = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(2, 3, name="conv")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)), name="bad_cam_row")
    registry.list_models()
    registry.register(registry.ModelSpec(name="bad_cam_row", team="test", builder="x:y", input_size=16,
                                         cam_layer="layer3"))
    try:
        with pytest.raises(ConfigError, match="bad_cam_row.*cam_layer='layer3'.*--cam-layer"):
            default_cam_layer(model)
    finally:
        registry.unregister("bad_cam_row")
    assert default_cam_layer(model) == "conv"  # unregistered: the last 4-D layer
