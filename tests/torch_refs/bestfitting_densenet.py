"""Plain-PyTorch reference of Team 1's (bestfitting) DenseNet121 classifier, written from docs/teams.md §1.2.

Independent of hpa_zoo (no imports from it) so the Keras model and the ONNX converter can be checked against it.
torchvision is not installable here, so DenseNet121 is written out with **torchvision's module names**
(`features.conv0`, `features.norm0`, `features.denseblock1.denselayer1.norm1/conv1/norm2/conv2`,
`features.transition1.norm/conv`, `features.norm5`), which is what torchvision checkpoints and the published
ONNX export were made from.

Two forms of the same network:

* `BestfittingDensenet` (+ `BioimageWrapper`): a tidy form (normalisation by broadcast buffers, ``torch.sigmoid``).
* `PublishedDensenet` (+ `PublishedOutputs`): the form the **published ONNX files were exported from**
  (docs/teams.md §1.8; CellProfiling/densenet ``predict/models.py`` and ``predict/predict_onnx.py``): the trunk is a
  torchvision DenseNet kept as ``backbone`` and re-used through ``conv1`` / ``encoder2..5`` containers, the input
  is normalised **in place, one channel at a time, in a Python loop with float constants**, the ``large`` pool is
  a top-level ``maxpool`` applied after ``conv1``, the head's adaptive pools are **created inside forward**, and the
  packaged outputs are ``1 / (1 + torch.exp(-logits))`` and the feature. Traced by the TorchScript exporter, the
  loop becomes Slice/Gather + Sub + Div + ScatterND nodes with shape-specific constants, the adaptive max pool a
  MaxPool whose kernel is the final map size, and the ending Neg -> Exp -> Add(1) -> Reciprocal.

    build_torch_bestfitting_densenet(num_classes=28, large=False) -> BestfittingDensenet
        forward(x: float32 (B, 4, H, W) RGBY in [0, 1]) -> (logits (B, C), features (B, 1024))
    BioimageWrapper(model)
        forward(image: float32 (B, 4, H, W) RGBY in [0, 1]) -> (classes = sigmoid(logits) (B, C), features (B, 1024))
        i.e. the input/output contract of the bioimage.io package (teams.md §1.8: input `image` = uint8/255,
        outputs `classes` sigmoid probabilities and `features`).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# teams.md §1.2: RGBY mean/std of the Kaggle train+test PNGs, applied inside forward on [0, 1] inputs.
RGBY_MEAN = (0.074598, 0.050630, 0.050891, 0.076287)
RGBY_STD = (0.122813, 0.085745, 0.129882, 0.119411)

# torchvision densenet121: growth 32, blocks (6, 12, 24, 16), 64 initial features, bottleneck 4 * growth.
GROWTH_RATE = 32
BLOCK_CONFIG = (6, 12, 24, 16)
NUM_INIT_FEATURES = 64
BN_SIZE = 4


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k); returns only the k new channels (concatenated by the block)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_channels, BN_SIZE * GROWTH_RATE, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(BN_SIZE * GROWTH_RATE)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(BN_SIZE * GROWTH_RATE, GROWTH_RATE, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class _DenseBlock(nn.Module):
    """`n` dense layers; the output is cat([input, new_1, ..., new_n]) on channels (torchvision order)."""

    def __init__(self, n: int, in_channels: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(in_channels + i * GROWTH_RATE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.children():
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1(halve channels)-AvgPool(2, 2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(OrderedDict([
            ("norm", nn.BatchNorm2d(in_channels)),
            ("relu", nn.ReLU(inplace=False)),
            ("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False)),
            ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
        ]))


def _densenet121_features(in_channels: int, large: bool, block_config=BLOCK_CONFIG) -> nn.Sequential:
    """torchvision's `DenseNet121.features` (or another `block_config`: DenseNet169 is (6, 12, 32, 32)) with an
    `in_channels` stem (+ the `large` extra pool inside `features`, as the tidy form has it)."""
    layers: list[tuple[str, nn.Module]] = [
        ("conv0", nn.Conv2d(in_channels, NUM_INIT_FEATURES, kernel_size=7, stride=2, padding=3, bias=False)),
        ("norm0", nn.BatchNorm2d(NUM_INIT_FEATURES)),
        ("relu0", nn.ReLU(inplace=False)),
        ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
    ]
    if large:  # teams.md §1.2: `large` adds MaxPool2d(2, s2) after pool0 (output stride 64)
        layers.append(("pool_large", nn.MaxPool2d(kernel_size=2, stride=2)))
    channels = NUM_INIT_FEATURES
    for i, n in enumerate(block_config):
        layers.append((f"denseblock{i + 1}", _DenseBlock(n, channels)))
        channels += n * GROWTH_RATE
        if i != len(block_config) - 1:
            layers.append((f"transition{i + 1}", _Transition(channels, channels // 2)))
            channels //= 2
    layers.append(("norm5", nn.BatchNorm2d(channels)))
    return nn.Sequential(OrderedDict(layers))


class BestfittingDensenet(nn.Module):
    """Team 1's `DensenetClass` (dropout variant): DenseNet121 trunk + ReLU, concat(avg, max) head.

    forward(x: float32 (B, 4, H, W) RGBY in [0, 1]) -> (logits float32 (B, num_classes), features float32 (B, 1024)).
    `features` is the 1024-d vector after bn2/dropout (teams.md §1.2 head step 7).
    """

    def __init__(self, num_classes: int = 28, large: bool = False, in_channels: int = 4) -> None:
        super().__init__()
        self.large = large
        self.features = _densenet121_features(in_channels, large)
        num_features = 1024
        self.register_buffer("mean", torch.tensor(RGBY_MEAN[:in_channels]).view(1, in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(RGBY_STD[:in_channels]).view(1, in_channels, 1, 1))
        # teams.md §1.2 head table: BN1d(2048) -> Dropout -> Linear(2048->1024) -> ReLU -> BN1d(1024) -> Dropout -> logit
        self.bn1 = nn.BatchNorm1d(num_features * 2)
        self.dropout1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(num_features * 2, num_features)
        self.relu = nn.ReLU(inplace=False)
        self.bn2 = nn.BatchNorm1d(num_features)
        self.dropout2 = nn.Dropout(0.5)
        self.logit = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.mean) / self.std
        x = F.relu(self.features(x))
        x = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1).flatten(1)
        x = self.dropout1(self.bn1(x))
        x = self.relu(self.fc1(x))
        feats = self.dropout2(self.bn2(x))
        return self.logit(feats), feats


class BioimageWrapper(nn.Module):
    """The bioimage.io package's contract: `image` (B, 4, H, W) in [0, 1] -> (`classes` sigmoid (B, C), `features`)."""

    def __init__(self, model: BestfittingDensenet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.model(image)
        return torch.sigmoid(logits), feats


def build_torch_bestfitting_densenet(num_classes: int = 28, large: bool = False) -> BestfittingDensenet:
    """Build the reference model (random init, train mode; call `.eval()` before comparing outputs)."""
    return BestfittingDensenet(num_classes=num_classes, large=large)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN layer random affine parameters and running statistics (in place), so that a converter
    that mixes up gamma/beta/mean/var, or ignores them, produces visibly different outputs. Returns `model`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return model


# ---------------------------------------------------------------------------------------------- published form
class _TorchvisionDensenet(nn.Module):
    """torchvision's ``DenseNet`` container: ``features`` (+ an ImageNet ``classifier`` that forward never uses,
    so the exporter drops its weights)."""

    def __init__(self, in_channels: int, block_config) -> None:
        super().__init__()
        self.features = _densenet121_features(in_channels, large=False, block_config=block_config)
        num_features = self.features.norm5.num_features
        self.classifier = nn.Linear(num_features, 1000)


class PublishedDensenet(nn.Module):
    """Team 1's ``DensenetClass`` written the way the published ONNX packages were made (see the module docstring).

    forward(x: float32 (B, 4, H, W) RGBY in [0, 1]) -> (logits float32 (B, num_classes), feature float32 (B, F)).
    **forward modifies `x` in place** (the normalisation loop), as the original does: pass a copy.

    Args:
        num_classes: logits.
        large: the 1024 package layout (a top-level 2x2 max-pool after the stem; output stride 64) or the
            non-large release-file layout (output stride 32).
        block_config: dense-block lengths; (6, 12, 24, 16) is DenseNet121, (6, 12, 32, 32) DenseNet169 (a
            different architecture the converter must refuse).
        mean, std: the four per-channel constants of the normalisation loop (Team 1's RGBY statistics).
    """

    def __init__(self, num_classes: int = 28, large: bool = False, block_config=BLOCK_CONFIG,
                 mean=RGBY_MEAN, std=RGBY_STD) -> None:
        super().__init__()
        self.large = large
        self.norm_mean, self.norm_std = [float(m) for m in mean], [float(s) for s in std]
        self.backbone = _TorchvisionDensenet(4, block_config)
        f = self.backbone.features
        num_features = f.norm5.num_features
        self.conv1 = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)
        self.encoder2 = nn.Sequential(f.denseblock1)
        self.encoder3 = nn.Sequential(f.transition1, f.denseblock2)
        self.encoder4 = nn.Sequential(f.transition2, f.denseblock3)
        self.encoder5 = nn.Sequential(f.transition3, f.denseblock4, f.norm5)
        self.maxpool = nn.MaxPool2d(2, stride=2)
        self.bn1 = nn.BatchNorm1d(num_features * 2)
        self.fc1 = nn.Linear(num_features * 2, num_features)
        self.bn2 = nn.BatchNorm1d(num_features)
        self.relu = nn.ReLU(inplace=True)
        self.logit = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for c in range(4):  # in place, per channel, Python floats: what the exporter traced
            x[:, c, :, :] = (x[:, c, :, :] - self.norm_mean[c]) / self.norm_std[c]
        x = self.conv1(x)
        if self.large:
            x = self.maxpool(x)
        e5 = self.encoder5(self.encoder4(self.encoder3(self.encoder2(x))))
        e5 = F.relu(e5, inplace=True)
        x = torch.cat((nn.AdaptiveAvgPool2d(1)(e5), nn.AdaptiveMaxPool2d(1)(e5)), dim=1)
        x = x.view(x.size(0), -1)
        x = F.dropout(self.bn1(x), p=0.5, training=self.training)
        x = self.bn2(self.relu(self.fc1(x)))
        feature = F.dropout(x, p=0.5, training=self.training).view(x.size(0), -1)
        return self.logit(feature), feature


