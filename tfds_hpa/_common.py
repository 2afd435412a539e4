"""What the `hpa_kaggle` and `hpa_v18` TFDS builders share: configs, features, manual-dir checks, skipping.

Each builder module only says where its files are; the example format, the image sizes, the storage, the
bad-input policy and the skip report live here once.

Storage (version 2.0.0): config ``"512"`` stores the image as an RGB JPEG + a Y JPEG (`RgbyJpeg`,
`hpa_zoo.data.rgby_jpeg`: smaller, and Team 1's training path decodes only its crop window; mean error ~1 grey
level), config ``"512_png"`` as one lossless 4-channel PNG (likewise for every size). Datasets of version 1.0.0
(PNG in every config) stay readable: ``tfds.builder("hpa_kaggle/512:1.0.0")``, and
`hpa_zoo.data.sources.tfds_dataset` falls back to them by itself.

Bad-input policy (``on_error``, a builder keyword argument):
    ``"raise"`` (default): the first bad sample stops the build with an `HpaDataError` naming the file or CSV
    line and the fix. ``"skip"``: bad samples are left out, and the count and names are logged at the end of
    each split (`SkipReport.summary`), kept on ``builder.skip_report`` and written to the dataset's metadata
    (``builder.info.metadata["skipped"]``). Through ``tfds build`` pass it in the dataset name:
    ``tfds build hpa_kaggle/512:2.0.0/on_error=skip --imports tfds_hpa --manual_dir DIR``.

Apache Beam (``beam=True``, a builder keyword argument; docs/BEAM.md): each split becomes a ``beam.PTransform``
(TFDS runs it with the ``DownloadConfig(beam_options=...)`` runner: DirectRunner, Dataflow, Spark, Flink). The
CSV is read and validated on the launching machine, the images are decoded on the workers by the same
`rgby_example` and the same skip rule (`example_or_skip`), so the examples equal the plain build's. Skips are
counted with Beam metrics (namespace `BEAM_METRICS_NAMESPACE`, counters ``<split>_examples`` /
``<split>_skipped``), and the skipped samples are collected into ``builder.skip_report`` and
``info.metadata["skipped"]`` in the same order as the plain build (CSV rows, then images in CSV order).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from hpa_zoo.constants import CLASS_NAMES, NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data import rgby_jpeg
from hpa_zoo.data.images import load_rgby
from hpa_zoo.data.labels import OnError, SkipReport, to_multi_hot
from hpa_zoo.remote import is_dir, is_file, is_remote, join, open_file

log = logging.getLogger("tfds_hpa")

#: Resizing everywhere in the builders (teams.md §1.4: Team 1 resized the TIFFs with cv2 INTER_LINEAR).
INTERPOLATION = cv2.INTER_LINEAR

HOMEPAGE = "https://www.kaggle.com/c/human-protein-atlas-image-classification"

#: Namespace of the Beam counters ``<split>_examples`` and ``<split>_skipped``.
BEAM_METRICS_NAMESPACE = "tfds_hpa"
_SKIPPED = "skipped"  # tag of the Beam side output carrying skipped samples


@dataclasses.dataclass(eq=False)
class HpaConfig(tfds.core.BuilderConfig):
    """One image size of an HPA dataset.

    Attributes:
        image_size: side S of the stored (S, S, 4) uint8 RGBY images.
        full_size: read the full-resolution TIFF folders (``train_full_size/``, ``test_full_size/``) when they
            exist (Kaggle only; the 1024 and 1536 configs).
        storage: ``"jpeg"`` (`RgbyJpeg`, the default) or ``"png"`` (lossless; the ``<size>_png`` configs). Builder
            version 1.0.0 stored PNG whatever this says.
    """

    image_size: int = 512
    full_size: bool = False
    storage: str = "jpeg"


#: How a config stores the image: ``"jpeg"`` (default since 2.0.0; `RgbyJpeg`) or ``"png"`` (lossless 4-channel PNG).
STORAGES = ("jpeg", "png")
#: Suffix of the lossless configs' names: ``"512" + PNG_SUFFIX`` is ``"512_png"``.
PNG_SUFFIX = "_png"


def config_name(size: int | str, storage: str = "jpeg") -> str:
    """The config name of a size and storage: ``config_name(512)`` is ``"512"``, with ``"png"`` ``"512_png"``; a
    name that already ends in ``_png`` is returned as it is.

    Raises:
        ConfigError: an unknown storage.
    """
    if storage not in STORAGES:
        raise ConfigError(f"storage={storage!r}: use 'jpeg' (RGB+Y JPEG, the default: smaller, faster to decode, "
                          f"mean error ~1 grey level) or 'png' (lossless)")
    size = str(size)
    return size if size.endswith(PNG_SUFFIX) or storage == "jpeg" else size + PNG_SUFFIX


def make_configs(descriptions: dict[int, str], *, full_size_from: int | None = None) -> list[HpaConfig]:
    """Two `HpaConfig` per size: ``"512"`` (RGB+Y JPEG storage) and ``"512_png"`` (4-channel PNG), the JPEG
    configs first, sizes in the order given (the first is the default).

    Args:
        descriptions: size -> one-line description.
        full_size_from: sizes >= this read full-resolution TIFFs when present (None: never).
    """
    how = {"jpeg": " Stored as an RGB JPEG + a Y JPEG (quality 95, 4:4:4; mean error ~1 grey level).",
           "png": " Stored as one lossless 4-channel PNG."}
    return [HpaConfig(name=config_name(size, storage), description=text + how[storage], image_size=size,
                      full_size=full_size_from is not None and size >= full_size_from, storage=storage)
            for storage in STORAGES for size, text in descriptions.items()]


class RgbyJpeg(tfds.features.FeatureConnector):
    """An (S, S, 4) uint8 RGBY image stored as ``[RGB JPEG, Y JPEG]`` (`hpa_zoo.data.rgby_jpeg`).

    Encodes a NumPy (S, S, 4) uint8 image (`hpa_zoo.data.rgby_jpeg.encode_rgby_jpeg`); decodes to the same
    (S, S, 4) uint8 tensor as ``tfds.features.Image`` does, so readers see ``image`` either way. Read with
    ``decoders={"image": tfds.decode.SkipDecoding()}`` it yields the stored (2,) tf.string pair, which
    `hpa_zoo.data.rgby_jpeg.decode_rgby_jpeg` decodes (whole or a crop window). The dataset's features.json names
    this class, so reading it (also with ``tfds.builder_from_directory``) needs hpa-zoo installed.
    """

    storage = rgby_jpeg.STORAGE

    def __init__(self, shape: Sequence[int], quality: int = rgby_jpeg.JPEG_QUALITY, *, doc=None):
        """Args: shape: (S, S, 4); quality: JPEG quality of both files; doc: TFDS feature documentation."""
        super().__init__(doc=doc)
        self._shape = tuple(int(d) for d in shape)
        if len(self._shape) != 3 or self._shape[-1] != 4:
            raise ConfigError(f"RgbyJpeg: shape {self._shape}; it must be (S, S, 4)")
        self._quality = int(quality)

    def get_tensor_info(self) -> tfds.features.TensorInfo:
        return tfds.features.TensorInfo(shape=self._shape, dtype=np.uint8)

    def get_serialized_info(self) -> tfds.features.TensorInfo:
        return tfds.features.TensorInfo(shape=(2,), dtype=np.object_)

    def encode_example(self, example_data) -> list[bytes]:
        image = np.asarray(example_data)
        if image.shape != self._shape:
            raise HpaDataError(f"RgbyJpeg: an image of shape {image.shape} for a feature of shape {self._shape}")
        return rgby_jpeg.encode_rgby_jpeg(image, self._quality)

    def decode_example(self, tfexample_data):
        return tf.ensure_shape(rgby_jpeg.decode_rgby_jpeg(tfexample_data), self._shape)

    @classmethod
    def from_json_content(cls, value, doc=None) -> "RgbyJpeg":
        return cls(shape=value["shape"], quality=value["quality"], doc=doc)

    def to_json_content(self) -> dict:
        return {"shape": list(self._shape), "quality": self._quality}


def features(image_size: int, storage: str = "jpeg") -> tfds.features.FeaturesDict:
    """The example features: id, (S, S, 4) uint8 RGBY image, class-id sequence, (28,) uint8 multi-hot.

    Args:
        image_size: S.
        storage: ``"jpeg"``: the image as `RgbyJpeg` (builder version 2.0.0 on); ``"png"``: one 4-channel PNG
            (the ``*_png`` configs, and every config of version 1.0.0).
    """
    if storage == "png":
        # ecosystem.md §1.4: a 4-channel image must be PNG (JPEG allows 1 or 3 channels).
        image = tfds.features.Image(shape=(image_size, image_size, 4), dtype=np.uint8, encoding_format="png")
    else:
        image = RgbyJpeg(shape=(image_size, image_size, 4))
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "image": image,
        "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=list(CLASS_NAMES))),
        "multi_hot": tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.uint8),
    })


def rgby_example(image_id: str, labels: Sequence[int], *, folder: Path | str, size: int,
                 layout: str = "kaggle", allow_16bit: bool = False) -> dict:
    """Read one field of view and make its example dict (a pure function of its arguments; Beam-friendly).

    Args:
        image_id: the sample id.
        labels: sorted class ids (empty for unlabelled test images).
        folder: the folder holding ``{image_id}_{red,green,blue,yellow}.*`` (local, or a URL: `hpa_zoo.remote`).
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


