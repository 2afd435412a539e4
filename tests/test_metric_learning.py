"""hpa_zoo.train.metric_learning: Team 1's ArcFace recipe on sample ids — a few steps reduce the loss, the loss the
compiled model reports equals the NumPy ArcFace reference on its own cosines, the targets are the Sample column,
and an interrupted run resumes."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hpa_zoo.train import metric_learning as M
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.data.synthetic import write_synthetic_dataset
from zoo_models.teams import team1_metric_learning as ml


def _numpy_loss(cos, y, s=30.0, m=0.5):
    """(CE(ArcFace logits) + CE(s=1 raw cosines)) / 2, mean over the batch, from the formulas (teams.md §1.7)."""
    sin = np.sqrt(np.clip(1.0 - cos ** 2, 0, None))
    phi = np.where(cos > math.cos(math.pi - m), cos * math.cos(m) - sin * math.sin(m), cos - math.sin(math.pi - m) * m)
    arc = s * (y * phi + (1 - y) * cos)

    def ce(z):
        z = z - z.max(1, keepdims=True)
        return -(y * (z - np.log(np.exp(z).sum(1, keepdims=True)))).sum(1)

    return float(np.mean((ce(arc) + ce(cos)) / 2))


def _tiny(k, size=32):
    import keras

    x = keras.Input((size, size, 4))
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(16)(h)
    emb = keras.layers.BatchNormalization(name="embedding")(h)
    return keras.Model(x, ml.ArcMarginProduct(k, name="logits")(emb), name="tiny_arcface")


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("ml") / "d", n_train=24, n_test=0, size=32, seed=3,
                                   workers=0, progress=False, fields_per_sample=4)


def test_a_few_steps_reduce_the_arcface_loss_which_equals_numpy(sampled, tmp_path):
    import keras

    ids, images, targets, names = M.load_sample_images(sampled, image_size=32)
    table = pd.read_csv(sampled / "train.csv")
    assert ids == list(table["Id"]) and [names[t] for t in targets] == list(table["Sample"])  # the Sample column
    keras.utils.set_random_seed(0)
    model = _tiny(len(names))
    result = M.train_metric_learning(sampled, out_dir=tmp_path / "run", image_size=32, epochs=12, batch_size=8,
                                     learning_rate=3e-3, model=model, verbose=0)
    loss = result["history"]["loss"]
    assert len(loss) == 12 and np.mean(loss[-3:]) < 0.8 * np.mean(loss[:3])
    y = np.eye(len(names), dtype=np.float32)[targets]
    cos = np.asarray(model.predict(images.astype(np.float32), verbose=0), np.float64)
    reported = model.evaluate(images.astype(np.float32), y, batch_size=len(y), verbose=0)
    assert reported == pytest.approx(_numpy_loss(cos, y), rel=1e-4)
    opt = model.optimizer
    assert float(opt.clipnorm) == 1.0 and isinstance(model.loss, ml.ArcFaceLoss)
    assert (model.loss.s, model.loss.m) == (30.0, 0.5)
    # resume: the same call finds all epochs done and trains nothing more
    again = M.train_metric_learning(sampled, out_dir=tmp_path / "run", image_size=32, epochs=12, batch_size=8,
                                    learning_rate=3e-3, model=_tiny(len(names)), verbose=0)
    assert again["history"]["loss"] == loss
    with pytest.raises(ConfigError, match="other settings"):
        M.train_metric_learning(sampled, out_dir=tmp_path / "run", image_size=32, epochs=13, batch_size=8,
                                learning_rate=3e-3, model=_tiny(len(names)), verbose=0)


def test_training_batches_are_dihedral_transforms_with_one_hot_sample_targets(sampled):
    ids, images, targets, names = M.load_sample_images(sampled, image_size=32)
    batch_x, batch_y = next(iter(M.identity_dataset(images, targets, len(names), batch_size=24, training=True,
                                                    seed=1)))
    batch_x, batch_y = batch_x.numpy(), batch_y.numpy()
    assert batch_y.shape == (24, len(names)) and np.all(batch_y.sum(1) == 1)
    for x, y in zip(batch_x, batch_y):  # each one is one of the 8 D4 views of a training image of its sample
        views = [np.rot90(im, r) for i, im in enumerate(images) if targets[i] == y.argmax()
                 for flip in (im, im[:, ::-1]) for r, im in ((r, flip) for r in range(4))]
        assert any(np.array_equal(x, v) for v in views)


def test_bad_sample_tables_are_named(tmp_path, sampled):
    (tmp_path / "d").mkdir()
    pd.read_csv(sampled / "train.csv")[["Id", "Target"]].to_csv(tmp_path / "d" / "train.csv", index=False)
    with pytest.raises(HpaDataError, match="'Sample'"):
        M.load_sample_images(tmp_path / "d", image_size=32)
    with pytest.raises(ConfigError, match="batch_size"):
        M.train_metric_learning(sampled, out_dir=tmp_path / "o", image_size=32, batch_size=99, model=_tiny(6))


@pytest.mark.slow  # ResNet50's training graph: ~80 s on 2 shared cores
def test_the_registry_model_trains_into_a_preset_that_embeds_like_it(sampled, tmp_path):
    import hpa_zoo

    result = M.train_metric_learning(sampled, out_dir=tmp_path / "run", image_size=32, epochs=1, batch_size=8,
                                     verbose=0)
    info = hpa_zoo.preset_info(result["preset"])
    assert info["metadata"]["identities"] == sorted(pd.read_csv(sampled / "train.csv")["Sample"].unique())
    model = hpa_zoo.load(result["preset"])
    assert model.output_shape == (None, 6) and model.get_layer("conv1_conv").kernel.shape[2] == 4
    _, images, _, _ = M.load_sample_images(sampled, image_size=32)
    x = images[:4].astype(np.float32)
    emb = np.asarray(hpa_zoo.feature_extractor(model)(x, training=False))
    ref = np.asarray(hpa_zoo.feature_extractor(result["model"])(x, training=False))
    assert emb.shape == (4, 512)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-5)


def test_cli_train_embedding_names_a_missing_sample_column(tmp_path, sampled, capsys):
    from hpa_zoo.cli import main

    (tmp_path / "d").mkdir()
    pd.read_csv(sampled / "train.csv")[["Id", "Target"]].to_csv(tmp_path / "d" / "train.csv", index=False)
    assert main(["train-embedding", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--image-size", "32"]) == 1
    assert "'Sample'" in capsys.readouterr().err
