"""The synthetic HPA dataset: Kaggle layout, determinism, label statistics, class patterns, learnability.

Pattern checks look only at the written pixels (masks come from thresholding the blue / red / yellow
channels), never at the generator's internals.
"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from hpa_zoo.data import synthetic
from hpa_zoo.cli import main
from hpa_zoo.constants import CHANNELS, KAGGLE_TRAIN_COUNTS, NUM_CLASSES, is_kaggle_id
from hpa_zoo.errors import ConfigError, DiskWriteError
from hpa_zoo.data.labels import read_labels_csv


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- layout
def test_dataset_has_the_exact_kaggle_layout(tmp_path):
    out = synthetic.write_synthetic_dataset(tmp_path / "hpa", n_train=5, n_test=3, size=64, seed=1, workers=0,
                                            progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "sample_submission.csv", "test", "test_labels.csv",
                                                     "train", "train.csv"]
    assert (out / "train.csv").read_text().splitlines()[0] == "Id,Target"
    assert (out / "sample_submission.csv").read_text().splitlines()[0] == "Id,Predicted"
    train = read_labels_csv(out / "train.csv")
    sub = pd.read_csv(out / "sample_submission.csv", dtype=str)
    test = read_labels_csv(out / "test_labels.csv")
    assert len(train) == 5 and len(sub) == 3 and list(sub["Id"]) == list(test["Id"])
    assert set(sub["Predicted"]) == {"0"}
    ids = list(train["Id"]) + list(sub["Id"])
    assert len(set(ids)) == 8 and all(is_kaggle_id(i) for i in ids)
    for split, split_ids in (("train", train["Id"]), ("test", sub["Id"])):
        names = sorted(p.name for p in (out / split).iterdir())
        assert names == sorted(f"{i}_{c}.png" for i in split_ids for c in CHANNELS)
        img = cv2.imread(str(out / split / names[0]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (64, 64) and img.dtype == np.uint8
    assert "synthetic" in (out / "README.md").read_text().lower()
    assert "never" in (out / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["hpa"]  # no temporary folder left behind


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    kw = dict(n_train=8, n_test=2, size=48, progress=False)
    a = _tree(synthetic.write_synthetic_dataset(tmp_path / "a", seed=7, workers=0, **kw))
    b = _tree(synthetic.write_synthetic_dataset(tmp_path / "b", seed=7, workers=2, **kw))
    c = _tree(synthetic.write_synthetic_dataset(tmp_path / "c", seed=8, workers=0, **kw))
    assert a == b
    assert a.keys() != c.keys()  # other ids
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(synthetic.synthesize_field([0, 25], size=64, rng=rng1),
                          synthetic.synthesize_field([0, 25], size=64, rng=rng2))


def test_an_interrupted_run_leaves_nothing_and_existing_data_is_protected(tmp_path, monkeypatch):
    calls = []

    def failing(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_render_and_write", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_synthetic_dataset(tmp_path / "x", n_train=4, n_test=1, size=32, workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="overwrite"):
        synthetic.write_synthetic_dataset(tmp_path / "x", n_train=1, n_test=0, size=32, workers=0, progress=False)
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep"
    synthetic.write_synthetic_dataset(tmp_path / "x", n_train=1, n_test=0, size=32, workers=0, progress=False,
                                      overwrite=True)
    assert not (tmp_path / "x" / "mine.txt").exists() and (tmp_path / "x" / "train.csv").is_file()
    with pytest.raises(ConfigError, match="size"):
        synthetic.synthesize_field([0], size=16, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="28"):
        synthetic.synthesize_field([28], size=64, rng=np.random.default_rng(0))


def test_cli_synth_writes_a_dataset(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--n-train", "2", "--n-test", "1", "--size", "32",
                 "--workers", "0", "--seed", "3"]) == 0
    assert len(read_labels_csv(tmp_path / "d" / "train.csv")) == 2
    assert "never HPA results" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "d"), "--n-train", "1", "--n-test", "0", "--size", "32"]) == 1


# ---------------------------------------------------------------------------------------------- labels
def test_label_statistics_follow_the_kaggle_train_set():
    labels = synthetic.sample_labels(3000, np.random.default_rng(0))
    sizes = np.array([len(t) for t in labels])
    assert 1.4 <= sizes.mean() <= 1.9 and sizes.min() == 1 and sizes.max() <= 5
    assert all(list(t) == sorted(set(t)) for t in labels)
    freq = np.bincount([c for t in labels for c in t], minlength=NUM_CLASSES)
    assert (freq > 0).all(), f"classes never drawn: {np.flatnonzero(freq == 0)}"
    assert spearmanr(freq, KAGGLE_TRAIN_COUNTS).statistic > 0.8
    # Frequent classes keep their Kaggle share (within the floor's small distortion).
    share = freq / len(labels)
    assert share[0] == pytest.approx(12885 / 31072, abs=0.05) and share[25] == pytest.approx(8228 / 31072, abs=0.04)


# ---------------------------------------------------------------------------------------------- patterns
def _masks(img):
    """Nucleus, cell and cytoplasm masks estimated from blue, red and yellow (smoothed, thresholded)."""
    smooth = lambda ch, s: cv2.GaussianBlur(img[..., ch].astype(np.float32), (0, 0), s)  # noqa: E731
    nucleus = smooth(2, 2) > 25
    cell = (smooth(0, 3) + smooth(3, 3) + smooth(2, 3)) > 12
    return nucleus, cell, cell & ~cv2.dilate(nucleus.astype(np.uint8), np.ones((5, 5))).astype(bool)


def _fields(label, n=3, size=256, seed=0):
    rng = np.random.default_rng(seed)
    return [synthetic.synthesize_field([label], size=size, rng=rng) for _ in range(n)]


def _green_ratio(img, inside, outside):
    g = img[..., 1].astype(np.float64)
    return g[inside].mean() / max(g[outside].mean(), 1e-6)


def test_nuclear_classes_put_green_in_the_blue_nucleus_and_cytoplasmic_ones_outside():
    for img in _fields(0):  # Nucleoplasm
        nucleus, _, cyto = _masks(img)
        assert _green_ratio(img, nucleus, cyto) > 2.0
    for img in _fields(25):  # Cytosol
        nucleus, _, cyto = _masks(img)
        assert _green_ratio(img, nucleus, cyto) < 0.8


def _rim_and_inner(img):
    """A 2-px band inside the estimated cell outline, and the cell interior 4 px or more from it."""
    cell = _masks(img)[1].astype(np.uint8)
    return cell.astype(bool) & ~cv2.erode(cell, np.ones((5, 5))).astype(bool), cv2.erode(cell, np.ones((9, 9))) > 0


def test_plasma_membrane_green_lies_on_cell_rims():
    for img in _fields(21):
        assert _green_ratio(img, *_rim_and_inner(img)) > 1.5
    for img in _fields(25):  # cytosol: the interior is brighter than the rim band
        assert _green_ratio(img, *_rim_and_inner(img)) < 1.0


def _corr(img, a, b, where):
    return np.corrcoef(img[..., a][where].astype(np.float64), img[..., b][where].astype(np.float64))[0, 1]


def test_er_green_follows_yellow_and_microtubule_green_follows_red():
    for er, mt in zip(_fields(6, seed=1), _fields(14, seed=2)):
        er_cyto, mt_cyto = _masks(er)[2], _masks(mt)[2]
        assert _corr(er, 1, 3, er_cyto) > 0.5 and _corr(er, 1, 3, er_cyto) > _corr(er, 1, 0, er_cyto) + 0.1
        assert _corr(mt, 1, 0, mt_cyto) > 0.5 and _corr(mt, 1, 0, mt_cyto) > _corr(mt, 1, 3, mt_cyto) + 0.1


def test_a_label_adds_green_signal_and_leaves_the_other_channels_alone():
    for c in range(NUM_CLASSES):
        for seed in (0, 1):
            labelled = synthetic.synthesize_field([c], size=128, rng=np.random.default_rng(seed))
            plain = synthetic.synthesize_field([], size=128, rng=np.random.default_rng(seed))
            green_gain = labelled[..., 1].astype(float).sum() / plain[..., 1].astype(float).sum()
            if c in (16, 17, 22):  # these force a layout (dividing pair, mitotic cells, crowded field)
                assert not np.array_equal(labelled[..., 1], plain[..., 1])
                continue
            assert np.array_equal(labelled[..., [0, 2, 3]], plain[..., [0, 2, 3]]), c
            assert green_gain > 1.0, (c, seed, green_gain)


def test_intensities_resemble_the_real_kaggle_pngs(real_samples_dir):
    rng = np.random.default_rng(11)
    imgs = np.stack([synthetic.synthesize_field(t, size=512, rng=rng) for t in synthetic.sample_labels(4, rng)])
    means = imgs.reshape(-1, 4).mean(0)
    real = np.stack([cv2.imread(str(real_samples_dir / f"b478cc78-bad4-11e8-b2b8-ac1f6b6435d0_{c}.png"), 0)
                     for c in CHANNELS], -1)
    real_means = real.reshape(-1, 4).mean(0)  # 15.7, 8.2, 13.9, 16.9
    assert ((means > 2) & (means < 40)).all(), means
    assert (np.abs(np.log(means / real_means)) < np.log(4)).all(), (means, real_means)
    assert np.median(imgs[..., 2]) < 8  # dark background
    assert np.percentile(imgs[..., 2], 99.5) > 80  # bright nuclei


# ---------------------------------------------------------------------------------------------- learnability
def _features(img):
    """Cheap co-localisation features of green vs the reference channels."""
    nucleus, cell, cyto = _masks(img)
    g = img[..., 1].astype(np.float64)
    feats = [_green_ratio(img, nucleus, cyto), g[cell].mean() / (g.mean() + 1), g[cell].std() / (g[cell].mean() + 1)]
    feats += [_corr(img, 1, k, cell) for k in (0, 2, 3)]
    return np.nan_to_num(feats)


def test_a_linear_classifier_on_colocalisation_features_learns_nucleoplasm():
    rng = np.random.default_rng(21)
    labels = synthetic.sample_labels(160, rng)
    x = np.stack([_features(synthetic.synthesize_field(t, size=128, rng=rng)) for t in labels])
    y = np.array([0 in t for t in labels], int)
    assert 0.25 < y.mean() < 0.6
    scores = cross_val_predict(LogisticRegression(max_iter=2000), (x - x.mean(0)) / (x.std(0) + 1e-9), y, cv=4,
                               method="predict_proba")[:, 1]
    auc = roc_auc_score(y, scores)
    assert auc > 0.8, auc  # chance is 0.5


# ---------------------------------------------------------------------------------------------- presets
def test_presets_are_deterministic_and_hpa_is_the_default(tmp_path):
    kw = dict(n_train=6, n_test=2, size=64, progress=False)
    default = _tree(synthetic.write_synthetic_dataset(tmp_path / "d", seed=4, workers=0, **kw))
    hpa = _tree(synthetic.write_synthetic_dataset(tmp_path / "h", seed=4, workers=0, preset="hpa", **kw))
    demo_a = _tree(synthetic.write_synthetic_dataset(tmp_path / "a", seed=4, workers=0, preset="demo", **kw))
    demo_b = _tree(synthetic.write_synthetic_dataset(tmp_path / "b", seed=4, workers=2, preset="demo", **kw))
    demo_c = _tree(synthetic.write_synthetic_dataset(tmp_path / "c", seed=5, workers=0, preset="demo", **kw))
    assert default == hpa and demo_a == demo_b and demo_a != demo_c
    pngs = [k for k in demo_a if k.endswith(".png")]
    assert pngs and all(demo_a[k] != hpa.get(k) for k in pngs if "_blue" in k)
    assert "Preset `demo`" in demo_a["README.md"].decode() and "synthetic" in demo_a["README.md"].decode()
    with pytest.raises(ConfigError, match="unknown synthetic preset 'easy'.*hpa, demo"):
        synthetic.write_synthetic_dataset(tmp_path / "x", n_train=1, n_test=0, size=32, preset="easy")
    assert main(["synth", str(tmp_path / "cli"), "--n-train", "2", "--n-test", "1", "--size", "48", "--workers",
                 "0", "--preset", "demo"]) == 0
    assert (tmp_path / "cli" / "README.md").read_text() == synthetic.README_TEXT.format(
        size=48, n_train=2, n_test=1, seed=0, floor=synthetic.CLASS_FLOOR_FRACTION, preset="demo",
        description=synthetic.PRESETS["demo"].description)


def _nuclei(image):
    """Connected components of the thresholded blue channel: (count, mean area in pixels)."""
    blue = cv2.GaussianBlur(image[..., 2], (0, 0), 1.0)
    n, _, stats, _ = cv2.connectedComponentsWithStats((blue > 40).astype(np.uint8))
    areas = stats[1:, cv2.CC_STAT_AREA]
    areas = areas[areas >= 8]
    return len(areas), float(areas.mean()) if len(areas) else 0.0


def test_demo_preset_has_fewer_larger_cells_and_a_flatter_class_balance():
    counts = {}
    for name in ("hpa", "demo"):
        stats = [_nuclei(synthetic.synthesize_field([25], size=128, rng=np.random.default_rng(k), preset=name))
                 for k in range(12)]
        counts[name] = np.mean([s[0] for s in stats]), np.mean([s[1] for s in stats if s[0]])
    assert counts["demo"][0] < 0.6 * counts["hpa"][0]  # zoom 2: about a quarter of the cells per field
    assert counts["demo"][1] > 2.5 * counts["hpa"][1]  # and nuclei about four times the area
    labels = synthetic.sample_labels(3000, np.random.default_rng(0), synthetic.PRESETS["demo"].class_weights)
    freq = np.bincount([c for t in labels for c in t], minlength=NUM_CLASSES)
    assert freq.min() >= 40 and freq.max() / freq.min() < 10  # hpa: ~8 Rods & rings per 2,000, 1,171x Kaggle's
    assert spearmanr(freq, KAGGLE_TRAIN_COUNTS).correlation > 0.8  # still ordered like the Kaggle counts
    mean_labels = np.mean([len(t) for t in labels])
    assert abs(mean_labels - 1.634) < 0.06  # Kaggle's labels-per-image distribution is kept


# ---------------------------------------------------------------------------------------------- samples
def test_fields_of_a_sample_share_labels_and_a_hidden_signature(tmp_path):
    out = synthetic.write_synthetic_dataset(tmp_path / "s", n_train=30, n_test=10, size=64, seed=2, workers=0,
                                            progress=False, fields_per_sample=4)
    train = pd.read_csv(out / "train.csv", dtype=str)
    test = pd.read_csv(out / "test_labels.csv", dtype=str)
    assert list(train.columns) == ["Id", "Target", "Sample"]
    assert list(test.columns) == ["Id", "Target", "Sample", "SampleInTrain"]
    both = pd.concat([train, test[["Id", "Target", "Sample"]]])
    assert both["Sample"].nunique() == 10 and (both.groupby("Sample").size() == 4).all()
    assert (both.groupby("Sample")["Target"].nunique() == 1).all()  # a sample's fields share its labels
    expected = test["Sample"].isin(set(train["Sample"])).astype(int).astype(str)
    assert list(test["SampleInTrain"]) == list(expected) and expected.eq("1").sum() >= 5
    # the signature: per-channel background (10th percentile) and intensity (mean) of the written pixels put a
    # field nearest to another field of its own sample far more often than chance (3 of 39 others)
    from hpa_zoo.train.baselines import pixel_features

    def load(split, image_id):
        return np.stack([cv2.imread(str(out / split / f"{image_id}_{c}.png"), cv2.IMREAD_GRAYSCALE)
                         for c in CHANNELS], axis=-1)

    images = np.stack([load("train", i) for i in train["Id"]] + [load("test", i) for i in test["Id"]])
    x = pixel_features(images)
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    samples = both["Sample"].to_numpy()
    assert (samples[d.argmin(1)] == samples).mean() > 0.5


def test_a_sample_style_is_the_samples_and_k1_keeps_the_original_columns(tmp_path):
    rng = np.random.default_rng(0)
    style = synthetic.make_sample_style(0, [0, 25], rng)
    a = synthetic.synthesize_field([0, 25], size=64, rng=np.random.default_rng(1), style=style)
    b = synthetic.synthesize_field([0, 25], size=64, rng=np.random.default_rng(2), style=style)
    assert a.shape == (64, 64, 4) and not np.array_equal(a, b)  # other fields, other cells and noise
    with pytest.raises(ConfigError, match="sample"):
        synthetic.synthesize_field([3], size=64, rng=np.random.default_rng(1), style=style)
    with pytest.raises(ConfigError, match="fields_per_sample"):
        synthetic.write_synthetic_dataset(tmp_path / "x", n_train=2, n_test=0, size=32, fields_per_sample=0)
    out = synthetic.write_synthetic_dataset(tmp_path / "k1", n_train=2, n_test=1, size=32, workers=0,
                                            progress=False, fields_per_sample=1)
    assert (out / "train.csv").read_text().splitlines()[0] == "Id,Target"
    assert (out / "test_labels.csv").read_text().splitlines()[0] == "Id,Target"
    assert main(["synth", str(tmp_path / "cli"), "--n-train", "4", "--n-test", "2", "--size", "32",
                 "--workers", "0", "--fields-per-sample", "3"]) == 0
    assert pd.read_csv(tmp_path / "cli" / "train.csv")["Sample"].notna().all()


def test_a_png_that_cannot_be_written_stops_the_dataset_naming_the_file_and_leaves_no_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, "imwrite", lambda path, image, *a: False)  # what OpenCV returns on a failed write
    with pytest.raises(DiskWriteError, match=r"cannot write .*_red\.png: cv2\.imwrite failed"):
        synthetic.write_synthetic_dataset(tmp_path / "x", n_train=2, n_test=1, size=32, workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []  # the hidden build folder is removed, never renamed onto the output
