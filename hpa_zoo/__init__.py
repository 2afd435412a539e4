"""hpa-zoo: the Human Protein Atlas Image Classification winning-solution model zoo in Keras 3.

Public API (imported lazily so that ``import hpa_zoo`` stays fast and does not start TensorFlow):

* ``hpa_zoo.list_models()`` / ``hpa_zoo.get_spec(name)``: the registry table.
* ``hpa_zoo.load(name_or_preset_dir, weights=None, num_classes=None, input_shape=None)``: a Keras model.
* ``hpa_zoo.save_preset(model, directory, metadata=...)`` / ``hpa_zoo.preset_info(directory)`` /
  ``hpa_zoo.feature_extractor(model)``.
* ``hpa_zoo.CLASS_NAMES``: the 28 class names.
"""
from __future__ import annotations

import importlib

from hpa_zoo.constants import CHANNELS, CLASS_NAMES, NUM_CLASSES  # noqa: F401  (light, no TensorFlow)
from hpa_zoo.registry import get_spec, list_models  # noqa: F401

__version__ = "0.1.0"

_LAZY = {
    "load": "hpa_zoo.zoo.models_api",
    "save_preset": "hpa_zoo.zoo.models_api",
    "feature_extractor": "hpa_zoo.zoo.models_api",
    "preset_info": "hpa_zoo.zoo.models_api",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpa_zoo' has no attribute {name!r}")
