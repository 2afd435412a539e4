"""Deprecated: `hpa_zoo.pipeline` was split into `hpa_zoo.data.image_ops` (per-image ops), `hpa_zoo.data.sources`
(folders, TFDS) and `hpa_zoo.data.pipeline` (batching); docs/ARCHITECTURE.md. This re-export stays for one release."""
import warnings

from hpa_zoo.data.image_ops import *  # noqa: F401,F403
from hpa_zoo.data.pipeline import *  # noqa: F401,F403
from hpa_zoo.data.sources import *  # noqa: F401,F403

warnings.warn("hpa_zoo.pipeline is deprecated and will be removed in the next release; import "
              "hpa_zoo.data.image_ops, hpa_zoo.data.sources or hpa_zoo.data.pipeline instead",
              DeprecationWarning, stacklevel=2)
