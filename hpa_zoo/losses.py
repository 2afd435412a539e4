"""Deprecated: `hpa_zoo.losses` moved to `hpa_zoo.nn.losses` (docs/ARCHITECTURE.md). This re-export stays for one release."""
import warnings

from hpa_zoo.nn.losses import *  # noqa: F401,F403

warnings.warn("hpa_zoo.losses is deprecated and will be removed in the next release; import hpa_zoo.nn.losses instead",
              DeprecationWarning, stacklevel=2)
