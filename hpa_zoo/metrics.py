"""Deprecated: `hpa_zoo.metrics` moved to `hpa_zoo.nn.metrics` (docs/ARCHITECTURE.md). This re-export stays for one release."""
import warnings

from hpa_zoo.nn.metrics import *  # noqa: F401,F403

warnings.warn("hpa_zoo.metrics is deprecated and will be removed in the next release; import hpa_zoo.nn.metrics instead",
              DeprecationWarning, stacklevel=2)
