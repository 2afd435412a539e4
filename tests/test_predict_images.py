"""hpa_zoo.infer.predict_images / `hpa-zoo predict` on the user's own images: a folder of 16-bit rectangular
two-channel TIFFs -> fine-tuned preset -> hpa_zoo.load -> predictions on a new folder; Team 1 on a CSV-less folder
of HPA-style JPEGs; pixel-size rescaling.

References are independent of the code under test: OpenCV reads of the files written here, NumPy sigmoid and
thresholds, sklearn's F1.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

import hpa_zoo
from hpa_zoo import cli
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data.images import fit_to_model
from hpa_zoo.infer.predict_images import predict_images

SIZE = 32


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """The CLI's runtime auto exports presets to ONNX into the hpa-zoo cache: keep it in the test's folder."""
    monkeypatch.setenv("HPA_ZOO_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------- pixel size
def test_fit_to_model_rescales_then_centres_on_the_canvas():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (100, 60, 2), dtype=np.uint8)
    out = fit_to_model(img, 64, pixel_size_um=0.16, model_pixel_size_um=0.32)  # half the pixels per cell
    ref = cv2.resize(img, (30, 50), interpolation=cv2.INTER_AREA)  # (w, h): 60 -> 30, 100 -> 50
    canvas = np.zeros((64, 64, 2), np.uint8)
    canvas[7:57, 17:47] = ref  # centred: (64 - 50) // 2, (64 - 30) // 2
    np.testing.assert_array_equal(out, canvas)
    big = fit_to_model(img, 40, pixel_size_um=0.32, model_pixel_size_um=0.32)  # same scale, larger: centre crop
    np.testing.assert_array_equal(big, img[30:70, 10:50])
    whole = fit_to_model(img, 64)  # no pixel sizes: the whole field resized (what the teams did); shrinking: area
    np.testing.assert_array_equal(whole, cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))
    with pytest.raises(HpaDataError, match="must be > 0"):
        fit_to_model(img, 64, pixel_size_um=-1.0, model_pixel_size_um=0.32)


def test_graph_rescale_matches_the_numpy_geometry():
    """`pipeline.rescale_to_model` (embed) and `images.fit_to_model` (predict, finetune) put the same content in
    the same place: a uniform image shows it independently of the interpolation."""
    from hpa_zoo.data.image_ops import rescale_to_model

    for shape, scale, size in [((90, 50, 3), 0.5, 64), ((90, 50, 3), 2.0, 64), ((41, 77, 1), 1.0, 32)]:
        img = np.full(shape, 200, np.uint8)
        a = fit_to_model(img, size, pixel_size_um=scale, model_pixel_size_um=1.0)
        b = np.asarray(rescale_to_model(img, size, scale))
        h, w = (min(size, int(round(d * scale))) for d in shape[:2])
        expected = np.zeros((size, size, shape[2]), np.uint8)
        top, left = (size - h) // 2, (size - w) // 2
        expected[top:top + h, left:left + w] = 200
        np.testing.assert_array_equal(a, expected)
        np.testing.assert_array_equal(b, expected)


# ---------------------------------------------------------------------------------------------- own TIFFs
def _write_tiff_folder(folder, n, rng, classes):
    """Rectangular 16-bit two-channel TIFFs (nucleus, protein): a bright disc in the protein channel for 'ring'
    images, a uniform glow for 'diffuse' ones. Returns the CSV rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cls = classes[i % len(classes)]
        nucleus = (rng.uniform(0, 8000, (48, 40))).astype(np.uint16)
        protein = np.zeros((48, 40), np.float64)
        if cls == "ring":
            cv2.circle(protein, (20, 24), 12, 50000, 3)
        else:
            protein += 20000
        protein = (protein + rng.uniform(0, 3000, protein.shape)).astype(np.uint16)
        name = f"img{i:02d}.tif"
        cv2.imwritemulti(str(folder / name), [nucleus, protein])
        rows.append({"filename": name, "labels": cls})
    return rows


