"""`hpa_kaggle`: the Kaggle Human Protein Atlas Image Classification (2018/19) data, as RGBY examples.

Configs by image size: ``512`` (Kaggle's PNGs as they are), ``1024`` and ``1536`` (from the full-resolution
TIFFs when ``train_full_size/`` / ``test_full_size/`` exist, else upsampled from the PNGs, with a log line),
and ``128`` (for demos and tests). Resizing is cv2 INTER_LINEAR (teams.md §1.4). Each size stores the image as
RGB+Y JPEG (the default since 2.0.0) or, in the ``<size>_png`` config (``512_png``), as a lossless PNG
(`tfds_hpa._common`).
Splits: ``train`` (train.csv, labelled) and ``test`` (sample_submission.csv ids, no labels).
"""
from __future__ import annotations

import functools
from pathlib import Path

import tensorflow_datasets as tfds

from hpa_zoo.data.labels import read_labels_csv
from hpa_zoo.remote import is_dir, join
from tfds_hpa._common import HpaBuilderBase, log, make_configs, require_tree, rgby_example

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the competition data from
https://www.kaggle.com/c/human-protein-atlas-image-classification/data (accept the rules first), unzip it,
and lay it out like this (the manual-download folder):

    <manual_dir>/
      train.csv                 Id,Target   (Target: space-separated class ids 0..27)
      sample_submission.csv     Id,Predicted (the test ids)
      train/                    {Id}_red.png {Id}_green.png {Id}_blue.png {Id}_yellow.png  (512x512, 8-bit)
      test/                     the same for the test ids
      train_full_size/          optional: {Id}_{red,green,blue,yellow}.tif, full resolution (configs 1024, 1536)
      test_full_size/           optional: the same for the test ids

Then pass the folder in one of two ways:

    tfds build hpa_kaggle --imports tfds_hpa --manual_dir <manual_dir> [--config 512|1024|1536|128|512_png|...]
    builder = tfds.builder("hpa_kaggle/512")   # after `import tfds_hpa`
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="<manual_dir>"))

(or `hpa-zoo prepare --dataset hpa_kaggle --manual-dir <manual_dir>`). To leave out bad samples instead of
stopping at the first one, add `/on_error=skip` after the version: `tfds build hpa_kaggle/512:2.0.0/on_error=skip`.
For the full-resolution TIFFs (configs 1024/1536) build with Apache Beam, locally or on a cluster:
`hpa-zoo prepare ... --beam [--runner DataflowRunner|SparkRunner|FlinkRunner] [--beam-option NAME=VALUE]`
(docs/BEAM.md).
"""

CONFIGS = make_configs({
    512: "Kaggle's 512x512 PNGs at their size.",
    1024: "1024x1024, resized with cv2 INTER_LINEAR from the full-resolution TIFFs (else from the PNGs).",
    1536: "1536x1536, resized with cv2 INTER_LINEAR from the full-resolution TIFFs (else from the PNGs).",
    128: "128x128, resized with cv2 INTER_LINEAR from the PNGs (demos and tests).",
}, full_size_from=1024)


class Builder(HpaBuilderBase):
    """DatasetBuilder for the Kaggle HPA data (manual download). Keyword ``on_error="raise"|"skip"``."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = CONFIGS

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self.manual_root(dl_manager)
        require_tree(root, ["train.csv", "sample_submission.csv"], ["train", "test"],
                     MANUAL_DOWNLOAD_INSTRUCTIONS)
        splits = {"train": self._generate_examples(root, "train")}
        self.has_rows(join(root, "train.csv"), labelled=True)
        if self.has_rows(join(root, "sample_submission.csv"), labelled=False):
            splits["test"] = self._generate_examples(root, "test")
        else:
            log.warning("hpa_kaggle: %s has no rows: building the train split only (a labelled-only dataset; "
                        "predict needs a test split: list the test ids there)", join(root, "sample_submission.csv"))
        return splits

    def _generate_examples(self, root: Path | str, split: str):
        """One split's ``(id, example)`` generator, or a ``beam.PTransform`` with ``beam=True`` (`generate`);
        see `tfds_hpa._common.rgby_example` for the example."""
        folder, allow_16bit = self._image_folder(root, split)
        labelled = split == "train"
        csv = join(root, "train.csv" if labelled else "sample_submission.csv")

        def read_rows():
            df = read_labels_csv(csv, require_target=labelled, on_error=self.on_error, report=self.skip_report)
            return zip(df["Id"], df["labels"] if labelled else [()] * len(df))

        make = functools.partial(rgby_example, folder=folder, size=self.builder_config.image_size,
                                 layout="kaggle", allow_16bit=allow_16bit)
        return self.generate(split, read_rows, make)

    def _image_folder(self, root: Path | str, split: str) -> tuple[str, bool]:
        """The folder to read ``split`` from and whether it holds (possibly 16-bit) full-resolution TIFFs."""
        full = join(root, f"{split}_full_size")
        if self.builder_config.full_size:
            if is_dir(full):
                log.info("hpa_kaggle/%s %s: reading full-resolution images from %s",
                         self.builder_config.name, split, full)
                return full, True
            log.warning("hpa_kaggle/%s %s: %s not found, upsampling the 512x512 PNGs in %s instead",
                        self.builder_config.name, split, full, join(root, split))
        return join(root, split), False

