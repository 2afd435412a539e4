"""The one registry table of hpa-zoo: model name -> how to build it, its data, recipe, weights and scores.

A model name is a stable string and the public API (``hpa_zoo.load("team1_densenet121_1024")``). Each row
(`ModelSpec`) states:

* ``builder``: ``"module:function"`` of a function ``f(num_classes, input_shape, weights, **kw) -> keras.Model``;
* ``input_size`` / ``channels``: what the team fed the network;
* ``recipe``: ``"module"`` of the team recipe (loss, schedule, augmentation, TTA, thresholds);
* ``first_conv`` / ``classifier`` / ``feature_layer``: layer names used by backbone surgery, head replacement
  and embeddings (timm's pretrained-config idea);
* ``weights``: the available weights (`WeightsSpec`, URL + sha256);
* ``reported``: the team's own reported HPA scores, with their source. These are *theirs*, never ours.

Rows are added in ``ROWS`` at the bottom of this file only.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from hpa_zoo.errors import UnknownModelError


@dataclass(frozen=True)
class WeightsSpec:
    """One downloadable weights file of a model.

    Attributes:
        name: the ``weights=`` value that selects it (``"hpa"``, ``"imagenet"``...).
        urls: mirrors, tried in order.
        sha256: hex digest of the file; downloads are verified against it.
        format: ``"onnx"``, ``"keras_weights_h5"``, ``"torch"``...
        filename: cache file name.
        trained_on: the data the weights were trained on, in words.
        license: licence of the weights.
        citation: who to cite.
        notes: anything a user must know (fold, resolution, which outputs...).
    """

    name: str
    urls: tuple[str, ...]
    sha256: str
    format: str
    filename: str
    trained_on: str = ""
    license: str = ""
    citation: str = ""
    notes: str = ""


@dataclass(frozen=True)
class ReportedScore:
    """A score the team reported on the HPA Kaggle leaderboard (theirs, not measured by hpa-zoo)."""

    metric: str  # e.g. "private LB macro F1"
    value: float
    source: str  # file/post the number comes from


@dataclass(frozen=True)
class ModelSpec:
    """One row of the registry table (see the module docstring)."""

    name: str
    team: str
    builder: str
    input_size: int
    channels: str = "RGBY"
    recipe: str | None = None
    first_conv: str | None = None
    classifier: str | None = None
    feature_layer: str | None = None
    weights: tuple[WeightsSpec, ...] = ()
    reported: tuple[ReportedScore, ...] = ()
    description: str = ""
    citation: str = ""
    builder_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def weights_spec(self, name: str) -> WeightsSpec | None:
        for w in self.weights:
            if w.name == name:
                return w
        return None

    def build_fn(self) -> Callable[..., Any]:
        """Import and return the builder function."""
        module, _, attr = self.builder.partition(":")
        return getattr(importlib.import_module(module), attr)


ROWS: list[ModelSpec] = []
_TABLE: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a row to the table (used only by this module's ``ROWS`` and by tests)."""
    if spec.name in _TABLE and _TABLE[spec.name] is not spec:
        raise ValueError(f"model name {spec.name!r} is registered twice")
    _TABLE[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a row (for tests)."""
    _TABLE.pop(name, None)


def list_models(team: str | None = None) -> list[str]:
    """Registered model names, sorted; optionally only one team's (``team="team1"``)."""
    _ensure_rows()
    names = sorted(_TABLE)
    if team is not None:
        names = [n for n in names if _TABLE[n].team == team]
    return names


def get_spec(name: str) -> ModelSpec:
    """The registry row of ``name``.

    Raises:
        UnknownModelError: the name is not registered; the message lists the closest names.
    """
    _ensure_rows()
    if name in _TABLE:
        return _TABLE[name]
    close = difflib.get_close_matches(name, list(_TABLE), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model name {name!r}.{hint} `hpa_zoo.list_models()` or "
                            f"`hpa-zoo models` lists all {len(_TABLE)} names.")


def _ensure_rows() -> None:
    if ROWS and not all(r.name in _TABLE for r in ROWS):
        for row in ROWS:
            register(row)


# --------------------------------------------------------------------------------------------------------------
# The table. Team issues append rows here (one block per team, facts cited from shared/research/teams.md).
# --------------------------------------------------------------------------------------------------------------
