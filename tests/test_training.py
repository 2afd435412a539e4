"""hpa_zoo.train.trainer: a real Team 1 recipe (loss, crop + D4 maps, Adam schedule, thresholds) on a tiny CNN.

The tiny CNN stands in for DenseNet121 only to keep CPU time low (the DenseNet path runs in tests/test_demo.py).
It is registered as a registry row for the test's duration, with this module as its recipe module.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


import keras

TINY = "tiny_test_cnn"
SIZE = 64


# ---------------------------------------------------------------------------------------------- helpers
def build_tiny(num_classes=28, input_shape=None, weights=None, **kw):
    """A small CNN with the zoo's contract: (B, S, S, 4) float in [0, 255] -> float32 logits (B, C)."""
    inputs = keras.Input(shape=input_shape or (SIZE, SIZE, 4), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    model = keras.Model(inputs, logits, name=TINY)
    if weights is not None:
        model.load_weights(weights)
    return model


#: extra Recipe fields the tests swap in (e.g. a NaN-producing loss); reset by the fixture.
RECIPE_PATCH: dict = {}


def make_recipe(model_name=None, **overrides):
    """Team 1's real 512 recipe at test sizes, plus `RECIPE_PATCH`."""
    from zoo_models.teams.team1_bestfitting import make_recipe as team1

    overrides = {"image_size": SIZE, "input_size": 48, "batch_size": 8, **overrides}
    return team1("team1_densenet121_512", **overrides, **RECIPE_PATCH)


@pytest.fixture
def tiny_model():
    from hpa_zoo import registry

    spec = registry.ModelSpec(name=TINY, team="test", builder="tests.test_training:build_tiny", input_size=SIZE,
                              recipe="tests.test_training:make_recipe", classifier="logits")
    registry.get_spec("team1_densenet121_512")  # fill the table first
    registry.register(spec)
    RECIPE_PATCH.clear()
    yield TINY
    RECIPE_PATCH.clear()
    registry.unregister(TINY)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """40 train + 12 test synthetic images (64 px) in the Kaggle layout."""
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_train=40, n_test=12, size=SIZE, seed=3,
                                   workers=1)


def _log(out):
    return pd.read_csv(out / "training_log.csv")


def _optimizer_iterations(weights_file) -> int:
    """The optimizer step counter stored in a Keras ``.weights.h5`` (read with h5py, not Keras)."""
    import h5py

    with h5py.File(weights_file, "r") as f:
        return int(np.asarray(f["optimizer"]["vars"]["0"]))


# ---------------------------------------------------------------------------------------------- tests
def test_training_loss_falls_and_outputs_are_consistent(tiny_model, synthetic_data, tmp_path):
    from sklearn.metrics import f1_score

    from hpa_zoo.data.labels import multi_hot_matrix, parse_target
    from hpa_zoo.train.trainer import train

    out = tmp_path / "run"
    preset = train(tiny_model, synthetic_data, out_dir=out, epochs=4, steps_per_epoch=4, verbose=0)

    log = _log(out)
    assert list(log["epoch"]) == list(range(4))
    # Team 1's schedule starts at lr 3e-4: the epoch loss falls steadily, every epoch
    loss = log["loss"].to_numpy()
    assert np.all(np.diff(loss) < 0) and loss[0] - loss[-1] > 0.01, loss.tolist()
    assert {"val_focal", "val_macro_f1", "val_loss"} <= set(log.columns)

    folds = pd.read_csv(out / "folds.csv", dtype={"Id": str})
    valid_ids = set(folds.loc[folds["fold"] == 0, "Id"])
    assert len(folds) == 40 and 0 < len(valid_ids) < 40

    val = pd.read_csv(out / "val_predictions.csv", dtype={"Id": str}, keep_default_na=False)
    assert sorted(val["Id"]) == sorted(valid_ids)
    y_true = multi_hot_matrix([parse_target(t) for t in val["Target"]])
    y_pred = multi_hot_matrix([parse_target(t) for t in val["Predicted"]])
    report = json.loads((out / "val_report.json").read_text())
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0),
                                               abs=1e-6)

    meta = json.loads((preset / "metadata.json").read_text())
    assert len(meta["thresholds"]) == 28 and meta["fold"] == 0
    assert meta["recipe"]["input_size"] == 48 and meta["recipe"]["thresholds"]["rule"] == "lb_ratio_match"
    assert meta["val_macro_f1"] == pytest.approx(report["macro_f1"])
    # Team 1 forces the top class on: no empty validation row; predictions = probs > thresholds, plus argmax
    probs = val[[c for c in val.columns if c not in ("Id", "Target", "Predicted")]].to_numpy()
    expect = probs > np.asarray(meta["thresholds"])[None, :]
    expect[np.arange(len(probs)), probs.argmax(1)] = True
    assert (y_pred.sum(1) > 0).all()
    np.testing.assert_array_equal(y_pred, expect.astype(np.uint8))
    assert (out / "checkpoints" / "best.weights.h5").is_file() and (out / "val_report.md").is_file()
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        assert any((out / "logs").rglob("*tfevents*"))


