"""Training Team 1's metric-learning model on sample ids (teams.md §1.7): a small dedicated loop.

`train_metric_learning` trains ``team1_arcface_resnet50_768`` (or any model whose output is
`zoo_models.teams.team1_metric_learning.ArcMarginProduct` cosines) with Team 1's recipe: one-hot targets over the
**sample** ids of a Kaggle-layout folder (the ``Sample`` column of ``train.csv``, e.g. from ``hpa-zoo synth
--fields-per-sample``; Team 1 used HPAv18 antibody ids), ArcFace s = 30, m = 0.5, easy_margin off, loss =
(CE(arc) + CE(cos)) / 2 (`ArcFaceLoss`), Adam 1e-4 with gradient-norm clipping at 1, the 8 dihedral transforms
as augmentation, and the input divided by 255 inside the model (no mean/std).

Why not `hpa_zoo.train.trainer.train`: its contract is multi-label classification. A recipe's ``train_map`` returns
``(image, multi_hot (28,))``, the trainer fits per-class thresholds, monitors macro F1 / focal loss and saves a
28-class preset. ArcFace needs one-hot targets over K identities, and K comes from the data. Nothing of the
threshold / F1 machinery applies. So this module reuses the recipe pieces (model, loss, optimiser, D4 op,
tf.data batching) in a plain ``keras.Model.fit``.

Interruption loses at most the running epoch: the weights and the epoch count are written atomically after every
epoch to ``out_dir/checkpoint.weights.h5`` + ``state.json``, and calling again with the same settings resumes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import numpy as np

from hpa_zoo.errors import ConfigError, HpaDataError

log = logging.getLogger(__name__)

MODEL_NAME = "team1_arcface_resnet50_768"
STATE_FILE, CHECKPOINT_FILE = "state.json", "checkpoint.weights.h5"


def load_sample_images(data_dir: str | os.PathLike, *, image_size: int, sample_column: str = "Sample",
                       csv_name: str = "train.csv", split: str = "train"
                       ) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Images and sample identities of a Kaggle-layout folder.

    Args:
        data_dir: folder with ``csv_name`` (``Id`` and ``sample_column``) and ``split/`` images.
        image_size: side the images are resized to (cv2 INTER_LINEAR, `hpa_zoo.data.images.load_rgby`).
        sample_column: the identity column.
        csv_name, split: the CSV and the image sub-folder.
    Returns:
        (ids, images (N, S, S, 4) uint8, sample index (N,) int64 into the names, sample names sorted (K,)).
    Raises:
        HpaDataError: a missing CSV, column or image file (named), or an empty sample cell.
    """
    import pandas as pd

    from hpa_zoo.data.images import load_rgby

    csv = Path(data_dir) / csv_name
    if not csv.is_file():
        raise HpaDataError(f"{csv}: not found; metric learning needs a CSV with Id and {sample_column} columns "
                           f"(hpa-zoo synth --fields-per-sample K writes one)")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if not {"Id", sample_column} <= set(table.columns):
        raise HpaDataError(f"{csv}: columns {list(table.columns)}; metric learning trains on sample identities and "
                           f"needs an Id and a {sample_column!r} column")
    empty = table.index[table[sample_column].str.strip() == ""].tolist()
    if empty:
        raise HpaDataError(f"{csv} line {empty[0] + 2}: empty {sample_column}; every image needs its sample id")
    names = sorted(set(table[sample_column]))
    index = {name: k for k, name in enumerate(names)}
    ids = table["Id"].tolist()
    images = np.stack([load_rgby(Path(data_dir) / split, i, size=int(image_size)) for i in ids])
    return ids, images, np.array([index[s] for s in table[sample_column]], np.int64), names


def identity_dataset(images: np.ndarray, targets: np.ndarray, num_classes: int, *, batch_size: int,
                     training: bool, seed: int = 0):
    """tf.data batches of (image float32 (B, S, S, 4) in [0, 255], one-hot (B, K) float32).

    Training: shuffled, one random dihedral transform per image (`hpa_zoo.data.image_ops.random_d4`, teams.md §1.7),
    incomplete batches dropped (`hpa_zoo.data.pipeline.batch_pipeline`); evaluation: in order, unchanged.
    """
    import tensorflow as tf

    from hpa_zoo.data.image_ops import random_d4
    from hpa_zoo.data.pipeline import batch_pipeline

    ds = tf.data.Dataset.from_tensor_slices({"image": images, "target": np.asarray(targets, np.int64)})

    def pair(example, seed=None):
        image = example["image"] if seed is None else random_d4(example["image"], seed)
        return tf.cast(image, tf.float32), tf.one_hot(example["target"], num_classes, dtype=tf.float32)

    return batch_pipeline(ds, pair, batch_size=batch_size, training=training, seed=seed,
                          shuffle_buffer=max(1, len(images)))


