"""hpa_zoo.train.trainer: one trace of the train and validation steps per run, and out-of-fold predictions that load
through hpa_zoo.infer.ensemble with their provenance.

Without a tf.distribute strategy Keras 3 builds the optimizer inside the first traced train step, and a
tf.function that creates variables on its first trace is traced again: every run traced its train step (model
forward + backward + optimizer apply) twice; and each epoch mapped its own pipeline, tracing the recipe's train
map once per epoch. The counters below are Python side effects of ``train_step`` / ``test_step`` and of the maps,
which run once per trace (never per executed step or example).
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest


import keras

from tests.test_training import SIZE, TINY, synthetic_data  # noqa: E402,F401

EPOCHS = 2


@pytest.fixture(scope="module")
def traced_run(synthetic_data, tmp_path_factory):  # noqa: F811
    """A 2-epoch run of the tiny registry row (Team 1's recipe, 1 step per epoch) with trace counters."""
    from hpa_zoo.train import trainer
    from hpa_zoo import registry

    registry.get_spec("team1_densenet121_512")  # fill the table first
    registry.register(registry.ModelSpec(name=TINY, team="test", builder="tests.test_training:build_tiny",
                                         input_size=SIZE, recipe="tests.test_training:make_recipe", classifier="logits"))
    traces = {"train": [], "test": [], "train_map": 0, "eval_map": 0}
    mp = pytest.MonkeyPatch()
    with_targets = trainer._with_output_targets

    def counted_maps(map_fn, keys):  # the train/eval maps handed to tf.data; a Python call = one trace
        inner = with_targets(map_fn, keys)

        def mapped(*args):
            traces["train_map" if len(args) == 2 else "eval_map"] += 1  # (example, seed) vs (example,)
            return inner(*args)

        return mapped

    mp.setattr(trainer, "_with_output_targets", counted_maps)
    for kind, attr in (("train", "train_step"), ("test", "test_step")):
        original = getattr(keras.Model, attr)

        def counted(self, data, _original=original, _kind=kind):
            traces[_kind].append(keras.tree.map_structure(lambda t: (tuple(t.shape), keras.backend.standardize_dtype(t.dtype)), data))
            return _original(self, data)

        mp.setattr(keras.Model, attr, counted)
    out = tmp_path_factory.mktemp("traced_run")
    try:
        trainer.train(TINY, synthetic_data, out_dir=out, epochs=EPOCHS, steps_per_epoch=1, verbose=0)
    finally:
        mp.undo()
        registry.unregister(TINY)
    return out, traces


def test_train_and_validation_steps_are_traced_once_over_epochs(traced_run):
    out, traces = traced_run
    log = pd.read_csv(out / "training_log.csv")
    assert list(log["epoch"]) == list(range(EPOCHS))  # the run really went through every epoch (+ validation)
    assert len(traces["train"]) == 1, f"train_step traced {len(traces['train'])} times: {traces['train']}"
    assert len(traces["test"]) == 1, f"test_step traced {len(traces['test'])} times: {traces['test']}"
    # the tf.data maps: one trace of the train map for all epochs (was one per epoch), one of the eval map
    assert (traces["train_map"], traces["eval_map"]) == (1, 1)
    # the one trace has the full static batch (drop_remainder) and float32 images / targets
    (images, targets), = traces["train"]
    assert images == ((8, 48, 48, 4), "float32") and targets == ((8, 28), "float32")


def test_val_predictions_load_through_ensemble_with_model_fold_and_tta(traced_run, synthetic_data):  # noqa: F811
    from hpa_zoo.infer import ensemble
    from hpa_zoo.constants import CLASS_NAMES
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv

    out, _ = traced_run
    loaded = ensemble.load_predictions(out / "val_predictions.csv")
    assert loaded.model_name == TINY and loaded.fold == 0 and loaded.tta == {"transforms": "none"}
    assert loaded.class_names == CLASS_NAMES
    # the ids are fold 0 of the run's folds table, the labels those of train.csv (read independently)
    folds = pd.read_csv(out / "folds.csv", dtype={"Id": str})
    assert sorted(loaded.ids) == sorted(folds.loc[folds["fold"] == 0, "Id"])
    truth = read_labels_csv(synthetic_data / "train.csv").set_index("Id")
    np.testing.assert_array_equal(loaded.y_true, multi_hot_matrix([truth.loc[i, "labels"] for i in loaded.ids]))
    # the probabilities are the CSV's columns, and the preset's metadata names the same model and fold
    raw = pd.read_csv(out / "val_predictions.csv", dtype={"Id": str})
    np.testing.assert_allclose(loaded.probs, raw[list(CLASS_NAMES)].to_numpy(), atol=1e-6)
    from hpa_zoo.infer.predict import read_preset_metadata

    meta = read_preset_metadata(out / "preset")
    assert (meta["model_name"], meta["fold"]) == (loaded.model_name, loaded.fold)