def test_rerun_with_more_epochs_resumes_model_optimizer_and_epoch(tiny_model, synthetic_data, tmp_path):
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.train.trainer import train

    out, steps = tmp_path / "run", 3
    train(tiny_model, synthetic_data, out_dir=out, epochs=1, steps_per_epoch=steps, verbose=0)
    backup = out / "backup"
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    assert _optimizer_iterations(backup / "latest.weights.h5") == steps

    train(tiny_model, synthetic_data, out_dir=out, epochs=2, steps_per_epoch=steps, verbose=0)
    # resumed: the log gets only epoch index 1 (a restart would log epoch 0 again) and the optimizer continued
    assert list(_log(out)["epoch"]) == [0, 1]
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
    assert _optimizer_iterations(backup / "latest.weights.h5") == 2 * steps

    with pytest.raises(ConfigError, match="batch_size"):
        train(tiny_model, synthetic_data, out_dir=out, epochs=3, steps_per_epoch=steps, batch_size=4, verbose=0)


def test_keep_weights_last_puts_the_final_epoch_in_the_preset_and_best_the_monitors_epoch(tiny_model, synthetic_data,
                                                                                         tmp_path):
    import hpa_zoo
    from hpa_zoo.atomic import load_network_weights
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.train.trainer import train

    x = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 4)).astype(np.float32)

    def outputs(preset=None, weights=None):
        model = hpa_zoo.load(str(preset))
        if weights is not None:
            load_network_weights(model, weights)
        return np.asarray(model.predict(x, verbose=0))

    # "max" on a falling loss: the monitor's best epoch is an early one, so best and last differ
    runs = {}
    for keep in ("last", "best"):
        out = tmp_path / keep
        preset = train(tiny_model, synthetic_data, out_dir=out, epochs=3, steps_per_epoch=3, verbose=0,
                       recipe_overrides={"keep_weights": keep, "monitor": "val_focal", "monitor_mode": "max"})
        runs[keep] = (out, preset, json.loads((preset / "metadata.json").read_text()))
    out, preset, meta = runs["last"]
    assert meta["weights_from"] == "last" and meta["recipe"]["keep_weights"] == "last"
    assert meta["best"]["epoch"] < 3, meta["best"]  # the best epoch is still tracked and recorded
    last = outputs(preset, out / "backup" / "latest.weights.h5")
    np.testing.assert_array_equal(outputs(preset), last)
    assert not np.allclose(outputs(preset, out / "checkpoints" / "best.weights.h5"), last, atol=1e-6)
    out, preset, meta = runs["best"]
    assert meta["weights_from"] == "best" and meta["best"]["epoch"] < 3
    np.testing.assert_array_equal(outputs(preset), outputs(preset, out / "checkpoints" / "best.weights.h5"))
    # a finished run re-run resumes to the same last weights
    again = train(tiny_model, synthetic_data, out_dir=runs["last"][0], epochs=3, steps_per_epoch=3, verbose=0,
                  recipe_overrides={"keep_weights": "last", "monitor": "val_focal", "monitor_mode": "max"})
    np.testing.assert_array_equal(outputs(again), last)
    # ... and re-run with the other choice, it re-finishes from the saved epochs without training: the preset now
    # holds that run's own best epoch, its log still has 3 epochs, and its backup is still the last epoch
    out = runs["last"][0]
    rows_before = len(_log(out))
    switched = train(tiny_model, synthetic_data, out_dir=out, epochs=3, steps_per_epoch=3, verbose=0,
                     recipe_overrides={"keep_weights": "best", "monitor": "val_focal", "monitor_mode": "max"})
    assert json.loads((switched / "metadata.json").read_text())["weights_from"] == "best"
    np.testing.assert_array_equal(outputs(switched), outputs(switched, out / "checkpoints" / "best.weights.h5"))
    assert len(_log(out)) == rows_before == 3
    np.testing.assert_array_equal(outputs(switched, out / "backup" / "latest.weights.h5"), last)
    with pytest.raises(ConfigError, match="keep_weights='newest'.*best.*last"):
        train(tiny_model, synthetic_data, out_dir=tmp_path / "bad", epochs=1, steps_per_epoch=1, verbose=0,
              recipe_overrides={"keep_weights": "newest"})


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tiny_model, synthetic_data, tmp_path):
    from hpa_zoo.nn.losses import BestfittingLoss
    from hpa_zoo.train.trainer import TrainingDivergedError, train
    from zoo_models.teams.team1_bestfitting import make_optimizer

    steps, holder = 3, {}

    def optimizer(steps_per_epoch, epochs):
        holder["opt"] = make_optimizer(steps_per_epoch, epochs)
        return holder["opt"]

    class NanAfterFirstEpoch(BestfittingLoss):
        def call(self, y_true, y_pred):
            it = keras.ops.cast(holder["opt"].iterations, "float32")
            return super().call(y_true, y_pred) + keras.ops.where(it >= steps, np.nan, 0.0)

    RECIPE_PATCH.update(make_optimizer=optimizer, make_loss=NanAfterFirstEpoch)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        train(tiny_model, synthetic_data, out_dir=out, epochs=3, steps_per_epoch=steps, verbose=0)
    msg = str(info.value)
    assert "epoch 2, step 1" in msg and "optimizer step" in msg
    best = out / "checkpoints" / "best.weights.h5"
    assert str(best) in msg and best.is_file()
    # the resume state is the last finished epoch, not the diverged weights
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"] == 1


def test_unknown_precision_and_oversized_input_are_config_errors(tiny_model, synthetic_data, tmp_path):
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.recipe import load_recipe
    from hpa_zoo.train.trainer import train

    with pytest.raises(ConfigError, match="precision"):
        train(tiny_model, synthetic_data, out_dir=tmp_path / "a", precision="fp8", verbose=0)
    with pytest.raises(ConfigError, match="input_size"):
        load_recipe(tiny_model, image_size=64, input_size=96)
    recipe = load_recipe("team1_densenet121_512", epochs=3, image_size=96, input_size=64)
    assert (recipe.epochs, recipe.image_size, recipe.input_size, recipe.batch_size) == (3, 96, 64, 48)


@pytest.mark.parametrize("argv, expected", [([], None), (["--keep-weights", "last"], {"keep_weights": "last"}),
                                            (["--keep-weights", "best"], {"keep_weights": "best"})])
def test_train_cli_passes_keep_weights_as_a_recipe_override(argv, expected, monkeypatch, tmp_path):
    from hpa_zoo import cli
    from hpa_zoo.train import trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda *a, **kw: seen.update(kw))
    assert cli.main(["train", TINY, "--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv]) == 0
    assert seen["recipe_overrides"] == expected
