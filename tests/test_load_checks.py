"""A small version of benchmarks/load_checks.py (the full one: 20,000 images, 1,000,000 rows; figures in
benchmarks/README.md): streaming predict with TTA and embed keep resident memory flat, evaluate is vectorised."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import load_checks  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return load_checks.write_test_folder(tmp_path_factory.mktemp("load") / "kaggle", 3000)


def test_predict_with_tta_and_embed_stream_in_bounded_memory(folder):
    predicted = load_checks.predict_memory(folder, first=500, chunk=500)
    embedded = load_checks.embed_memory(folder, first=500, chunk=500)
    print("predict", predicted, "\nembed", embedded)
    assert predicted["images"] == embedded["images"] == embedded["features"] == 3000
    assert predicted["growth_mb"] < 100 and embedded["growth_mb"] < 100


def test_evaluate_two_hundred_thousand_rows_quickly(tmp_path):
    result = load_checks.evaluate_time(tmp_path, 200_000)
    print(result)
    assert result["rows"] == 200_000 and 0.0 < result["macro_f1"] < 0.2  # random labels: chance level
    assert result["seconds"] < 15  # measured ~1.2 s; 1,000,000 rows: benchmarks/README.md


def test_vectorised_and_row_by_row_csv_readers_agree(tmp_path):
    """read_labels_csv reads an all-valid CSV without a loop per row; a CSV with one bad row goes row by row
    (on_error="skip" drops it): the good rows come out the same either way, and multi_hot_matrix / parse_targets
    match the per-row functions."""
    import numpy as np

    from hpa_zoo.data.labels import multi_hot_matrix, parse_target, parse_targets, read_labels_csv

    rows = "Id,Target\r\n a ,7 1 2 0\r\nb,1 1\r\nc, 27 \r\nd,3;4\r\n"
    good = tmp_path / "good.csv"
    good.write_bytes(b"\xef\xbb\xbf" + rows.encode())
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xef\xbb\xbf" + (rows + "e,99\r\n").encode())
    fast = read_labels_csv(good)
    slow = read_labels_csv(bad, on_error="skip")
    assert len(slow.attrs["skip_report"]) == 1
    assert fast.to_dict("list") == slow.to_dict("list") == {
        "Id": ["a", "b", "c", "d"], "Target": ["7 1 2 0", "1 1", "27", "3;4"],
        "labels": [(0, 1, 2, 7), (1,), (27,), (3, 4)]}
    lists = [(0, 1, 2, 7), (), (27,), (3, 4)]
    expected = np.zeros((4, 28), np.uint8)
    for i, labels in enumerate(lists):
        expected[i, list(labels)] = 1
    np.testing.assert_array_equal(multi_hot_matrix(lists), expected)
    texts = ["7 1", "", " 27", "7 1"]
    assert parse_targets(texts, where=str, allow_empty=True) == [parse_target(t) if t.strip() else () for t in texts]
    with pytest.raises(Exception, match=r"row 3: Target '28' has class id 28"):
        parse_targets(["1", "2", "3", "28"], where=lambda k: f"row {k}")