def example_or_skip(image_id: str, labels: Sequence[int], make_example: Callable[[str, Sequence[int]], dict],
                    on_error: OnError) -> tuple[dict | None, str | None]:
    """The one bad-input rule of both build paths (plain and Beam): make the example, or say why not.

    Args:
        image_id, labels: one CSV row (labels: sorted class ids).
        make_example: ``(id, labels) -> example dict`` (e.g. a `functools.partial` of `rgby_example`); raises
            `HpaDataError` on bad input.
        on_error: ``"raise"``: the `HpaDataError` propagates; ``"skip"``: it becomes the returned reason.
    Returns:
        ``(example, None)`` or, in skip mode, ``(None, reason)`` where reason is the error message (names the file).
    """
    try:
        return make_example(image_id, labels), None
    except HpaDataError as exc:
        if on_error == "raise":
            raise
        return None, str(exc)


def _beam_example(row: tuple[int, str, tuple[int, ...]], *, make_example, split: str, on_error: OnError):
    """Beam FlatMap body: ``(row index, id, labels)`` -> ``(id, example)``, or a tagged ``(index, what, reason)``."""
    from apache_beam import metrics, pvalue

    index, image_id, labels = row
    example, reason = example_or_skip(image_id, labels, make_example, on_error)
    if reason is None:
        metrics.Metrics.counter(BEAM_METRICS_NAMESPACE, f"{split}_examples").inc()
        yield image_id, example
    else:
        metrics.Metrics.counter(BEAM_METRICS_NAMESPACE, f"{split}_skipped").inc()
        yield pvalue.TaggedOutput(_SKIPPED, (index, f"{split} {image_id}", reason))


