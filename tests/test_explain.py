"""hpa_zoo.infer.explain: Grad-CAM on real HPA images against a hand-computed Grad-CAM, embeddings against the
classifier they feed, the UMAP/PCA projection and the embedding plot, and the `explain` / `embed` CLI.

References: ``tf.GradientTape`` on a separately built sub-model with NumPy channel weighting and
``tf.image.resize`` upsampling (Selvaraju et al. 2017, eq. 1-2); the ``logits`` Dense layer applied in NumPy to
the embedding; sklearn's nearest-centroid separation of two point clouds.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pandas as pd
import pytest

import keras

from hpa_zoo.errors import DiskWriteError  # noqa: E402
from hpa_zoo.infer import explain  # noqa: E402
from hpa_zoo.data.images import load_rgby  # noqa: E402
from hpa_zoo.data.labels import read_labels_csv  # noqa: E402

from tests.conftest import MODEL_FIXTURE_SIZE as SIZE  # noqa: E402


@pytest.fixture(scope="module")
def model(team1_model_64):
    return team1_model_64


@pytest.fixture(scope="module")
def real(real_samples_dir):
    df = read_labels_csv(real_samples_dir / "labels.csv")
    images = np.stack([load_rgby(real_samples_dir, i, size=SIZE) for i in df["Id"]])
    return images, list(df["labels"])


def test_grad_cam_shape_range_and_class_dependence(model, real):
    images, _ = real
    cam0 = explain.grad_cam(model, images, class_index=0)
    cam5 = explain.grad_cam(model, images, class_index=5)
    assert cam0.shape == (3, SIZE, SIZE) and cam0.dtype == np.float32
    assert cam0.min() >= 0.0 and cam0.max() <= 1.0
    assert np.allclose(cam0.reshape(3, -1).max(axis=1), 1.0)  # each map is normalised by its peak
    assert np.abs(cam0 - cam5).max() > 0.05


def test_grad_cam_equals_hand_computed_reference(model, real):
    import tensorflow as tf

    images, _ = real
    layer = "conv4_block24_concat"  # DenseNet121 "Block3" (torchvision features.denseblock3)
    got = explain.grad_cam(model, images[:1], class_index=0, layer_name=layer)[0]

    sub = keras.Model(model.input, [model.get_layer(layer).output, model.output])
    x = tf.constant(images[:1].astype(np.float32))
    with tf.GradientTape() as tape:
        acts, logits = sub(x, training=False)
        score = logits[0, 0]
    grads = tape.gradient(score, acts).numpy()[0]  # (h, w, D)
    acts = acts.numpy()[0]
    weights = grads.mean(axis=(0, 1))  # alpha_d
    cam = np.maximum((acts * weights).sum(axis=-1), 0.0)  # (h, w)
    up = tf.image.resize(cam[None, :, :, None], (SIZE, SIZE), method="bilinear").numpy()[0, :, :, 0]
    assert cam.shape == (4, 4) and up.max() > 0  # stride 16 at 64 px; a non-trivial map
    ref = up / up.max()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_overlay_and_png(real, tmp_path):
    images, _ = real
    cam = np.zeros((SIZE, SIZE), np.float32)
    cam[:8, :8] = 1.0
    over = explain.overlay_cam(images[0], cam, alpha=1.0)
    assert over.dtype == np.uint8 and over.shape == (SIZE, SIZE, 3)
    assert tuple(over[0, 0]) == (128, 0, 0)  # OpenCV jet: 1.0 is dark red
    assert tuple(over[-1, -1]) == (0, 0, 128)  # 0.0 is dark blue
    path = explain.save_cam_png(tmp_path / "cam.png", images[0], cam)
    png = cv2.imread(str(path))
    assert png.shape == (SIZE, 2 * SIZE, 3)
    np.testing.assert_array_equal(png[:, :SIZE, ::-1], explain.rgby_to_rgb(images[0]))


def test_a_cam_png_that_cannot_be_written_says_so_and_keeps_the_earlier_file(real, tmp_path, monkeypatch):
    images, _ = real
    cam = np.ones((SIZE, SIZE), np.float32)
    path = explain.save_cam_png(tmp_path / "cam.png", images[0], cam)
    before = path.read_bytes()
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)
    with pytest.raises(DiskWriteError, match=r"cannot write .*cam\.png: cv2\.imwrite failed"):
        explain.save_cam_png(path, images[0], np.zeros((SIZE, SIZE), np.float32))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cam.png"]


def test_embed_gives_the_features_the_classifier_reads(model, real):
    images, _ = real
    feats = explain.embed(model, images)
    assert feats.shape == (3, 1024) and feats.dtype == np.float32  # registry feature_layer head_dropout2
    w, b = model.get_layer("logits").get_weights()
    np.testing.assert_allclose(feats @ w + b, np.asarray(model(images.astype(np.float32), training=False)),
                               atol=1e-4)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({"image": images}).batch(2)
    np.testing.assert_allclose(explain.embed(model, ds), feats, atol=1e-5)


@pytest.mark.slow  # numba compiles UMAP on first use (about a minute of CPU)
def test_umap_separates_clusters():
    from sklearn.neighbors import NearestCentroid

    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 1, (20, 16)), rng.normal(8, 1, (20, 16))]).astype(np.float32)
    group = np.repeat([0, 1], 20)
    xy = explain.umap_projection(f, n_neighbors=5, seed=0)
    assert xy.shape == (40, 2) and np.isfinite(xy).all()
    assert NearestCentroid().fit(xy, group).score(xy, group) == 1.0


def test_umap_projection_falls_back_to_pca_for_few_points():
    rng = np.random.default_rng(0)
    f = rng.normal(0, 1, (3, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="PCA"):
        few = explain.umap_projection(f, n_neighbors=15)
    centred = f - f.mean(axis=0)
    np.testing.assert_allclose(np.abs(few[:, 0]), np.abs(centred @ np.linalg.svd(centred)[2][0]), rtol=1e-4)


def test_plot_embedding_colours_single_classes_and_greys_multi_label(real, tmp_path):
    import matplotlib.pyplot as plt

    _, labels = real  # (0, 16), (25,), (6,)
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]], np.float32)
    fig = explain.plot_embedding(xy, labels, tmp_path / "e.png")
    try:
        colls = {c.get_label(): c for c in fig.axes[0].collections}
        assert sum(len(c.get_offsets()) for c in colls.values()) == 3 == fig.hpa_point_count
        assert set(colls) == {"multi-location", "Cytosol", "Endoplasmic reticulum"}
        np.testing.assert_allclose(colls["multi-location"].get_offsets(), [[0.0, 0.0]])
        np.testing.assert_allclose(colls["multi-location"].get_facecolor()[0], explain.MULTI_LABEL_GREY)
        assert cv2.imread(str(tmp_path / "e.png")) is not None
    finally:
        plt.close(fig)


def test_cli_explain_and_embed_on_real_samples(real_samples_dir, tmp_path):
    from hpa_zoo.cli import main

    out_png = tmp_path / "cam.png"
    rc = main(["explain", "team1_densenet121_512", "30741_800_A6_1", "--images-dir", str(real_samples_dir),
               "--class", "Cytosol", "--image-size", str(SIZE), "--out", str(out_png)])
    assert rc == 0 and cv2.imread(str(out_png)).shape == (SIZE, 2 * SIZE, 3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rc = main(["embed", "team1_densenet121_512", "--data", str(real_samples_dir), "--image-size", str(SIZE),
                   "--out", str(tmp_path / "emb"), "--html", "--data-label", "three HPA samples"])
    assert rc == 0
    from hpa_zoo.analysis.explorer import read_explorer_data

    page = read_explorer_data(tmp_path / "emb" / "explorer.html")  # the explorer (tests/test_explorer.py)
    assert page["ids"] == list(read_labels_csv(real_samples_dir / "labels.csv")["Id"])
    assert all(t.startswith("data:image/jpeg") for t in page["thumbs"]) and all(len(t) == 3 for t in page["top"])
    assert page["data_label"] == "three HPA samples"
    feats = np.load(tmp_path / "emb" / "features.npy")
    proj = pd.read_csv(tmp_path / "emb" / "projection.csv", dtype={"Target": str})
    assert feats.shape == (3, 1024) and len(proj) == 3
    assert set(proj["method"]) == {"pca"}  # 3 images <= n_neighbors: documented PCA fallback
    assert list(proj["Id"]) == list(read_labels_csv(real_samples_dir / "labels.csv")["Id"])
    assert (tmp_path / "emb" / "embedding.png").is_file()
    assert pd.read_csv(tmp_path / "emb" / "features.csv").shape == (3, 1025)


def test_score_cams_against_a_hand_computation():
    cams = np.zeros((3, 4, 4))
    masks = np.zeros((3, 4, 4), bool)
    cams[0] = [[0, 0, 0, 0], [0, 4, 1, 0], [0, 0, 0, 0], [0, 0, 0, 3]]
    masks[0, 1, 1:3] = True                      # max (4) inside; energy (4 + 1) / 8
    cams[1] = [[9, 0, 0, 0], [0, 1, 0, 0], [0, 0, -5, 0], [0, 0, 0, 0]]
    masks[1, 1:3, 1:3] = True                    # max outside; negatives ignored: energy 1 / 10
    cams[2] = 1.0                                # no mask pixel: left out
    out = explain.score_cams(cams, masks)
    assert out["n"] == 2 and list(out["hits"]) == [True, False]
    np.testing.assert_allclose(out["energies"], [5 / 8, 1 / 10])
    assert out["pointing"] == 0.5 and out["energy"] == pytest.approx((5 / 8 + 1 / 10) / 2)
