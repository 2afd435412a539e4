"""Augmentation policies shipped with hpa-zoo as data (JSON files in this folder).

A policy file holds a list of sub-policies; each sub-policy is two operations ``{"op", "p", "magnitude"}``
from Team 3's AutoAugment search space (`hpa_zoo.augment.autoaugment.OPS`). Load one with
``hpa_zoo.augment.autoaugment.load_policy(name_or_path)``; this module only maps short names to the packaged files.

- ``team3``: `team3_best_policy.json`, the 25 sub-policies of pudae's final policy
  (`pudae:data/best_policy.data`, teams.md §3.5), exact floats from the source file.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

# name -> file in this package
POLICY_FILES: dict[str, str] = {
    "team3": "team3_best_policy.json",
}


def policy_path(name: str) -> Path:
    """Path of the packaged policy file called `name` (a key of `POLICY_FILES`).

    Raises:
        ConfigError: an unknown name (the message lists the known names and how to pass a file instead).
    """
    from hpa_zoo.errors import ConfigError

    if name not in POLICY_FILES:
        raise ConfigError(f"unknown packaged policy {name!r}; known: {sorted(POLICY_FILES)}, or pass the path of "
                          f"a policy JSON file (e.g. written by hpa-zoo autoaugment-search)")
    return Path(str(resources.files(__name__).joinpath(POLICY_FILES[name])))
