"""`hpa_v18`: the HPAv18 external data (Human Protein Atlas v18 website images) used by the top Kaggle teams.

An ``Id,Target`` CSV (e.g. ``HPAv18RBGY_wodpl.csv``, teams.md §0.3) plus ``{Id}_{color}.jpg`` files. The
website JPEGs are false-coloured RGB; each stain is read from its plane (red: R, green: G, blue: B,
yellow: R, `hpa_zoo.data.images.HPAV18_PLANE`, Team 1's COLOR_INDEXS) and resized with cv2 INTER_LINEAR to the
config size. Grayscale ``{Id}_{color}.png`` files (already extracted planes) are read as they are.
Split: ``train``. Each size stores the image as RGB+Y JPEG (the default since 2.0.0) or, in the ``<size>_png``
config (``512_png``), as a lossless PNG (`tfds_hpa._common`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import tensorflow_datasets as tfds

from hpa_zoo.errors import HpaDataError
from hpa_zoo.data.labels import read_labels_csv
from hpa_zoo.remote import is_dir, is_file, is_remote, join, list_folder
from tfds_hpa._common import HpaBuilderBase, make_configs, require_tree, rgby_example

#: The CSV looked for first when no ``csv_name`` is given (teams.md §0.3).
DEFAULT_CSV = "HPAv18RBGY_wodpl.csv"

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the HPAv18 images listed in HPAv18RBGY_wodpl.csv (74,606 ids `{antibody}_{plate}_{well}_{field}`)
from http://v18.proteinatlas.org/images/{antibody}/{plate}_{well}_{field}_{color}.jpg, and lay them out
like this (the manual-download folder):

    <manual_dir>/
      HPAv18RBGY_wodpl.csv      Id,Target (space-separated class ids 0..27); any name works if it is the
                                only *.csv here, or pass csv_name=<file>
      images/                   {Id}_red.jpg {Id}_green.jpg {Id}_blue.jpg {Id}_yellow.jpg
                                (if there is no images/ folder, the files are looked for next to the CSV;
                                another folder: images_subdir=<folder>)

Then pass the folder in one of two ways:

    tfds build hpa_v18 --imports tfds_hpa --manual_dir <manual_dir> [--config 512|1024|1536|128|512_png|...]
    builder = tfds.builder("hpa_v18/512", csv_name=None)   # after `import tfds_hpa`
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="<manual_dir>"))

(or `hpa-zoo prepare --dataset hpa_v18 --manual-dir <manual_dir>`). Options go after the version with
`tfds build`: `tfds build hpa_v18/512:2.0.0/on_error=skip,csv_name=my_labels.csv`. For all 74,606 fields of
view build with Apache Beam, locally or on a cluster: `hpa-zoo prepare ... --beam [--runner DataflowRunner]
[--beam-option NAME=VALUE]` (docs/BEAM.md).
"""

CONFIGS = make_configs({
    512: "512x512, each stain's JPEG plane resized with cv2 INTER_LINEAR.",
    1024: "1024x1024, each stain's JPEG plane resized with cv2 INTER_LINEAR.",
    1536: "1536x1536, each stain's JPEG plane resized with cv2 INTER_LINEAR.",
    128: "128x128 (demos and tests).",
})


class Builder(HpaBuilderBase):
    """DatasetBuilder for HPAv18. Keywords: ``on_error="raise"|"skip"``, ``csv_name``, ``images_subdir``."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = CONFIGS

    def __init__(self, *, csv_name: str | None = None, images_subdir: str | None = None, **kwargs):
        """Args: csv_name: the label CSV's file name in the manual dir (default: see `find_csv`);
        images_subdir: the images folder relative to the manual dir (default ``images/`` if present, else the
        manual dir itself); kwargs: `HpaBuilderBase` / tfds builder arguments."""
        self.csv_name = csv_name
        self.images_subdir = images_subdir
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self.manual_root(dl_manager)
        csv = find_csv(root, self.csv_name)
        if self.images_subdir is not None:
            require_tree(root, [], [self.images_subdir], MANUAL_DOWNLOAD_INSTRUCTIONS)
            images = join(root, self.images_subdir)
        else:
            images = join(root, "images") if is_dir(join(root, "images")) else root
        self.has_rows(csv, labelled=True)
        return {"train": self._generate_examples(csv, images)}

    def _generate_examples(self, csv: Path | str, images: Path | str):
        """The ``(id, example)`` generator, or a ``beam.PTransform`` with ``beam=True`` (`generate`);
        see `tfds_hpa._common.rgby_example` for the example."""
        def read_rows():
            df = read_labels_csv(csv, on_error=self.on_error, report=self.skip_report)
            return zip(df["Id"], df["labels"])

        make = functools.partial(rgby_example, folder=images, size=self.builder_config.image_size, layout="hpav18")
        return self.generate("train", read_rows, make)


def find_csv(root: Path | str, csv_name: str | None = None) -> Path | str:
    """The label CSV: ``csv_name`` if given, else `DEFAULT_CSV` if present, else the only ``*.csv`` in ``root``
    (a local folder or a URL, `hpa_zoo.remote`).

    Raises:
        HpaDataError: the named file is missing, or no / several CSVs and none is `DEFAULT_CSV`.
    """
    def at(name: str) -> Path | str:  # a Path for a local folder, a URL string for a remote one
        return join(root, name) if is_remote(root) else Path(root) / name

    if csv_name is not None:
        require_tree(root, [csv_name], [], MANUAL_DOWNLOAD_INSTRUCTIONS)
        return at(csv_name)
    if is_file(at(DEFAULT_CSV)):
        return at(DEFAULT_CSV)
    found = [name for name in list_folder(root) if name.endswith(".csv")]
    if len(found) == 1:
        return at(found[0])
    what = f"several CSV files ({', '.join(found)})" if found else "no CSV file"
    raise HpaDataError(f"{root}: {what} and no {DEFAULT_CSV}; keep exactly one label CSV there or name it "
                       f"with csv_name=<file> (hpa-zoo prepare --csv-name).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
