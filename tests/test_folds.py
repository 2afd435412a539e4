"""hpa_zoo.data.folds: pHash duplicate groups and group-aware multilabel stratified folds."""
from __future__ import annotations

import uuid

import cv2
import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from hpa_zoo.data import folds as F
from hpa_zoo.cli import main as cli_main
from hpa_zoo.constants import CHANNELS, KAGGLE_TRAIN_COUNTS, KAGGLE_TRAIN_SIZE, NUM_CLASSES
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data.labels import multi_hot_matrix

KAGGLE_ID = "b478cc78-bad4-11e8-b2b8-ac1f6b6435d0"
HPAV18_SAME_FIELD = "57639_1283_B2_10"


def _synthetic_labels(n, seed=0):
    """Kaggle-like label sets: class c present with its train frequency, at least one label per image."""
    rng = np.random.default_rng(seed)
    freq = KAGGLE_TRAIN_COUNTS / KAGGLE_TRAIN_SIZE
    y = rng.random((n, NUM_CLASSES)) < freq
    empty = ~y.any(axis=1)
    y[empty, rng.choice(NUM_CLASSES, empty.sum(), p=freq / freq.sum())] = True
    ids = [str(uuid.UUID(int=int(rng.integers(0, 2**62)) * 7919 + i)) for i in range(n)]
    return pd.DataFrame({"Id": ids, "labels": [tuple(np.flatnonzero(r).tolist()) for r in y]}), y


def _max_rate_deviation(y, fold_of):
    """Worst |per-fold positive rate - global rate| over folds, averaged over classes with >= 20 positives."""
    keep = y.sum(axis=0) >= 20
    glob = y[:, keep].mean(axis=0)
    dev = np.stack([np.abs(y[fold_of == f][:, keep].mean(axis=0) - glob) for f in np.unique(fold_of)])
    return dev.max(axis=0).mean()


# ------------------------------------------------------------------------------------------- stratification
def test_stratified_folds_match_global_class_rates_better_than_random_split():
    df, y = _synthetic_labels(1500)
    folds = F.make_folds(df, n_splits=5, seed=100)
    assert list(folds["Id"]) == list(df["Id"]) and sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    sizes = folds["fold"].value_counts()
    assert (sizes.sub(300).abs() <= 30).all(), sizes
    ours = _max_rate_deviation(y, folds["fold"].to_numpy())
    rng = np.random.default_rng(1)
    random_devs = [_max_rate_deviation(y, rng.permutation(np.arange(1500) % 5)) for _ in range(5)]
    assert ours < 0.5 * min(random_devs), (ours, random_devs)
    assert ours < 0.01


def test_groups_never_split_and_sources_are_balanced():
    df, y = _synthetic_labels(600, seed=2)
    rng = np.random.default_rng(3)
    # 300 planted pairs, each within one source (ids 0..199 HPAv18, 200..599 Kaggle)
    groups = np.concatenate([np.repeat(np.arange(100), 2)[rng.permutation(200)],
                             np.repeat(np.arange(100, 300), 2)[rng.permutation(400)]])
    df["source"] = np.where(np.arange(600) < 200, "hpav18", "kaggle")
    folds = F.make_folds(df, groups=groups, n_splits=5, seed=100)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert (pd.Series(groups).groupby(folds["group"].to_numpy()).nunique() == 1).all()  # same partition
    share = folds.groupby("fold")["source"].apply(lambda s: (s == "hpav18").mean())
    assert (share.sub(1 / 3).abs() < 0.03).all(), share


def test_make_folds_is_deterministic_and_seed_dependent():
    df, _ = _synthetic_labels(200, seed=4)
    a, b = F.make_folds(df, seed=100), F.make_folds(df, seed=100)
    pd.testing.assert_frame_equal(a, b)
    assert not F.make_folds(df, seed=1)["fold"].equals(a["fold"])


def test_make_folds_rejects_bad_input():
    df, _ = _synthetic_labels(10, seed=5)
    with pytest.raises(ConfigError, match="only 3 duplicate group"):
        F.make_folds(df, groups=np.arange(10) % 3)
    with pytest.raises(HpaDataError, match="duplicate Id"):
        F.make_folds(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(HpaDataError, match="one group id per row"):
        F.make_folds(df, groups=[0, 1])
    targets = df.assign(Target=[" ".join(map(str, t)) for t in df["labels"]]).drop(columns="labels")
    pd.testing.assert_frame_equal(F.make_folds(targets), F.make_folds(df))


# ------------------------------------------------------------------------------------------- grouping
def test_hamming_of_packed_hashes_equals_imagehash_difference():
    rng = np.random.default_rng(6)
    a, b = (cv2.GaussianBlur(rng.integers(0, 256, (64, 64)).astype(np.uint8), (9, 9), 3) for _ in range(2))
    ha, hb = F._phash64(a), F._phash64(b)
    assert int(F.hamming(ha, hb)) == imagehash.phash(Image.fromarray(a)) - imagehash.phash(Image.fromarray(b))


def _brute_force_groups(hashes, max_distance):
    n = len(hashes)
    adj = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            adj[i, j] = all(bin(int(hashes[i, c]) ^ int(hashes[j, c])).count("1") <= max_distance
                            for c in range(hashes.shape[1]))
    return connected_components(csr_matrix(adj), directed=False)[1]


def _same_partition(a, b):
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_duplicate_groups_equal_connected_components_of_the_threshold_graph():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**63, (25, 3), dtype=np.uint64)
    rows = []
    for i in range(60):  # noisy copies of a few bases: chains, near misses, and one channel far off
        h = base[rng.integers(0, 25)].copy()
        for c in range(3):
            for bit in rng.choice(64, rng.integers(0, 16), replace=False):
                h[c] ^= np.uint64(1) << np.uint64(bit)
        rows.append(h)
    hashes = np.array(rows, dtype=np.uint64)
    ref = _brute_force_groups(hashes, 12)
    got = F.duplicate_groups(hashes, 12)
    assert _same_partition(got, ref) and 5 < len(set(ref.tolist())) < 60
    assert got[0] == 0 and set(got.tolist()) == set(range(got.max() + 1))
    np.testing.assert_array_equal(F.duplicate_groups(hashes, 12, block_elements=100), got)  # many blocks