def _reference_probs(model, folder, files, thresholds):
    """Independent path: OpenCV pages -> /257 -> resize -> model -> NumPy sigmoid."""
    x = []
    for f in files:
        ok, pages = cv2.imreadmulti(str(folder / f), flags=cv2.IMREAD_UNCHANGED)
        planes = [np.round(p.astype(np.float32) / 257.0).astype(np.uint8) for p in pages]
        planes = [cv2.resize(p, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for p in planes]
        x.append(np.stack(planes, -1))
    z = np.asarray(model(np.asarray(x, np.float32), training=False), np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    return p, p > np.asarray(thresholds)


def test_own_tiffs_finetune_reload_and_predict_a_new_folder(tiny_registry_model, tmp_path, capsys):
    from hpa_zoo.train import finetune as ft

    rng = np.random.default_rng(0)
    classes = ["diffuse", "ring"]
    rows = _write_tiff_folder(tmp_path / "train_imgs", 16, rng, classes)
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    preset = ft.finetune(tiny_registry_model, tmp_path / "train.csv", tmp_path / "train_imgs", out_dir=tmp_path / "run",
                         channels=("nucleus", "protein"), epochs=2, freeze_epochs=1, image_size=SIZE, batch_size=8,
                         learning_rate=3e-3, verbose=0)
    model = hpa_zoo.load(preset)  # the crash: now the preset itself loads
    info = hpa_zoo.preset_info(preset)
    assert model.input_shape == (None, SIZE, SIZE, 2) and info["class_names"] == classes
    assert info["stains"] == ["blue", "green"] and info["pixel_size_um"] is None  # fine-tuned without one

    new = _write_tiff_folder(tmp_path / "new_imgs", 6, np.random.default_rng(1), classes)
    pd.DataFrame(new).to_csv(tmp_path / "new.csv", index=False)  # with labels: an evaluation is written too
    out = predict_images(preset, tmp_path / "new.csv", images_dir=tmp_path / "new_imgs", out_dir=tmp_path / "pred",
                         features=True, verbose=0)
    probs = pd.read_csv(out["probabilities"])
    assert list(probs.columns) == ["Id"] + classes and list(probs["Id"]) == [f"img{i:02d}" for i in range(6)]
    ref, ref_labels = _reference_probs(model, tmp_path / "new_imgs", [r["filename"] for r in new],
                                       info["thresholds"])
    np.testing.assert_allclose(probs[classes].to_numpy(), ref, atol=1e-5)
    labels = pd.read_csv(out["predictions"], keep_default_na=False)["Labels"]
    assert [set(filter(None, s.split(";"))) for s in labels] == [
        {c for c, on in zip(classes, row) if on} for row in ref_labels]
    from sklearn.metrics import f1_score

    truth = np.array([[r["labels"] == c for c in classes] for r in new])
    summary = json.loads(out["evaluation_summary"].read_text())
    assert summary["macro_f1"] == pytest.approx(f1_score(truth, ref_labels, average="macro", zero_division=0))
    feats = np.load(out["features"])
    expected = hpa_zoo.feature_extractor(model, layer="head_dropout2").predict(
        np.stack([fit_to_model(ft.read_image(tmp_path / "new_imgs", (r["filename"],), 2, None), SIZE)
                  for r in new]).astype(np.float32), verbose=0)
    np.testing.assert_allclose(feats, expected, atol=1e-5)

    # the same from the command line, on a plain list of files
    rc = cli.main(["predict", str(preset), "--images", *[str(tmp_path / "new_imgs" / r["filename"]) for r in new],
                   "--out", str(tmp_path / "cli")])
    assert rc == 0
    cli_probs = pd.read_csv(tmp_path / "cli" / "probabilities.csv")
    np.testing.assert_allclose(cli_probs[classes].to_numpy(), ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------- Team 1, JPEGs
@pytest.fixture(scope="module")
def jpeg_folder(real_samples_dir, tmp_path_factory):
    """The three real HPA samples as HPA-style JPEGs {id}_{red,green,blue,yellow}.jpg, no CSV; plus one id with
    its yellow file missing."""
    folder = tmp_path_factory.mktemp("jpegs")
    ids = list(pd.read_csv(real_samples_dir / "labels.csv")["Id"])
    for i in ids:
        for c in ("red", "green", "blue", "yellow"):
            img = cv2.imread(str(real_samples_dir / f"{i}_{c}.png"), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(folder / f"{i}_{c}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    for c in ("red", "green", "blue"):
        cv2.imwrite(str(folder / f"broken_{c}.jpg"), np.zeros((64, 64), np.uint8))
    return folder, ids


def test_team1_on_a_csv_less_jpeg_folder(jpeg_folder, tmp_path):
    from hpa_zoo.infer.predict_images import discover, load_member, read_item

    folder, ids = jpeg_folder
    with pytest.raises(HpaDataError, match=r"1 image\(s\) have an incomplete channel set \(broken: missing yellow"):
        predict_images("team1_densenet121_512", folder, out_dir=tmp_path / "a", verbose=0)
    out = predict_images("team1_densenet121_512", folder, out_dir=tmp_path / "b", skip_bad=True, features=True,
                         verbose=0)
    probs = pd.read_csv(out["probabilities"])
    assert sorted(probs["Id"]) == sorted(ids) and len(probs.columns) == 29
    assert list(pd.read_csv(out["skipped"])["Id"]) == ["broken"]
    assert np.load(out["features"]).shape == (3, 1024)
    assert list(pd.read_csv(out["features_ids"])["Id"]) == list(probs["Id"])
    # independent read of the same files (OpenCV grayscale, RGBY order, the recipe's 768 -> 512 path)
    member = load_member("team1_densenet121_512")
    assert (member.image_size, member.input_size) == (768, 512)
    x = np.stack([cv2.resize(np.stack([cv2.imread(str(folder / f"{i}_{c}.jpg"), cv2.IMREAD_GRAYSCALE)
                                       for c in ("red", "green", "blue", "yellow")], -1), (768, 768),
                             interpolation=cv2.INTER_LINEAR) for i in probs["Id"]])
    items, _ = discover(folder, stains=member.stains, skip_bad=True)
    first = next(it for it in items if it.id == probs["Id"][0])
    np.testing.assert_array_equal(read_item(first, 4, 768), x[0])
    # the Kaggle PNGs are 0.32 µm per pixel (2048 px fields at 0.08 µm, resized to 512); the model's 768 px
    # images are 0.213 µm: rescaling by 1.5 fills the 768 canvas exactly, the same as resizing the whole field
    assert member.pixel_size_um == pytest.approx(0.08 * 2048 / 768)
    np.testing.assert_array_equal(read_item(first, 4, 768, pixel_size_um=0.32,
                                            model_pixel_size_um=member.pixel_size_um), x[0])
    # weights are random here (no published file offline): the check is the I/O path, not the biology
    del member


def test_bad_arguments_are_config_errors(tiny_registry_model, tmp_path, jpeg_folder):
    folder, _ = jpeg_folder
    with pytest.raises(ConfigError, match="batch_size=0"):
        predict_images(tiny_registry_model, folder, out_dir=tmp_path, batch_size=0, verbose=0)
    with pytest.raises(ConfigError, match="pixel_size_um=-2"):
        predict_images(tiny_registry_model, folder, out_dir=tmp_path, pixel_size_um=-2, verbose=0)
    with pytest.raises(HpaDataError, match="not found"):
        predict_images(tiny_registry_model, tmp_path / "nothing_here", out_dir=tmp_path, verbose=0)
