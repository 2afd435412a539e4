"""Ground-truth pattern masks of the synthetic generator (``hpa-zoo synth --masks``): off by default and then the
files are byte-identical; the masks mark where the written green pixels of the class are (checked on the PNGs)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from hpa_zoo.data import synthetic
from hpa_zoo.cli import main
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import HpaDataError
from hpa_zoo.data.labels import read_labels_csv


def _tree(root, skip="masks/"):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)}


def test_masks_leave_the_dataset_byte_identical_and_match_the_labels(tmp_path):
    plain = synthetic.write_synthetic_dataset(tmp_path / "a", n_train=4, n_test=2, size=64, seed=3, workers=0,
                                              progress=False, preset="demo")
    rc = main(["synth", str(tmp_path / "b"), "--n-train", "4", "--n-test", "2", "--size", "64", "--seed", "3",
               "--workers", "0", "--preset", "demo", "--masks"])
    assert rc == 0
    assert _tree(plain) == _tree(tmp_path / "b")
    assert not (plain / "masks").exists()
    for split, csv in (("train", "train.csv"), ("test", "test_labels.csv")):
        table = read_labels_csv(tmp_path / "b" / csv)
        for image_id, labels in zip(table["Id"], table["labels"]):
            masks = synthetic.load_masks(tmp_path / "b" / "masks" / split / f"{image_id}.npz")
            assert sorted(masks) == sorted(labels)
            assert all(m.shape == (64, 64) and m.dtype == bool for m in masks.values())


@pytest.mark.parametrize("name", ["Nucleoli", "Mitochondria", "Plasma membrane", "Golgi apparatus", "Cytosol"])
def test_a_mask_marks_where_the_written_green_signal_of_its_class_is(name):
    c = CLASS_NAMES.index(name)
    inside, outside = [], []
    for k in range(4):
        image, masks = synthetic.synthesize_field([c], size=96, rng=np.random.default_rng(k), preset="demo",
                                                  return_masks=True)
        again = synthetic.synthesize_field([c], size=96, rng=np.random.default_rng(k), preset="demo")
        np.testing.assert_array_equal(image, again)   # the mask costs no draw of the image's generator
        mask = masks[c]
        assert 0 < mask.mean() < 0.9
        green = cv2.GaussianBlur(image[..., 1].astype(np.float32), (0, 0), 1.0)
        inside.append(green[mask].mean())
        outside.append(green[~mask].mean())
    assert np.mean(inside) > 2.0 * np.mean(outside), (name, inside, outside)


@pytest.mark.parametrize("name", ["Nucleoplasm", "Nucleoli"])
def test_nuclear_masks_lie_in_the_blue_nucleus(name):
    c = CLASS_NAMES.index(name)
    image, masks = synthetic.synthesize_field([c], size=128, rng=np.random.default_rng(5), preset="demo",
                                              return_masks=True)
    blue = cv2.GaussianBlur(image[..., 2], (0, 0), 1.5)
    _, nucleus = cv2.threshold(blue, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)   # the nuclei, from the pixels
    nucleus = nucleus.astype(bool)
    assert nucleus.mean() < 0.5
    assert nucleus[masks[c]].mean() > 0.8


def test_load_masks_names_a_bad_file(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(HpaDataError, match="x.npz.*synth --masks"):
        synthetic.load_masks(tmp_path / "x.npz")