def _write_skipped(entries: list, path: str) -> None:
    """Beam sink of one split's skipped samples: ``[[what, reason], ...]`` in CSV row order, as JSON."""
    from etils import epath

    epath.Path(path).write_text(json.dumps([[what, why] for _, what, why in sorted(entries)]))


def beam_examples(rows: Sequence[tuple[str, Sequence[int]]], make_example: Callable[[str, Sequence[int]], dict], *,
                  split: str, on_error: OnError, skipped_path: str):
    """One split as a ``beam.PTransform``: ``pipeline -> PCollection of (id, example)`` (TFDS writes it).

    Args:
        rows: the split's validated ``(id, sorted class ids)`` rows (read on the launching machine).
        make_example: picklable ``(id, labels) -> example dict``, run on the workers.
        split: split name (counter names, skip report).
        on_error: as `example_or_skip`.
        skipped_path: file (local or ``gs://``; readable back by the launching machine) that receives the skipped
            samples as JSON ``[[what, reason], ...]``.
    Returns:
        A ``beam.PTransform``; the work is spread over workers with ``beam.Reshuffle`` after ``beam.Create``.
    """
    beam = tfds.core.lazy_imports.apache_beam
    rows = [(index, str(image_id), tuple(int(c) for c in labels)) for index, (image_id, labels) in enumerate(rows)]

    @beam.ptransform_fn
    def expand(pipeline):
        out = (pipeline
               | "Rows" >> beam.Create(rows)
               | "Spread" >> beam.Reshuffle()
               | "Decode" >> beam.FlatMap(_beam_example, make_example=make_example, split=split, on_error=on_error)
               .with_outputs(_SKIPPED, main="examples"))
        _ = (out[_SKIPPED]
             | "CollectSkipped" >> beam.combiners.ToList()
             | "WriteSkipped" >> beam.Map(_write_skipped, path=skipped_path))
        return out.examples

    return expand()  # pylint: disable=no-value-for-parameter


