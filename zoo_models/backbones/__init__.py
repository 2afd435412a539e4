"""Backbones Keras does not ship, with PyTorch-checkpoint-compatible layer names (`zoo_models.backbones.resnet`)."""
from zoo_models.backbones.resnet import (load_torch_state_dict, resnet18, resnet34, se_resnext50_32x4d,
                                         torch_name_map)

__all__ = ["load_torch_state_dict", "resnet18", "resnet34", "se_resnext50_32x4d", "torch_name_map"]
