"""TFDS builders for the HPA data: `hpa_kaggle` (Kaggle competition) and `hpa_v18` (HPAv18 external data).

Importing this package registers both builders with TFDS (``tfds.builder("hpa_kaggle/512")``,
``tfds build hpa_kaggle --imports tfds_hpa``). `build` is the one-call Python entry used by ``hpa-zoo prepare``.
"""
from __future__ import annotations

import os
from typing import Sequence

import tensorflow_datasets as tfds

from hpa_zoo.checks import beam_pipeline_options as _pipeline_options
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.remote import is_dir, is_remote, local_form
from tfds_hpa._common import config_name
from tfds_hpa.hpa_kaggle import hpa_kaggle_dataset_builder
from tfds_hpa.hpa_v18 import hpa_v18_dataset_builder

BUILDERS = {"hpa_kaggle": hpa_kaggle_dataset_builder.Builder, "hpa_v18": hpa_v18_dataset_builder.Builder}


def build(name: str, *, manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
          config: str = "512", storage: str = "jpeg", on_error: str = "raise",
          beam_options: Sequence[str] | None = None, **builder_kwargs) -> tfds.core.DatasetBuilder:
    """Build (download_and_prepare) one HPA dataset from its manual-download folder and return the builder.

    Args:
        name: ``"hpa_kaggle"`` or ``"hpa_v18"``.
        manual_dir: the folder laid out as the builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS`` show: a local path or
            a URL (``gs://``, ``s3://``, ``memory://``, any fsspec or Beam file system: `hpa_zoo.remote`; the
            builders read the CSVs and images through it, on the Beam workers with ``beam_options``).
        data_dir: where TFDS writes the dataset (default ``~/tensorflow_datasets``): a local path or a URL that
            TFDS itself writes (``gs://`` through ``tf.io.gfile``; not fsspec's ``memory://``).
        config: image-size config name: ``"512"``, ``"1024"``, ``"1536"`` or ``"128"`` (or a full config name such
            as ``"512_png"``).
        storage: ``"jpeg"`` (default): the image as RGB+Y JPEG (`hpa_zoo.data.rgby_jpeg`; mean error ~1 grey
            level, smaller, faster for Team 1's training path); ``"png"``: the lossless ``<size>_png`` config.
        on_error: ``"raise"`` (stop at the first bad sample) or ``"skip"`` (leave bad samples out; see
            ``builder.skip_report``).
        beam_options: None: the plain (single-process) build. A list of Apache Beam pipeline flags: build with
            Beam (docs/BEAM.md), e.g. ``[]`` or ``["--runner=DirectRunner", "--direct_num_workers=2"]`` (local),
            ``["--runner=DataflowRunner", "--project=P", "--region=R", "--temp_location=gs://..."]``.
            Needs the ``beam`` extra (``pip install hpa-zoo[beam]``). The examples are the same either way.
        builder_kwargs: extra builder options, e.g. ``csv_name=`` / ``images_subdir=`` for ``hpa_v18``.
    Returns:
        The prepared builder: ``builder.as_dataset(split="train")`` yields dicts with ``id`` (string),
        ``image`` (S, S, 4) uint8 RGBY, ``labels`` (int64 class ids) and ``multi_hot`` (28,) uint8.
    Raises:
        ConfigError: unknown dataset or config name. HpaDataError: bad input (with ``on_error="raise"``), a
            labelled CSV without rows, or a split whose every row was skipped. A header-only
            ``sample_submission.csv`` builds the train split only (with a warning).
    """
    if name not in BUILDERS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    cls = BUILDERS[name]
    names = [c.name for c in cls.BUILDER_CONFIGS]
    config = config_name(config, storage)  # "512" + storage "png" -> "512_png"
    if config not in names:
        raise ConfigError(f"{name}: unknown config {config!r}; choose one of {names}")
    if data_dir is not None and is_remote(data_dir):
        from etils import epath

        try:
            epath.Path(os.fspath(data_dir))
        except KeyError as exc:  # epath's table of URI prefixes: gs://, s3://, ... (TFDS writes through it)
            raise ConfigError(f"data_dir={os.fspath(data_dir)!r}: TFDS writes datasets through etils.epath, which "
                              f"knows local paths, gs:// and s3:// but not this scheme; write to a local "
                              f"--data-dir (or gs://) and copy the result") from exc
    manual_dir = local_form(manual_dir)
    if not is_dir(manual_dir):
        raise HpaDataError(f"{manual_dir}: manual-download folder not found.\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    remote = is_remote(manual_dir)  # TFDS's download manager takes only paths epath knows: the builder reads it
    download_config = tfds.download.DownloadConfig(manual_dir=None if remote else manual_dir,
                                                   beam_options=_pipeline_options(beam_options))
    builder = cls(config=config, data_dir=None if data_dir is None else os.fspath(data_dir),
                  on_error=on_error, beam=beam_options is not None,
                  remote_manual_dir=manual_dir if remote else None, **builder_kwargs)
    try:
        builder.download_and_prepare(download_config=download_config)
    except AssertionError as exc:  # TFDS: 'Failed to finalize writing of split "x": No examples were yielded.'
        if "No examples were yielded" not in str(exc):
            raise
        raise HpaDataError(f"{name} in {manual_dir}: {exc} Every row of that split was left out "
                           f"({builder.skip_report.summary(5)}); fix or add the image files, or remove the rows "
                           f"from the CSV") from exc
    return builder
