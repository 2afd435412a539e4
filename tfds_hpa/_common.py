"""What the `hpa_kaggle` and `hpa_v18` TFDS builders share: configs, features, manual-dir checks, skipping.

Each builder module only says where its files are; the example format, the image sizes, the bad-input policy
and the skip report live here once.

Bad-input policy (``on_error``, a builder keyword argument):
    ``"raise"`` (default): the first bad sample stops the build with an `HpaDataError` naming the file or CSV
    line and the fix. ``"skip"``: bad samples are left out, and the count and names are logged at the end of
    each split (`SkipReport.summary`), kept on ``builder.skip_report`` and written to the dataset's metadata
    (``builder.info.metadata["skipped"]``). Through ``tfds build`` pass it in the dataset name:
    ``tfds build hpa_kaggle/512:1.0.0/on_error=skip --imports tfds_hpa --manual_dir DIR``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from hpa_zoo.constants import CLASS_NAMES, NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.images import load_rgby
from hpa_zoo.labels import OnError, SkipReport, to_multi_hot

log = logging.getLogger("tfds_hpa")

#: Resizing everywhere in the builders (teams.md §1.4: Team 1 resized the TIFFs with cv2 INTER_LINEAR).
INTERPOLATION = cv2.INTER_LINEAR

HOMEPAGE = "https://www.kaggle.com/c/human-protein-atlas-image-classification"


@dataclasses.dataclass(eq=False)
class HpaConfig(tfds.core.BuilderConfig):
    """One image size of an HPA dataset.

    Attributes:
        image_size: side S of the stored (S, S, 4) uint8 RGBY images.
        full_size: read the full-resolution TIFF folders (``train_full_size/``, ``test_full_size/``) when they
            exist (Kaggle only; the 1024 and 1536 configs).
    """

    image_size: int = 512
    full_size: bool = False


def make_configs(descriptions: dict[int, str], *, full_size_from: int | None = None) -> list[HpaConfig]:
    """One `HpaConfig` per size, named by the size (``"512"``), in the order given (the first is the default).

    Args:
        descriptions: size -> one-line description.
        full_size_from: sizes >= this read full-resolution TIFFs when present (None: never).
    """
    return [HpaConfig(name=str(size), description=text, image_size=size,
                      full_size=full_size_from is not None and size >= full_size_from)
            for size, text in descriptions.items()]


def features(image_size: int) -> tfds.features.FeaturesDict:
    """The example features: id, (S, S, 4) uint8 RGBY PNG image, class-id sequence, (28,) uint8 multi-hot."""
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        # ecosystem.md §1.4: a 4-channel image must be PNG (JPEG allows 1 or 3 channels).
        "image": tfds.features.Image(shape=(image_size, image_size, 4), dtype=np.uint8, encoding_format="png"),
        "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=list(CLASS_NAMES))),
        "multi_hot": tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.uint8),
    })


def rgby_example(image_id: str, labels: Sequence[int], *, folder: Path, size: int,
                 layout: str = "kaggle", allow_16bit: bool = False) -> dict:
    """Read one field of view and make its example dict (a pure function of its arguments; Beam-friendly).

    Args:
        image_id: the sample id.
        labels: sorted class ids (empty for unlabelled test images).
        folder: the folder holding ``{image_id}_{red,green,blue,yellow}.*``.
        size: output side S; channels are resized with `INTERPOLATION` unless already S x S.
        layout: ``"kaggle"`` (grayscale files) or ``"hpav18"`` (false-coloured RGB JPEGs, stain plane taken).
        allow_16bit: accept 16-bit files (full-resolution TIFFs), scaled to 8 bits.
    Returns:
        ``{"id": str, "image": (S, S, 4) uint8 RGBY, "labels": list[int], "multi_hot": (28,) uint8}``.
    Raises:
        HpaDataError: a missing, unreadable or truncated channel file, or channels of different sizes.
    """
    image = load_rgby(folder, image_id, layout=layout, size=size, interpolation=INTERPOLATION,
                      allow_16bit=allow_16bit)
    return {"id": image_id, "image": image, "labels": list(labels), "multi_hot": to_multi_hot(labels)}


def check_on_error(on_error: str) -> OnError:
    """Validate the ``on_error`` builder argument (``"raise"`` or ``"skip"``)."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r}: use 'raise' (stop at the first bad sample) or 'skip' "
                          f"(leave bad samples out and report them)")
    return on_error  # type: ignore[return-value]


def require_tree(root: Path, files: Iterable[str], folders: Iterable[str], instructions: str) -> None:
    """Fail at once, with the expected tree, if a required file or folder is missing under ``root``.

    Raises:
        HpaDataError: naming every missing entry, followed by ``instructions``.
    """
    missing = [f for f in files if not (root / f).is_file()]
    missing += [f"{d}/" for d in folders if not (root / d).is_dir()]
    if missing:
        raise HpaDataError(f"{root}: missing {', '.join(missing)} in the manual-download folder.\n{instructions}")


class HpaBuilderBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common part of the HPA builders: configs by size, features, manual dir, bad-input policy.

    Subclasses set ``BUILDER_CONFIGS``, ``MANUAL_DOWNLOAD_INSTRUCTIONS`` and implement ``_split_generators``;
    they turn their rows into examples with `generate`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, on_error: str = "raise", **kwargs):
        """Args: on_error: ``"raise"`` or ``"skip"`` (see the module docstring); kwargs: tfds builder kwargs."""
        self.on_error = check_on_error(on_error)
        self.skip_report = SkipReport()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=features(self.builder_config.image_size),
            supervised_keys=("image", "multi_hot"),
            homepage=HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    def manual_root(self, dl_manager) -> Path:
        """The manual-download folder as a local path; a missing or empty one is an `HpaDataError`."""
        try:
            return Path(os.fspath(dl_manager.manual_dir))
        except AssertionError as exc:  # tfds: "Manual directory ... does not exist or is empty"
            raise HpaDataError(str(exc)) from exc

    def generate(self, split: str, read_rows: Callable[[], Iterable[tuple[str, Sequence[int]]]],
                 make_example: Callable[[str, Sequence[int]], dict]) -> Iterator[tuple[str, dict]]:
        """Yield ``(id, example)`` for each ``(id, labels)`` row; on bad input raise or skip per ``on_error``.

        Args:
            split: split name, used in the skip report.
            read_rows: reads the split's CSV (recording skipped rows in ``self.skip_report``) and returns
                ``(id, sorted class ids)`` pairs.
            make_example: ``(id, labels) -> example dict``; raises `HpaDataError` on bad input.

        In skip mode the split's skipped rows and samples are logged (`SkipReport.summary`) when the split is
        done and recorded in ``info.metadata["skipped"]`` as ``[what, reason]`` pairs.
        """
        before = len(self.skip_report)
        for image_id, labels in read_rows():
            try:
                example = make_example(image_id, labels)
            except HpaDataError as exc:
                if self.on_error == "raise":
                    raise
                self.skip_report.add(f"{split} {image_id}", str(exc))
                continue
            yield image_id, example
        self.finish_split(split, before)

    def finish_split(self, split: str, before: int = 0) -> None:
        """Log what ``split`` skipped (entries after index ``before``) and store the report in the metadata."""
        if self.on_error == "skip":
            part = SkipReport(self.skip_report.skipped[before:])
            log.log(logging.WARNING if len(part) else logging.INFO, "%s/%s %s: %s",
                    self.name, self.builder_config.name, split, part.summary())
            self.info.metadata["skipped"] = [list(entry) for entry in self.skip_report.skipped]
