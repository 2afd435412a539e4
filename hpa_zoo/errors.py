"""Exceptions that tell the user what was wrong and how to fix it."""
from __future__ import annotations


class HpaZooError(Exception):
    """Base class of every hpa-zoo error."""


class HpaDataError(HpaZooError, ValueError):
    """Bad input data: a missing/unreadable image, a malformed CSV row, inconsistent channels.

    The message always names the file (and row, for CSVs) and says how to fix it.
    """


class UnknownModelError(HpaZooError, KeyError):
    """A model name that is not in the registry; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsError(HpaZooError, ValueError):
    """Weights that cannot be used: wrong hash, wrong model, shape mismatch, offline and not cached."""


class ConfigError(HpaZooError, ValueError):
    """An impossible configuration (image size, batch size, precision, strategy ...)."""


class DiskWriteError(HpaZooError, OSError):
    """An output could not be written: the disk is full, read-only or not writable (ENOSPC, EDQUOT, EROFS, EACCES).

    The message names the file, the free space and what to free or change; nothing half-written was kept and
    earlier files are intact (`hpa_zoo.atomic`).
    """
