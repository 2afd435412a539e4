"""hpa_zoo.analysis.leaks: a planted same-sample pair is found by pHash and by classifier-feature cosine, recall and
precision follow from the Sample truth, and `hpa-zoo leaks` writes the ranked pairs and the sheet."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from hpa_zoo import cli
from hpa_zoo.analysis import leaks
from hpa_zoo.data.synthetic import synthesize_field


def _second_set(real_samples_dir, folder):
    """Two other fields of view 'of the same samples' (the real images, 10 % brighter and re-encoded through
    JPEG q90) and one unrelated synthetic field."""
    folder.mkdir()
    ids = list(pd.read_csv(real_samples_dir / "labels.csv")["Id"])
    for image_id in ids[:2]:
        for c in ("red", "green", "blue", "yellow"):
            img = cv2.imread(str(real_samples_dir / f"{image_id}_{c}.png"), cv2.IMREAD_GRAYSCALE)
            img = np.clip(img.astype(np.float32) * 1.1, 0, 255).astype(np.uint8)
            img = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(folder / f"copy_{image_id}_{c}.png"), img)
    other = synthesize_field([0, 25], size=512, rng=np.random.default_rng(3))
    for k, c in enumerate(("red", "green", "blue", "yellow")):
        cv2.imwrite(str(folder / f"unrelated_{c}.png"), other[..., k])
    a = pd.DataFrame({"Id": ids, "Sample": ids})
    b = pd.DataFrame({"Id": [f"copy_{i}" for i in ids[:2]] + ["unrelated"], "Sample": ids[:2] + ["elsewhere"]})
    return ids, a, b


def test_planted_pairs_are_found_with_recall_and_precision(real_samples_dir, tmp_path):
    ids, a, b = _second_set(real_samples_dir, tmp_path / "b")
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    import keras

    keras.utils.set_random_seed(0)  # the audit's (random-weight) feature network, rebuilt identically below
    summary = leaks.audit(real_samples_dir, tmp_path / "b", out_dir=tmp_path / "out", image_size=64,
                          a_csv=tmp_path / "a.csv", b_csv=tmp_path / "b.csv", top=3)
    scores = summary["recall_precision"]
    assert scores["a_images_with_a_partner"] == 2
    assert scores["phash"]["recall"] == 1.0 and scores["phash"]["precision"] == 1.0
    pairs = pd.read_csv(tmp_path / "out" / "pairs.csv")
    planted = pairs[pairs["same_sample"]]
    assert sorted(planted["a_id"]) == sorted(ids[:2]) and (planted["phash"] <= 6).all()
    # independent: NumPy cosine of the same network's features, written into pairs.csv for every candidate
    keras.utils.set_random_seed(0)
    extractor = leaks.feature_model("team1_densenet121_512", image_size=64)
    fa_ids, fa = leaks.image_features(extractor, real_samples_dir)
    fb_ids, fb = leaks.image_features(extractor, tmp_path / "b")
    cos = (fa / np.linalg.norm(fa, axis=1, keepdims=True)) @ (fb / np.linalg.norm(fb, axis=1, keepdims=True)).T
    for row in pairs.itertuples():
        assert row.feature_cosine == pytest.approx(cos[fa_ids.index(row.a_id), fb_ids.index(row.b_id)], abs=1e-4)
    for image_id in ids[:2]:  # even an untrained network's features put a field's copy closest to it
        assert fb_ids[int(cos[fa_ids.index(image_id)].argmax())] == f"copy_{image_id}"
    assert (tmp_path / "out" / "pairs.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["n_b"] == 3


def test_cli_leaks_without_features(real_samples_dir, tmp_path, capsys):
    _second_set(real_samples_dir, tmp_path / "b")
    rc = cli.main(["leaks", str(real_samples_dir), str(tmp_path / "b"), "--out", str(tmp_path / "out"),
                   "--no-features"])
    assert rc == 0
    pairs = pd.read_csv(tmp_path / "out" / "pairs.csv")
    assert "feature_cosine" not in pairs and pairs["phash_match"].sum() == 2
    assert "candidate pairs" in capsys.readouterr().out
