"""Tests of the `hpa_v18` builder: the TFDS test case over dummy_data/, and how the label CSV is found."""
from __future__ import annotations

import pytest
import tensorflow_datasets as tfds

from hpa_zoo.errors import HpaDataError
from tfds_hpa.hpa_v18 import hpa_v18_dataset_builder
from tfds_hpa.hpa_v18.hpa_v18_dataset_builder import DEFAULT_CSV, find_csv


class HpaV18Test(tfds.testing.DatasetBuilderTestCase):
    """dummy_data/: HPAv18RBGY_wodpl.csv with 3 ids and images/ of false-coloured 32x32 JPEGs, config 128."""

    DATASET_CLASS = hpa_v18_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["128"]
    SPLITS = {"train": 3}
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False  # images are read with OpenCV from local files


def test_find_csv_prefers_default_name_then_the_only_csv(tmp_path):
    (tmp_path / "mine.csv").write_text("Id,Target\n")
    assert find_csv(tmp_path) == tmp_path / "mine.csv"
    (tmp_path / DEFAULT_CSV).write_text("Id,Target\n")
    assert find_csv(tmp_path) == tmp_path / DEFAULT_CSV
    assert find_csv(tmp_path, "mine.csv") == tmp_path / "mine.csv"


def test_find_csv_refuses_to_guess_between_several(tmp_path):
    (tmp_path / "a.csv").write_text("Id,Target\n")
    (tmp_path / "b.csv").write_text("Id,Target\n")
    with pytest.raises(HpaDataError, match=r"several CSV files \(a.csv, b.csv\).*csv_name"):
        find_csv(tmp_path)
    with pytest.raises(HpaDataError, match="missing c.csv"):
        find_csv(tmp_path, "c.csv")


if __name__ == "__main__":
    tfds.testing.test_main()
