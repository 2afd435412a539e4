"""hpa_zoo.infer.predict: submissions and probabilities from presets, checked against a direct NumPy computation."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest


import keras

from tests.test_training import SIZE, build_tiny, make_recipe, synthetic_data, tiny_model  # noqa: E402,F401


def _preset(directory, seed: int, thresholds):
    """A tiny model with random weights saved as a preset with a Team 1 recipe summary (input = image size)."""
    from hpa_zoo.zoo.models_api import save_preset
    from hpa_zoo.train.trainer import recipe_summary

    keras.utils.set_random_seed(seed)
    model = build_tiny(input_shape=(SIZE, SIZE, 4))
    # a bias spread makes the probabilities differ between classes and between the two presets
    logits = model.get_layer("logits")
    logits.bias.assign(np.linspace(-3, 1, 28).astype("float32")[np.random.default_rng(seed).permutation(28)])
    recipe = make_recipe(input_size=SIZE)
    save_preset(model, directory, metadata={"model_name": "tiny_test_cnn", "recipe": recipe_summary(recipe),
                                            "thresholds": list(thresholds)})
    return directory, model


def _test_images(folder):
    from hpa_zoo.data.images import load_rgby

    ids = list(pd.read_csv(folder / "sample_submission.csv", dtype=str)["Id"])
    return ids, np.stack([load_rgby(folder / "test", i) for i in ids])


def test_submission_matches_direct_prediction_and_team1_thresholds(tiny_model, synthetic_data, tmp_path):
    from hpa_zoo.constants import CLASS_NAMES
    from hpa_zoo.data.labels import parse_target
    from hpa_zoo.infer.predict import predict

    th = np.full(28, 0.6)
    preset, model = _preset(tmp_path / "p0", 0, th)
    sub_csv, prob_csv = predict(preset, synthetic_data, out_dir=tmp_path / "out", tta="none", verbose=0)

    ids, images = _test_images(synthetic_data)
    want = 1 / (1 + np.exp(-model.predict(images.astype("float32"), verbose=0)))  # the plain model, no TTA

    probs = pd.read_csv(prob_csv, dtype={"Id": str})
    assert list(probs.columns) == ["Id", *CLASS_NAMES]
    assert list(probs["Id"]) == ids
    np.testing.assert_allclose(probs[list(CLASS_NAMES)].to_numpy(), want, atol=2e-5)

    sub = pd.read_csv(sub_csv, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["Id", "Predicted"] and list(sub["Id"]) == ids  # every test id once, in order
    labels = [parse_target(t) for t in sub["Predicted"]]
    assert all(labels)  # Team 1's force_top: no empty row
    for row, p in zip(labels, want):
        expected = set(np.flatnonzero(p > 0.6)) | {int(p.argmax())}
        assert set(row) == expected


def test_presets_are_averaged_and_default_tta_runs(tiny_model, synthetic_data, tmp_path):
    from hpa_zoo.constants import CLASS_NAMES
    from hpa_zoo.infer.predict import predict

    p0, _ = _preset(tmp_path / "p0", 0, np.full(28, 0.3))
    p1, _ = _preset(tmp_path / "p1", 1, np.full(28, 0.5))
    single = [pd.read_csv(predict(p, synthetic_data, out_dir=tmp_path / f"o{i}", tta="none", verbose=0)[1])
              for i, p in enumerate((p0, p1))]
    sub_csv, prob_csv = predict([p0, p1], synthetic_data, out_dir=tmp_path / "both", tta="none", verbose=0)
    both = pd.read_csv(prob_csv)
    mean = (single[0][list(CLASS_NAMES)].to_numpy() + single[1][list(CLASS_NAMES)].to_numpy()) / 2
    np.testing.assert_allclose(both[list(CLASS_NAMES)].to_numpy(), mean, atol=2e-6)

    # Team 1's TTA (8 dihedral x (whole + 3 crops), max) can only raise the whole-image probability
    _, tta_csv = predict(p0, synthetic_data, out_dir=tmp_path / "tta", verbose=0)
    tta = pd.read_csv(tta_csv)[list(CLASS_NAMES)].to_numpy()
    plain = single[0][list(CLASS_NAMES)].to_numpy()
    assert np.all(tta >= plain - 1e-6) and np.any(tta > plain + 1e-4)

    # every probabilities.csv loads through hpa_zoo.infer.ensemble with its provenance: the presets' model name, the
    # "test" tag (test-set predictions, not out-of-fold ones), and the TTA each was predicted with
    import dataclasses

    from hpa_zoo.infer import ensemble

    recipe_tta = dataclasses.asdict(make_recipe(input_size=SIZE).tta)
    none_tta = {"transforms": "identity", "n_random_crops": 0, "n_random_passes": 0, "aggregate": "mean"}
    assert recipe_tta != none_tta  # Team 1's D4 + crops: the two sidecars must differ
    for path, want_tta in ((prob_csv, none_tta), (tta_csv, recipe_tta)):  # two presets of one model; one preset
        loaded = ensemble.load_predictions(path)
        assert (loaded.model_name, loaded.fold, loaded.tta) == ("tiny_test_cnn", "test", want_tta)
        np.testing.assert_allclose(loaded.probs, pd.read_csv(path)[list(CLASS_NAMES)].to_numpy(), atol=1e-6)


def test_refit_thresholds_need_no_labels_and_bad_values_are_refused(tiny_model, synthetic_data, tmp_path):
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.infer.predict import predict

    preset, _ = _preset(tmp_path / "p0", 0, np.full(28, 0.5))
    sub_csv, _ = predict(preset, synthetic_data, out_dir=tmp_path / "refit", tta="none", thresholds="refit",
                         verbose=0)
    assert len(pd.read_csv(sub_csv)) == 12
    with pytest.raises(ConfigError, match="thresholds"):
        predict(preset, synthetic_data, out_dir=tmp_path / "bad", tta="none", thresholds=[0.5] * 3, verbose=0)
    with pytest.raises(ConfigError, match="tta"):
        predict(preset, synthetic_data, out_dir=tmp_path / "bad", tta="sometimes", verbose=0)


def test_degenerate_lb_ratio_labels_warn_and_the_tie_fallback_caps_them(tiny_model, synthetic_data, tmp_path,
                                                                         caplog):
    caplog.set_level(logging.INFO, logger="hpa_zoo")
    from hpa_zoo.infer.thresholds import DegenerateThresholdsWarning, team1_target_ratios
    from hpa_zoo.infer.predict import predict

    preset, model = _preset(tmp_path / "p0", 0, np.zeros(28))  # thresholds 0: every class on everywhere
    logits = model.get_layer("logits")
    logits.kernel.assign(np.zeros(logits.kernel.shape, "float32"))  # same probabilities for every image: tied
    from hpa_zoo.zoo.models_api import save_preset
    from hpa_zoo.train.trainer import recipe_summary

    save_preset(model, preset, metadata={"model_name": "tiny_test_cnn", "thresholds": [0.0] * 28,
                                         "recipe": recipe_summary(make_recipe(input_size=SIZE))})
    with pytest.warns(DegenerateThresholdsWarning, match=r"on for 100% of 12 images .*tie_fallback=True"):
        sub_csv, _ = predict(preset, synthetic_data, out_dir=tmp_path / "plain", tta="none", verbose=1)
    assert pd.read_csv(sub_csv)["Predicted"].str.split().map(len).eq(28).all()  # the rule as written: all on
    out = caplog.text  # the library logs (hpa_zoo.infer.predict), only the CLI prints
    expect = team1_target_ratios().sum()
    assert f"28.00 labels per image (the target ratios of lb_ratio_match expect {expect:.2f})" in out

    with pytest.warns(DegenerateThresholdsWarning, match="using the tie-aware variant"):
        sub_csv, _ = predict(preset, synthetic_data, out_dir=tmp_path / "rank", tta="none", tie_fallback=True,
                             verbose=0)
    sub = pd.read_csv(sub_csv, dtype=str, keep_default_na=False)
    per_class = np.zeros(28, int)
    for target in sub["Predicted"]:
        for c in target.split():
            per_class[int(c)] += 1
    # tied probabilities cannot be ranked: no class beyond max(1, floor(ratio * 12)) images, here none at all
    assert (per_class <= np.maximum(np.floor(team1_target_ratios() * 12), 1)).all() and per_class.sum() == 0