def check_on_error(on_error: str) -> OnError:
    """Validate the ``on_error`` builder argument (``"raise"`` or ``"skip"``)."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r}: use 'raise' (stop at the first bad sample) or 'skip' "
                          f"(leave bad samples out and report them)")
    return on_error  # type: ignore[return-value]


def require_tree(root: Path | str, files: Iterable[str], folders: Iterable[str], instructions: str) -> None:
    """Fail at once, with the expected tree, if a required file or folder is missing under ``root`` (a local
    folder or a URL).

    Raises:
        HpaDataError: naming every missing entry, followed by ``instructions``.
    """
    missing = [f for f in files if not is_file(join(root, f))]
    missing += [f"{d}/" for d in folders if not is_dir(join(root, d))]
    if missing:
        raise HpaDataError(f"{root}: missing {', '.join(missing)} in the manual-download folder.\n{instructions}")


class HpaBuilderBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common part of the HPA builders: configs by size, features, manual dir, bad-input policy.

    Subclasses set ``BUILDER_CONFIGS``, ``MANUAL_DOWNLOAD_INSTRUCTIONS`` and implement ``_split_generators``;
    they turn their rows into examples with `generate`.
    """

    VERSION = tfds.core.Version("2.0.0")
    #: 1.0.0 datasets on disk stay readable (`features` gives them their PNG features back).
    SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]
    RELEASE_NOTES = {
        "1.0.0": "Initial release: the image as one 4-channel PNG.",
        "2.0.0": "The image is stored as an RGB JPEG + a Y JPEG (quality 95, no chroma subsampling; "
                 "hpa_zoo.data.rgby_jpeg): 1.6x (512) to 2.6x (1536) smaller than the PNG, and Team 1's 1536 -> 1024 "
                 "training path decodes only its crop window; mean pixel error ~1 grey level (max 29 on the real "
                 "fields). The lossless PNG stays available as the '<size>_png' configs (e.g. hpa_kaggle/512_png); "
                 "1.0.0 datasets remain readable.",
    }

    def __init__(self, *, on_error: str = "raise", beam: bool = False, remote_manual_dir: str | None = None,
                 **kwargs):
        """Args: on_error: ``"raise"`` or ``"skip"``; beam: generate the splits with Apache Beam (see the module
        docstring; pass the runner with ``DownloadConfig(beam_options=...)``); remote_manual_dir: the
        manual-download folder as a URL that TFDS's own download manager cannot take (``memory://``; any fsspec
        or Beam URL, `hpa_zoo.remote`), used instead of ``DownloadConfig.manual_dir``; kwargs: tfds builder
        kwargs."""
        if remote_manual_dir is not None and not is_remote(remote_manual_dir):
            raise ConfigError(f"remote_manual_dir={remote_manual_dir!r} is a local path; pass it as "
                              f"DownloadConfig(manual_dir=...)")
        self.remote_manual_dir = remote_manual_dir
        self.on_error = check_on_error(on_error)
        if not isinstance(beam, bool):
            raise ConfigError(f"beam={beam!r}: use True (generate with Apache Beam) or False")
        self.beam = beam
        self.skip_report = SkipReport()
        self._beam_splits: list[tuple[str, list[tuple[str, str]], str]] = []
        #: after a Beam build: the `BEAM_METRICS_NAMESPACE` counters, e.g. ``{"train_examples": 3, ...}``
        self.beam_counters: dict[str, int] = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        storage = "png" if self.version < "2.0.0" else self.builder_config.storage  # 1.0.0: PNG only
        return self.dataset_info_from_configs(
            features=features(self.builder_config.image_size, storage),
            supervised_keys=("image", "multi_hot"),
            homepage=HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    def manual_root(self, dl_manager) -> Path | str:
        """The manual-download folder: a local ``Path``, or a URL string (``remote_manual_dir``, or a ``gs://``
        ``--manual_dir`` given to ``tfds build``) read through `hpa_zoo.remote`; a missing or empty one is an
        `HpaDataError`."""
        if self.remote_manual_dir is not None:
            if not is_dir(self.remote_manual_dir):
                raise HpaDataError(f"{self.remote_manual_dir}: manual-download folder not found or empty.\n"
                                   f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            return self.remote_manual_dir.rstrip("/")
        try:
            root = os.fspath(dl_manager.manual_dir)
        except AssertionError as exc:  # tfds: "Manual directory ... does not exist or is empty"
            raise HpaDataError(str(exc)) from exc
        return root if is_remote(root) else Path(root)

    @staticmethod
    def has_rows(csv: Path | str, *, labelled: bool) -> bool:
        """Whether `csv` has at least one data row (a header-only ``sample_submission.csv`` has none).

        Raises:
            HpaDataError: a labelled CSV (``train.csv``, an HPAv18 list) without rows: nothing to build.
        """
        with open_file(csv, "r", encoding="utf-8-sig") as f:
            rows = sum(1 for line in itertools.islice(f, 1, 3) if line.strip())
        if not rows and labelled:
            raise HpaDataError(f"{csv}: has a header but no rows; a TFDS build needs at least one labelled image "
                               f"(Id,Target per line)")
        return rows > 0

    def generate(self, split: str, read_rows: Callable[[], Iterable[tuple[str, Sequence[int]]]],
                 make_example: Callable[[str, Sequence[int]], dict]):
        """One split's examples, ``(id, example)`` per ``(id, labels)`` row; bad input raises or is skipped.

        Args:
            split: split name, used in the skip report.
            read_rows: reads the split's CSV (recording skipped rows in ``self.skip_report``) and returns
                ``(id, sorted class ids)`` pairs.
            make_example: ``(id, labels) -> example dict``; raises `HpaDataError` on bad input. Must be picklable
                for Beam (a `functools.partial` of a module-level function).
        Returns:
            A generator (plain build) or, with ``beam=True``, a ``beam.PTransform`` (`beam_examples`).

        In skip mode the split's skipped rows and samples are logged (`SkipReport.summary`) when the split is
        done and recorded in ``info.metadata["skipped"]`` as ``[what, reason]`` pairs.
        """
        if not self.beam:
            return self._iter_examples(split, read_rows, make_example)
        before = len(self.skip_report)
        rows = list(read_rows())  # CSV problems raise (or are recorded) here, on the launching machine
        csv_skips = self.skip_report.skipped[before:]
        del self.skip_report.skipped[before:]  # re-inserted before the split's image skips, as in the plain build
        skipped_path = os.fspath(self.data_path / f"{split}.skipped.json")
        self._beam_splits.append((split, csv_skips, skipped_path))
        return beam_examples(rows, make_example, split=split, on_error=self.on_error, skipped_path=skipped_path)

    def _iter_examples(self, split, read_rows, make_example) -> Iterator[tuple[str, dict]]:
        before = len(self.skip_report)
        for image_id, labels in read_rows():
            example, reason = example_or_skip(image_id, labels, make_example, self.on_error)
            if reason is not None:
                self.skip_report.add(f"{split} {image_id}", reason)
                continue
            yield image_id, example
        self.finish_split(split, before)

    def _process_pipeline_result(self, pipeline_result) -> None:
        """After a Beam build: log the counters and collect each split's skipped samples into the report."""
        counters = {r.key.metric.name: r.committed for r in pipeline_result.metrics().query(
            tfds.core.lazy_imports.apache_beam.metrics.MetricsFilter().with_namespace(BEAM_METRICS_NAMESPACE)
        )["counters"]}
        self.beam_counters = dict(sorted(counters.items()))
        if counters:
            log.info("%s/%s Beam counters: %s", self.name, self.builder_config.name,
                     ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
        from etils import epath

        for split, csv_skips, skipped_path in self._beam_splits:
            path = epath.Path(skipped_path)
            images = [tuple(e) for e in json.loads(path.read_text())] if path.exists() else []
            path.unlink(missing_ok=True)  # it is in the metadata now; keep the dataset folder TFDS-only
            before = len(self.skip_report)
            self.skip_report.skipped.extend(csv_skips + images)
            self.finish_split(split, before)
        self._beam_splits.clear()

    def finish_split(self, split: str, before: int = 0) -> None:
        """Log what ``split`` skipped (entries after index ``before``) and store the report in the metadata."""
        if self.on_error == "skip":
            part = SkipReport(self.skip_report.skipped[before:])
            log.log(logging.WARNING if len(part) else logging.INFO, "%s/%s %s: %s",
                    self.name, self.builder_config.name, split, part.summary())
            self.info.metadata["skipped"] = [list(entry) for entry in self.skip_report.skipped]