def test_duplicate_groups_are_transitive_and_need_all_channels():
    z = np.uint64(0)
    ten, twenty = np.uint64((1 << 10) - 1), np.uint64((1 << 20) - 1)  # 10 / 20 bits set
    chain = np.array([[z, z, z], [ten, z, z], [twenty, z, z]], np.uint64)  # a~b (10), b~c (10), a-c 20 apart
    assert F.duplicate_groups(chain).tolist() == [0, 0, 0]
    one_channel_far = np.array([[z, z, z], [z, z, twenty]], np.uint64)
    assert F.duplicate_groups(one_channel_far).tolist() == [0, 1]
    assert F.duplicate_groups(one_channel_far, max_distance=20).tolist() == [0, 0]


def test_real_same_field_at_two_sizes_is_one_group_in_one_fold(real_samples_dir):
    kaggle_ids = [KAGGLE_ID, "30741_800_A6_1", "11088_89_B5_1"]
    h_png = F.image_hashes(real_samples_dir, kaggle_ids, layout="kaggle")
    h_jpg = F.image_hashes(real_samples_dir / "original_jpg", [HPAV18_SAME_FIELD], layout="hpav18")  # 2048 px
    assert h_png.shape == (3, 3) and h_png.dtype == np.uint64
    groups = F.duplicate_groups(np.concatenate([h_png, h_jpg]))
    assert groups.tolist() == [0, 1, 2, 0]
    filler, _ = _synthetic_labels(40, seed=8)
    df = pd.concat([pd.DataFrame({"Id": kaggle_ids + [HPAV18_SAME_FIELD], "labels": [(0, 16), (25,), (6,), (0, 16)]}),
                    filler], ignore_index=True)
    folds = F.make_folds(df, groups=np.concatenate([groups, np.arange(40) + 10]))
    fold_of = dict(zip(folds["Id"], folds["fold"]))
    assert fold_of[KAGGLE_ID] == fold_of[HPAV18_SAME_FIELD]
    assert folds.set_index("Id").loc[HPAV18_SAME_FIELD, "source"] == "hpav18"


# ------------------------------------------------------------------------------------------- folders + CLI
def _cell_like(rng, size):
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 4)).astype(np.uint8), (0, 0), size / 24)


def _write_kaggle(root, images, targets):
    (root / "train").mkdir(parents=True)
    for image_id, img in images.items():
        for c, color in enumerate(CHANNELS):
            cv2.imwrite(str(root / "train" / f"{image_id}_{color}.png"), img[..., c])
    pd.DataFrame({"Id": list(images), "Target": targets}).to_csv(root / "train.csv", index=False)