def train_metric_learning(data_dir: str | os.PathLike, *, out_dir: str | os.PathLike, image_size: int | None = None,
                          epochs: int | None = None, batch_size: int | None = None,
                          learning_rate: float | None = None, seed: int = 0, model=None, weights=None,
                          sample_column: str = "Sample", verbose: int = 1) -> dict:
    """Train Team 1's metric-learning model on the sample ids of a Kaggle-layout folder (module docstring).

    Args:
        data_dir: folder with ``train.csv`` (Id, Target, Sample) and ``train/``.
        out_dir: ``checkpoint.weights.h5``, ``state.json``, ``history.csv`` and (registry model) ``preset/``.
        image_size: network input side (default 768, teams.md §1.7).
        epochs: epochs (default 50); batch_size: default 32; learning_rate: default 1e-4 (Adam, clipnorm 1).
        seed: shuffling, augmentation and weight initialisation.
        model: a keras.Model (B, S, S, 4) [0, 255] -> (B, K) ArcMarginProduct cosines with K = the number of
            samples; None builds ``team1_arcface_resnet50_768`` with K classes (``weights`` passed to `load`).
        sample_column: the identity column.
        verbose: Keras progress bar (1) or silent (0).
    Returns:
        {"history": {"loss": [...]} per epoch, "num_samples": K, "out_dir", "preset" (registry model only)}.
    Raises:
        ConfigError: fewer than 2 samples, a batch larger than the data, or ``out_dir`` holds another run.
        HpaDataError: see `load_sample_images`.
    """
    import keras
    import pandas as pd

    from hpa_zoo.atomic import atomic_path, atomic_to_csv, atomic_write_text
    from hpa_zoo.recipe import load_recipe

    recipe = load_recipe(MODEL_NAME)  # the team's values, through the registry row
    image_size = int(image_size or recipe.input_size)
    epochs = int(epochs or recipe.epochs)
    batch_size = int(batch_size or recipe.batch_size)
    default_optimizer = recipe.make_optimizer(1, epochs)
    learning_rate = float(learning_rate or float(keras.ops.convert_to_numpy(default_optimizer.learning_rate)))
    clipnorm = default_optimizer.clipnorm
    out = Path(out_dir)
    ids, images, targets, names = load_sample_images(data_dir, image_size=image_size, sample_column=sample_column)
    k = len(names)
    if k < 2:
        raise ConfigError(f"{data_dir}: {k} sample(s); ArcFace needs at least 2 identities to tell apart")
    if batch_size > len(ids):
        raise ConfigError(f"batch_size={batch_size} > {len(ids)} training images; use a smaller --batch-size")
    settings = {"data": str(data_dir), "image_size": image_size, "epochs": epochs, "batch_size": batch_size,
                "learning_rate": learning_rate, "seed": int(seed), "num_samples": k,
                "model": MODEL_NAME if model is None else model.name}
    state = json.loads((out / STATE_FILE).read_text()) if (out / STATE_FILE).is_file() else None
    if state is not None and state["settings"] != settings:
        raise ConfigError(f"{out} holds a metric-learning run with other settings ({state['settings']}); use a new "
                          f"out_dir or the same settings to resume")
    keras.utils.set_random_seed(int(seed))
    if model is None:
        from hpa_zoo.zoo.models_api import load

        model = load(MODEL_NAME, weights=weights, num_classes=k, input_shape=(image_size, image_size, 4))
    if int(model.output_shape[-1]) != k:
        raise ConfigError(f"the model has {model.output_shape[-1]} identities, the data {k} samples")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=clipnorm), loss=recipe.make_loss())
    out.mkdir(parents=True, exist_ok=True)
    history = {"loss": []}
    start = 0
    if state is not None:
        model.optimizer.build(model.trainable_variables)  # so the checkpoint restores Adam's moments too
        model.load_weights(out / CHECKPOINT_FILE)
        history, start = state["history"], int(state["epoch"])
        log.info("metric learning: resuming %s after epoch %d of %d", out, start, epochs)
    ds = identity_dataset(images, targets, k, batch_size=batch_size, training=True, seed=int(seed))

    class _Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            history["loss"].append(float(logs["loss"]))
            with atomic_path(out / CHECKPOINT_FILE) as tmp:
                self.model.save_weights(tmp)
            atomic_write_text(out / STATE_FILE, json.dumps({"settings": settings, "epoch": epoch + 1,
                                                            "history": history}, indent=2))
            log.info("metric learning epoch %d/%d: loss %.4f", epoch + 1, epochs, logs["loss"])

    if start < epochs:
        model.fit(ds, epochs=epochs, initial_epoch=start, callbacks=[_Checkpoint()], verbose=verbose,
                  shuffle=False)  # batch_pipeline shuffles
    atomic_to_csv(pd.DataFrame({"epoch": np.arange(1, len(history["loss"]) + 1), "loss": history["loss"]}),
                  out / "history.csv")
    result = {"history": history, "num_samples": k, "sample_names": names, "out_dir": str(out), "model": model}
    if settings["model"] == MODEL_NAME:
        from hpa_zoo.zoo.models_api import save_preset

        result["preset"] = str(save_preset(model, out / "preset", model_name=MODEL_NAME, metadata={
            "training_data": str(data_dir), "identities": names, "class_names": None,
            "recipe": {"name": "team1_arcface (teams.md §1.7: ArcFace on sample ids)", "image_size": image_size,
                       "input_size": image_size, **{k: settings[k] for k in ("epochs", "batch_size",
                                                                              "learning_rate")}}}))
    return result

