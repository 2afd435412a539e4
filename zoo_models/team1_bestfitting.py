"""Deprecated: `zoo_models.team1_bestfitting` moved to `zoo_models.teams.team1_bestfitting` (docs/ARCHITECTURE.md). This re-export stays for one release."""
import warnings

from zoo_models.teams.team1_bestfitting import *  # noqa: F401,F403

warnings.warn("zoo_models.team1_bestfitting is deprecated and will be removed in the next release; import zoo_models.teams.team1_bestfitting instead",
              DeprecationWarning, stacklevel=2)
