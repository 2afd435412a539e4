"""Plain-PyTorch ResNet18/34 (torchvision) and SE-ResNeXt50 32x4d (Cadene ``pretrainedmodels``) references.

Independent of hpa_zoo / zoo_models (no imports from them). torchvision and pretrainedmodels are not installable
here, so the networks are written out with **their module names**, which is what their ImageNet checkpoints use:

* torchvision ``resnet18/34``: ``conv1``, ``bn1``, ``relu``, ``maxpool`` (3, 2, padding 1), ``layer1..4`` of
  ``BasicBlock`` (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample.0/1``), ``avgpool``, ``fc``.
* Cadene ``se_resnext50_32x4d``: ``layer0.conv1/bn1/relu1/pool`` (MaxPool 3, 2, ceil_mode=True), ``layer1..4`` of
  ``SEResNeXtBottleneck`` (``conv1/bn1``, grouped ``conv2/bn2`` (groups 32), ``conv3/bn3``, ``se_module.fc1/fc2``
  1x1 convs with bias, ``downsample.0/1``), ``avg_pool``, ``last_linear``.

    torch_resnet(depth=18|34, in_channels=3, num_classes=1000) -> nn.Module
    torch_se_resnext50_32x4d(in_channels=3, num_classes=1000) -> nn.Module
    forward(x: float32 (B, C, H, W)) -> logits (B, num_classes); `.features(x)` -> last stage map (B, D, H/32, W/32)
    randomize_(model, seed) -> model with random weights AND random BN running statistics (so eval mode tests BN)
"""
from __future__ import annotations

import math

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet with BasicBlock."""

    def __init__(self, layers, in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(inplanes, planes, 2 if (i > 1 and j == 0) else 1))
                inplanes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * s


class SEResNeXtBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample=None, base_width: int = 4) -> None:
        super().__init__()
        width = math.floor(planes * (base_width / 64)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False, stride=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + residual)


class SENet(nn.Module):
    """Cadene pretrainedmodels.models.senet.SENet for se_resnext50_32x4d (input_3x3=False, dropout None)."""

    def __init__(self, layers=(3, 4, 6, 3), groups: int = 32, reduction: int = 16, in_channels: int = 3,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.layer0 = nn.Sequential()
        self.layer0.add_module("conv1", nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False))
        self.layer0.add_module("bn1", nn.BatchNorm2d(64))
        self.layer0.add_module("relu1", nn.ReLU(inplace=True))
        self.layer0.add_module("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True))
        inplanes = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            stride = 1 if i == 1 else 2
            downsample = None
            if stride != 1 or inplanes != planes * 4:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, padding=0, bias=False),
                                           nn.BatchNorm2d(planes * 4))
            blocks = [SEResNeXtBottleneck(inplanes, planes, groups, reduction, stride, downsample)]
            inplanes = planes * 4
            blocks += [SEResNeXtBottleneck(inplanes, planes, groups, reduction) for _ in range(1, n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avg_pool = nn.AdaptiveAvgPool2d(1)  # Cadene: AvgPool2d(7) at 224; adaptive for any size
        self.last_linear = nn.Linear(512 * 4, num_classes)

    def features(self, x):
        x = self.layer0(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.last_linear(torch.flatten(self.avg_pool(self.features(x)), 1))


def torch_resnet(depth: int, in_channels: int = 3, num_classes: int = 1000) -> ResNet:
    layers = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[depth]
    return ResNet(layers, in_channels=in_channels, num_classes=num_classes)


def torch_se_resnext50_32x4d(in_channels: int = 3, num_classes: int = 1000) -> SENet:
    return SENet(in_channels=in_channels, num_classes=num_classes)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random conv/linear weights (He-normal-ish) and random BN affine + running stats, in place; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(0.5 + 0.1 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def count_weights(model: nn.Module) -> int:
    """Parameters + BN running mean/var (no num_batches_tracked): the numbers Keras stores as weights."""
    n = sum(p.numel() for p in model.parameters())
    return n + sum(b.numel() for name, b in model.named_buffers() if not name.endswith("num_batches_tracked"))