class PublishedOutputs(nn.Module):
    """The packaged contract around a network returning (logits, feature): ``image`` (B, 4, H, W) in [0, 1] ->
    (``classes`` (B, C), ``features`` (B, F)).

    ending: ``"reciprocal"`` = ``1 / (1 + torch.exp(-logits))`` (the published files), ``"sigmoid"`` =
    ``torch.sigmoid`` (the tidy form), ``"logits"`` = no sigmoid at all (a file the converter must refuse).
    """

    ENDINGS = ("reciprocal", "sigmoid", "logits")

    def __init__(self, model: nn.Module, ending: str = "reciprocal") -> None:
        super().__init__()
        if ending not in self.ENDINGS:
            raise ValueError(f"ending {ending!r} not in {self.ENDINGS}")
        self.model, self.ending = model, ending

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feature = self.model(image)
        if self.ending == "reciprocal":
            return 1 / (1 + torch.exp(-logits)), feature
        if self.ending == "sigmoid":
            return torch.sigmoid(logits), feature
        return logits, feature


def build_published_densenet(num_classes: int = 28, large: bool = True, **kwargs) -> PublishedDensenet:
    """Build the published-form reference (random init, train mode; `randomize_` and `.eval()` it)."""
    return PublishedDensenet(num_classes=num_classes, large=large, **kwargs)
