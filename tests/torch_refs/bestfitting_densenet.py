"""Plain-PyTorch reference of Team 1's (bestfitting) DenseNet121 classifier, written from teams.md §1.2.

Independent of hpa_zoo (no imports from it) so the Keras model and the ONNX converter can be checked against it.
torchvision is not installable here, so DenseNet121 is written out with **torchvision's module names**
(`features.conv0`, `features.norm0`, `features.denseblock1.denselayer1.norm1/conv1/norm2/conv2`,
`features.transition1.norm/conv`, `features.norm5`), which is what torchvision checkpoints and the published
ONNX export were made from.

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


def _densenet121_features(in_channels: int, large: bool) -> nn.Sequential:
    """torchvision's `DenseNet121.features` with a `in_channels` stem (+ the `large` extra pool)."""
    layers: list[tuple[str, nn.Module]] = [
        ("conv0", nn.Conv2d(in_channels, NUM_INIT_FEATURES, kernel_size=7, stride=2, padding=3, bias=False)),
        ("norm0", nn.BatchNorm2d(NUM_INIT_FEATURES)),
        ("relu0", nn.ReLU(inplace=False)),
        ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
    ]
    if large:  # teams.md §1.2: `large` adds MaxPool2d(2, s2) after pool0 (output stride 64)
        layers.append(("pool_large", nn.MaxPool2d(kernel_size=2, stride=2)))
    channels = NUM_INIT_FEATURES
    for i, n in enumerate(BLOCK_CONFIG):
        layers.append((f"denseblock{i + 1}", _DenseBlock(n, channels)))
        channels += n * GROWTH_RATE
        if i != len(BLOCK_CONFIG) - 1:
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