def test_cli_folds_groups_planted_resized_reencoded_duplicates(tmp_path, capsys):
    rng = np.random.default_rng(9)
    kaggle = {str(uuid.UUID(int=i + 1)): _cell_like(rng, 128) for i in range(12)}
    _write_kaggle(tmp_path / "kaggle", kaggle, [str(i % 28) for i in range(12)])
    # HPAv18: the first 3 Kaggle fields again, at 96 px, as false-coloured JPEGs (quality 85), + 3 new fields
    v18 = tmp_path / "v18"
    v18.mkdir()
    planted = {f"100_{i}_A1_1": list(kaggle.values())[i] for i in range(3)}
    fresh = {f"200_{i}_B1_1": _cell_like(rng, 128) for i in range(3)}
    for image_id, img in {**planted, **fresh}.items():
        small = cv2.resize(img, (96, 96), interpolation=cv2.INTER_AREA)
        for c, color in enumerate(CHANNELS):
            bgr = np.zeros((96, 96, 3), np.uint8)
            bgr[..., 2] = small[..., c]  # the stain in the R plane (R,G,B,R plane rule, teams.md §0.3)
            if color == "green":
                bgr = bgr[..., [0, 2, 1]]
            elif color == "blue":
                bgr = bgr[..., [2, 1, 0]]
            cv2.imwrite(str(v18 / f"{image_id}_{color}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    pd.DataFrame({"Id": list(planted) + list(fresh), "Target": ["0"] * 6}).to_csv(v18 / "HPAv18RBGY_wodpl.csv",
                                                                               index=False)
    out = tmp_path / "folds.csv"
    rc = cli_main(["folds", "--kaggle-dir", str(tmp_path / "kaggle"), "--hpav18-dir", str(v18),
                   "--out", str(out), "--n-splits", "3", "--workers", "1"])
    assert rc == 0 and "18 images, 15 groups" in capsys.readouterr().out
    folds = F.load_folds(out).set_index("Id")
    kaggle_ids = list(kaggle)
    for i, v18_id in enumerate(planted):
        assert folds.loc[v18_id, "group"] == folds.loc[kaggle_ids[i], "group"]
        assert folds.loc[v18_id, "fold"] == folds.loc[kaggle_ids[i], "fold"]
    assert folds["group"].nunique() == 15
    assert folds.loc[list(fresh), "source"].eq("hpav18").all()


# ------------------------------------------------------------------------------------------- files
def test_save_load_round_trip_and_fold_split(tmp_path):
    df, _ = _synthetic_labels(50, seed=10)
    folds = F.make_folds(df, n_splits=5)
    path = F.save_folds(folds, tmp_path / "sub" / "folds.csv")
    loaded = F.load_folds(path)
    pd.testing.assert_frame_equal(loaded, folds)
    train, valid = F.fold_split(loaded, 2)
    assert valid == folds.loc[folds["fold"] == 2, "Id"].tolist()
    assert set(train) | set(valid) == set(df["Id"]) and not set(train) & set(valid)
    with pytest.raises(ConfigError, match=r"fold 5 is not in the folds table \(folds \[0, 1, 2, 3, 4\]\)"):
        F.fold_split(loaded, 5)


@pytest.mark.parametrize("text, match", [
    ("Id,split\na,0\n", r"missing column\(s\) \['fold'\]"),
    ("Id,fold\na,0\nb,x\n", r"folds.csv line 3 \(Id b\): fold 'x' is not a non-negative integer"),
    ("Id,fold\na,0\nb,-1\n", r"line 3 \(Id b\): fold '-1'"),
    ("Id,fold\na,0\na,1\n", r"line 3: duplicate Id 'a', first on line 2"),
    ("Id,fold\na,0\nb,2\n", r"fold\(s\) \[1\] have no rows"),
    ("Id,fold\n,0\n", r"line 2: empty Id"),
    ("Id,fold\n", r"has no rows"),
])
def test_load_folds_rejects_bad_csv_with_line_numbers(tmp_path, text, match):
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(HpaDataError, match=match):
        F.load_folds(path)


def test_load_folds_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(HpaDataError, match="hpa-zoo folds"):
        F.load_folds(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------- samples
def test_merge_groups_equals_connected_components_of_the_union_graph():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 30, 60), rng.integers(0, 40, 60)
    rows, cols = [], []
    for g in (a, b):  # independent: edges between every pair sharing a group, scipy's components
        same = g[:, None] == g[None, :]
        r, c = np.nonzero(same)
        rows += r.tolist()
        cols += c.tolist()
    _, ref = connected_components(csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(60, 60)), directed=False)
    got = F.merge_groups(a, b)
    assert (pd.crosstab(got, ref) > 0).sum(axis=1).eq(1).all() and (pd.crosstab(got, ref) > 0).sum(axis=0).eq(1).all()
    assert got[0] == 0 and set(got) == set(range(got.max() + 1))
    with pytest.raises(ConfigError, match="lengths"):
        F.merge_groups(a, b[:5])


def test_cli_folds_group_by_sample_keeps_every_sample_in_one_fold(tmp_path, capsys):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "d", n_train=36, n_test=0, size=32, seed=1, workers=0,
                                   progress=False, fields_per_sample=4)
    samples = pd.read_csv(data / "train.csv").set_index("Id")["Sample"]
    for flag, out in (([], tmp_path / "plain.csv"), (["--group-by-sample"], tmp_path / "by_sample.csv")):
        assert cli_main(["folds", "--kaggle-dir", str(data), "--out", str(out), "--n-splits", "3", *flag]) == 0
    plain, grouped = F.load_folds(tmp_path / "plain.csv"), F.load_folds(tmp_path / "by_sample.csv")
    folds_per_sample = grouped.set_index("Id")["fold"].groupby(samples).nunique()
    assert len(folds_per_sample) == 9 and (folds_per_sample == 1).all()
    assert grouped["group"].nunique() == 9 and sorted(grouped["fold"].unique()) == [0, 1, 2]
    assert (plain.set_index("Id")["fold"].groupby(samples).nunique() > 1).any()  # image-level: samples split
    (tmp_path / "nos").mkdir()
    pd.read_csv(data / "train.csv")[["Id", "Target"]].to_csv(tmp_path / "nos" / "train.csv", index=False)
    (tmp_path / "nos" / "train").symlink_to(data / "train")
    with pytest.raises(HpaDataError, match="Sample"):
        F.folds_for_folders(tmp_path / "nos", group_by_sample=True, n_splits=3)
