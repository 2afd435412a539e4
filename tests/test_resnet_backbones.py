"""ResNet18/34 and SE-ResNeXt50 32x4d in Keras against independent PyTorch references (tests/torch_refs/resnets.py)."""
from __future__ import annotations



import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hpa_zoo.errors import ConfigError, WeightsError  # noqa: E402
from tests.torch_refs.resnets import (count_weights, randomize_, torch_resnet,  # noqa: E402
                                      torch_se_resnext50_32x4d)
from zoo_models.backbones import resnet as R  # noqa: E402

SIZE = 64


def _torch_ref(arch: str, in_channels: int = 3):
    if arch == "se_resnext50_32x4d":
        return torch_se_resnext50_32x4d(in_channels=in_channels)
    return torch_resnet(int(arch[-2:]), in_channels=in_channels)


def _torch_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "se_resnext50_32x4d"])
def test_weight_count_equals_torch_params_plus_bn_buffers(arch):
    keras_model = R.BUILDERS[arch]((SIZE, SIZE, 3), include_top=True)
    assert keras_model.count_params() == count_weights(_torch_ref(arch))
    # and without the classifier: exactly the Linear(D, 1000) fewer
    no_top = R.BUILDERS[arch]((SIZE, SIZE, 3), include_top=False)
    d = 512 if arch != "se_resnext50_32x4d" else 2048
    assert keras_model.count_params() - no_top.count_params() == d * 1000 + 1000


@pytest.mark.parametrize("arch", ["resnet18", "se_resnext50_32x4d"])
def test_logits_match_torch_after_loading_its_state_dict(arch):
    ref = randomize_(_torch_ref(arch), seed=1)
    model = R.BUILDERS[arch]((SIZE, SIZE, 3), include_top=True)
    loaded = R.load_torch_state_dict(model, ref.state_dict())
    assert len(loaded) == len(model.weights)
    x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    expected = _torch_logits(ref, x)
    got = np.asarray(model(x, training=False))
    assert np.abs(expected).max() > 0.1  # a non-trivial signal reaches the logits
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_resnet34_imagenet_transplant_gives_rgby_stem_with_red_copied(tmp_path):
    """weights='imagenet' from a (3-channel) checkpoint file == a 4-channel torch net whose Y filter is R's."""
    ref3 = randomize_(torch_resnet(34), seed=2)
    sd = {k: v.numpy() for k, v in ref3.state_dict().items()}
    path = tmp_path / "resnet34.npz"
    np.savez(path, **sd)
    model = R.resnet34((SIZE, SIZE, 4), include_top=False, pooling="avg", weights="imagenet",
                       imagenet_weights=path)
    ref4 = torch_resnet(34, in_channels=4)
    sd4 = dict(ref3.state_dict())
    w = sd4["conv1.weight"]
    sd4["conv1.weight"] = torch.cat([w, w[:, :1]], dim=1)  # teams.md §3.2: Y takes a copy of the red filter
    ref4.load_state_dict(sd4)
    ref4.eval()
    x = np.random.default_rng(1).uniform(0, 1, (2, SIZE, SIZE, 4)).astype("float32")
    with torch.no_grad():
        expected = ref4.avgpool(ref4.features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))).flatten(1).numpy()
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, atol=1e-4, rtol=0)


def test_stage_outputs_are_reachable_by_name_with_strides_4_to_32():
    model = R.resnet18((SIZE, SIZE, 3))
    shapes = {f"layer{i}": tuple(model.get_layer(f"layer{i}").output.shape[1:]) for i in range(1, 5)}
    assert shapes == {"layer1": (16, 16, 64), "layer2": (8, 8, 128), "layer3": (4, 4, 256), "layer4": (2, 2, 512)}
    assert model.output_shape == (None, 2, 2, 512)


def test_team1_stem_pool_2x2_matches_torch_with_maxpool_2x2():
    ref = randomize_(torch_resnet(18), seed=3)
    ref.maxpool = torch.nn.MaxPool2d(2, 2)
    model = R.resnet18((SIZE, SIZE, 3), include_top=True, stem_pool="max2x2")
    R.load_torch_state_dict(model, ref.state_dict())
    x = np.random.default_rng(2).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x, training=False)), _torch_logits(ref, x), atol=1e-4, rtol=0)


def test_torch_name_map_uses_torchvision_and_cadene_keys():
    names = R.torch_name_map(R.resnet18((SIZE, SIZE, 3), include_top=True))
    assert names["conv1/kernel"] == "conv1.weight"
    assert names["bn1/moving_variance"] == "bn1.running_var"
    assert names["layer2_0_downsample_0/kernel"] == "layer2.0.downsample.0.weight"
    assert names["layer2_0_downsample_1/gamma"] == "layer2.0.downsample.1.weight"
    assert names["fc/kernel"] == "fc.weight"
    assert set(names.values()) == {k for k in torch_resnet(18).state_dict() if not k.endswith("num_batches_tracked")}
    cadene = R.torch_name_map(R.se_resnext50_32x4d((SIZE, SIZE, 3), include_top=True))
    assert cadene["layer0_conv1/kernel"] == "layer0.conv1.weight"
    assert cadene["layer3_5_se_module_fc2/bias"] == "layer3.5.se_module.fc2.bias"
    assert cadene["last_linear/bias"] == "last_linear.bias"
    assert set(cadene.values()) == {k for k in torch_se_resnext50_32x4d().state_dict()
                                    if not k.endswith("num_batches_tracked")}


def test_state_dict_mismatches_fail_naming_the_tensor():
    model = R.resnet18((SIZE, SIZE, 4))
    sd = torch_resnet(18).state_dict()
    with pytest.raises(WeightsError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\)"):
        R.load_torch_state_dict(model, sd)  # 3-channel checkpoint into a 4-channel stem
    model3 = R.resnet18((SIZE, SIZE, 3))
    with pytest.raises(WeightsError, match=r"unused tensors \['extra.weight'\]"):
        R.load_torch_state_dict(model3, {**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"missing tensors \['layer1.0.conv1.weight'\]"):
        R.load_torch_state_dict(model3, {k: v for k, v in sd.items() if k != "layer1.0.conv1.weight"})
    with pytest.raises(WeightsError, match="missing tensors"):
        R.load_torch_state_dict(R.resnet34((SIZE, SIZE, 3)), sd)  # resnet18 checkpoint into resnet34
    # DataParallel prefixes are accepted; the ImageNet classifier is skipped for include_top=False
    R.load_torch_state_dict(model3, {f"module.{k}": v for k, v in sd.items()})


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ConfigError, match="stem_pool"):
        R.resnet18((SIZE, SIZE, 3), stem_pool="avg")
    with pytest.raises(WeightsError, match="imagenet_weights="):
        R.resnet34((SIZE, SIZE, 4), weights="imagenet")
    with pytest.raises(ConfigError, match="32 px"):
        R.resnet18((16, 16, 3))
