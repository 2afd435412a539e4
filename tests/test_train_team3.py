"""Team 3 through the generic trainer and predictor (`hpa_zoo.train.trainer.train`, `hpa_zoo.infer.predict.predict`), and the
per-epoch `Recipe.train_sampler` hook.

Team 3's real recipe (`zoo_models.teams.team3_pudae.make_recipe`: focal mean, Adam 5e-4 constant, loss weights
{logits: 1, aux_logits: 0.4}, D4 + policy augmentation, 512 -> 1024 upsampling, SWA of the last N epochs, D4 mean
TTA, proportion-matched thresholds) drives a small stand-in with the *same interface* as Team 3's Inception-v3:
Team 3's normalisation layer, a conv + BatchNorm trunk and the real class-wise attention heads
(`zoo_models.attention.attention_head`) on two feature maps, giving ``{"logits", "aux_logits"}`` when built with
``with_aux=True``. The stand-in is registered as a registry row for the module's duration; its recipe module is
this module. The real Inception-v3 / SE-ResNeXt50 / ResNet34 are the same code path at 10-100x the CPU time.

References are independent of the trainer: NumPy means of checkpoint files read back, NumPy feature means for
the BatchNorm statistics, NumPy D4 transforms for the TTA, the sampler's own output for the batch order.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


import keras
import tensorflow as tf

from hpa_zoo.augment import autoaugment
from zoo_models.teams import team3_pudae as t3  # noqa: E402

STANDIN, SAMPLED = "team3_test_attention_standin", "team3_test_sampled_standin"
IMAGE, INPUT = 32, 48  # images loaded at 32 px and upsampled to 48 px, as Team 3's 512 -> 1024
EPOCHS, STEPS, BATCH, SWA_N = 4, 3, 4, 3
#: load_recipe reads this from the recipe module: the maps resize the whole image (teams.md §3.4).
INPUT_IS_RESIZED_IMAGE = t3.make_recipe("team3_resnet34_512").input_is_resized_image
# Two cheap sub-policies: tracing pudae's 25-branch policy graph takes ~45 s on 2 CPUs.
CHEAP_POLICY = [autoaugment.SubPolicy(autoaugment.PolicyOp("RandomBrightness", 0.5, {"limit": 0.2}),
                                  autoaugment.PolicyOp("RandomContrast", 0.5, {"limit": 0.2})),
                autoaugment.SubPolicy(autoaugment.PolicyOp("InvertImg", 0.25, {}),
                                  autoaugment.PolicyOp("RandomGamma", 0.5, {"gamma_limit": (80, 120)}))]
SAMPLER_CALLS: list = []


# ---------------------------------------------------------------------------------------------- stand-in row
def build_standin(num_classes=28, input_shape=None, weights=None, with_aux=False, **kw):
    """Team 3's Inception-v3 interface in miniature: (B, S, S, 4) [0, 255] -> logits (B, K) float32, or
    ``{"logits", "aux_logits"}`` with ``with_aux`` (aux head on the earlier feature map)."""
    from zoo_models.attention import attention_head
    from zoo_models.teams.team3_pudae import PerImageStandardization

    inputs = keras.Input(shape=input_shape or (INPUT, INPUT, 4), name="image")
    x = PerImageStandardization(name="input_norm")(inputs)
    early = keras.layers.ReLU(name="relu1")(keras.layers.BatchNormalization(name="bn1")(
        keras.layers.Conv2D(8, 3, strides=2, name="conv1")(x)))
    late = keras.layers.ReLU(name="relu2")(keras.layers.Conv2D(16, 3, strides=2, name="conv2")(early))
    logits = attention_head(late, num_classes, attention_size=4, name="attention", output_name="logits")
    outputs = logits
    if with_aux:
        outputs = {"logits": logits, "aux_logits": attention_head(early, num_classes, attention_size=8,
                                                                  name="aux_attention", output_name="aux_logits")}
    model = keras.Model(inputs, outputs, name=STANDIN)
    if weights is not None:
        model.load_weights(weights)
    return model


def same_resize_map(example, seed):
    """A deterministic train map (the eval transform): lets the sampler test identify every image it sees."""
    del seed
    return t3.make_recipe("team3_resnet34_512", policy=CHEAP_POLICY, image_size=IMAGE,
                          input_size=INPUT).eval_map(example)


def one_class_sampler(ids, labels, *, seed, batch_size):
    """Only the training images of the most frequent class, repeated to 3/4 of an epoch, shuffled by ``seed``."""
    SAMPLER_CALLS.append(seed)
    cls = int(np.argmax(labels.sum(0)))
    chosen = [i for i, row in zip(ids, labels) if row[cls] > 0.5]
    rng = np.random.default_rng(seed)
    return list(rng.choice(chosen, size=3 * len(ids) // 4, replace=True))


def leaking_sampler(ids, labels, *, seed, batch_size):
    return list(ids) + ["not_a_training_id"]


RECIPE_PATCH: dict = {}


def make_recipe(model_name=None, **overrides):
    """Team 3's Inception-v3 recipe at test sizes (swa_last_n 3, no accumulation), or for `SAMPLED` the
    single-output ResNet34 recipe with `one_class_sampler` and an identifiable train map; plus `RECIPE_PATCH`."""
    base = dict(policy=CHEAP_POLICY, image_size=IMAGE, input_size=INPUT, batch_size=BATCH, grad_accum_steps=1,
                swa_last_n=SWA_N)
    if model_name == SAMPLED:
        base.update(swa_last_n=0, train_sampler=one_class_sampler, train_map=same_resize_map)
        return t3.make_recipe("team3_resnet34_512", **{**base, **overrides, **RECIPE_PATCH})
    return t3.make_recipe("team3_attention_inceptionv3_1024", **{**base, **overrides, **RECIPE_PATCH})


@pytest.fixture(scope="module")
def rows():
    from hpa_zoo import registry

    registry.get_spec("team3_resnet34_512")  # fill the table first
    for name in (STANDIN, SAMPLED):
        registry.register(registry.ModelSpec(name=name, team="test", builder="tests.test_train_team3:build_standin",
                                             input_size=INPUT, recipe="tests.test_train_team3:make_recipe", classifier="logits"))
    yield
    for name in (STANDIN, SAMPLED):
        registry.unregister(name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from hpa_zoo.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("t3train") / "data", n_train=24, n_test=4, size=IMAGE,
                                   seed=11, workers=0, progress=False)


@pytest.fixture(scope="module")
def run(rows, data, tmp_path_factory):
    """One generic-trainer run of the Team 3 recipe on the stand-in: (out_dir, preset)."""
    from hpa_zoo.train.trainer import train

    out = tmp_path_factory.mktemp("t3run") / "run"
    preset = train(STANDIN, data, out_dir=out, epochs=EPOCHS, steps_per_epoch=STEPS, seed=0, verbose=0)
    return out, preset


def _train_images(out, data):
    """The fold-0 training images with the validation transform: float32 (N, INPUT, INPUT, 4)."""
    from hpa_zoo.data import sources

    folds = pd.read_csv(out / "folds.csv", dtype={"Id": str})
    ids = list(folds.loc[folds["fold"] != 0, "Id"])
    src = sources.folder_dataset(data / "train", data / "train.csv", ids=ids, image_size=IMAGE)
    recipe = make_recipe()
    return ids, np.stack([recipe.eval_map(e)[0].numpy() for e in src])


# ---------------------------------------------------------------------------------------------- recipe loading
def test_team3_recipes_may_upsample_and_team1_may_not(rows):
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.recipe import load_recipe

    recipe = load_recipe("team3_attention_inceptionv3_1024", image_size=32, input_size=96)
    assert (recipe.image_size, recipe.input_size) == (32, 96)
    assert (load_recipe("team3_attention_inceptionv3_1024").image_size,
            load_recipe("team3_attention_inceptionv3_1024").input_size) == (512, 1024)  # teams.md §3.4
    with pytest.raises(ConfigError, match="crop of the loaded image"):
        load_recipe("team1_densenet121_512", image_size=64, input_size=96)


# ---------------------------------------------------------------------------------------------- one run
def test_loss_falls_and_aux_loss_weighs_point_four_in_the_total(run):
    out, _ = run
    log = pd.read_csv(out / "training_log.csv")
    assert list(log["epoch"]) == list(range(EPOCHS))
    # teams.md §3.2: loss = L(main) + 0.4 L(aux), in training and in validation
    for prefix in ("", "val_"):
        np.testing.assert_allclose(log[f"{prefix}loss"],
                                   log[f"{prefix}logits_loss"] + 0.4 * log[f"{prefix}aux_logits_loss"], rtol=1e-4)
    assert log["logits_loss"].iloc[-1] < log["logits_loss"].iloc[0]
    assert log["val_logits_loss"].iloc[-1] < log["val_logits_loss"].iloc[0]
    # metrics are attached to the main output only
    assert {"val_logits_focal", "val_logits_macro_f1"} <= set(log.columns)
    assert not [c for c in log.columns if c.startswith(("aux_logits_", "val_aux_logits_")) and
                not c.endswith("_loss")]
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["monitor"] == "val_logits_loss"  # the main output's, not the aux-weighted total
    assert best["value"] == pytest.approx(log["val_logits_loss"].min(), rel=1e-6)
    assert best["epoch"] == int(log["val_logits_loss"].idxmin()) + 1


def test_preset_is_the_swa_mean_of_the_last_epochs_with_bn_recalibrated(run, data):
    from hpa_zoo import load

    out, preset = run
    files = sorted((out / "checkpoints" / "epochs").glob("epoch_*.weights.h5"))
    assert [f.name for f in files] == [f"epoch_{e:03d}.weights.h5" for e in range(EPOCHS - SWA_N + 1, EPOCHS + 1)]
    meta = json.loads((preset / "metadata.json").read_text())
    assert meta["weights_from"] == "swa" and meta["swa"]["averaged"] == [f.name for f in files]
    assert meta["swa"]["last_n"] == SWA_N

    model = load(preset)
    assert not isinstance(model.output, dict) and model.output_shape == (None, 28)  # aux dropped
    five = load(preset, num_classes=5)  # fine-tuning: surgery.replace_head swaps the attention head's convs
    assert five.output_shape == (None, 5) and five.get_layer("attention_class_conv").kernel.shape[-1] == 5
    snapshots = []
    for f in files:  # each epoch's weights, read back with a fresh training-graph model
        m = build_standin(with_aux=True)
        m.load_weights(f)
        snapshots.append({w.path: keras.ops.convert_to_numpy(w) for w in m.weights})
    stats = ("bn1/moving_mean", "bn1/moving_variance")
    for w in model.weights:
        got = keras.ops.convert_to_numpy(w)
        if w.path not in stats:
            np.testing.assert_allclose(got, np.mean([s[w.path] for s in snapshots], 0), rtol=1e-5, atol=1e-7)
    # teams.md §3.3 bn_update: the statistics are the average over the training images (validation transform)
    # of the features entering the BN layer, not the last checkpoint's running averages
    ids, images = _train_images(out, data)
    assert meta["swa"]["bn_images"] == len(ids)
    conv1 = keras.Model(model.input, model.get_layer("conv1").output)
    feats = np.concatenate([keras.ops.convert_to_numpy(conv1(images[i:i + BATCH]))
                            for i in range(0, len(images), BATCH)]).astype(np.float64)
    mean = keras.ops.convert_to_numpy(model.get_layer("bn1").moving_mean)
    np.testing.assert_allclose(mean, feats.reshape(-1, 8).mean(0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(mean, snapshots[-1]["bn1/moving_mean"], atol=1e-4)


def test_predict_uses_logits_with_d4_mean_tta_and_a_training_model_gives_the_same(run, data, tmp_path):
    from hpa_zoo import load
    from hpa_zoo.constants import CLASS_NAMES
    from hpa_zoo.data.images import load_rgby
    from hpa_zoo.infer.predict import predict
    from zoo_models.surgery import transplant_weights

    _, preset = run
    _, prob_csv = predict(preset, data, out_dir=tmp_path / "p", verbose=0)  # the recipe's TTA: 8 x D4, mean
    got = pd.read_csv(prob_csv, dtype={"Id": str})
    ids = list(pd.read_csv(data / "sample_submission.csv", dtype=str)["Id"])
    assert list(got["Id"]) == ids
    images = np.stack([load_rgby(data / "test", i) for i in ids])
    x = tf.image.resize(images.astype(np.float32), (INPUT, INPUT), method="bilinear").numpy()  # no rounding
    model = load(preset)
    views = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    views += [np.rot90(x.transpose(0, 2, 1, 3), k, axes=(1, 2)) for k in range(4)]
    want = np.mean([1 / (1 + np.exp(-model.predict(np.ascontiguousarray(v), verbose=0))) for v in views], 0)
    np.testing.assert_allclose(got[list(CLASS_NAMES)].to_numpy(), want, atol=1e-4)

    # a two-output training model with the same weights: predict takes its "logits" and drops aux
    training_model = build_standin(with_aux=True)
    transplant_weights(model, training_model, first_conv=None, match="name")
    _, plain = predict(model, data, out_dir=tmp_path / "a", tta="none", verbose=0)  # bare models: same reading
    _, direct = predict(training_model, data, out_dir=tmp_path / "b", tta="none", verbose=0)
    np.testing.assert_allclose(pd.read_csv(direct)[list(CLASS_NAMES)].to_numpy(),
                               pd.read_csv(plain)[list(CLASS_NAMES)].to_numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------- sampler
def test_sampler_sets_each_epochs_ids_order_and_steps(rows, data, tmp_path, monkeypatch):
    """The batches the model is fed are exactly the sampler's ids, in its order, epoch by epoch; the seeds are
    a function of (run seed, epoch); steps default to len(ids) // batch; a re-run resumes on the next epoch's
    batches. The recorded streams are what ``model.fit`` consumed (deterministic, so iterating them again
    replays the same batches)."""
    from hpa_zoo.train import trainer
    from hpa_zoo.data.labels import multi_hot_matrix, read_labels_csv

    streams = []
    original = trainer._epoch_stream
    monkeypatch.setattr(trainer, "_epoch_stream", lambda *a, **k: streams.append(original(*a, **k)) or streams[-1])
    SAMPLER_CALLS.clear()
    out = tmp_path / "run"
    trainer.train(SAMPLED, data, out_dir=out, epochs=1, seed=3, verbose=0)
    trainer.train(SAMPLED, data, out_dir=out, epochs=2, seed=3, verbose=0)  # resumes at epoch 2

    folds = pd.read_csv(out / "folds.csv", dtype={"Id": str})
    train_ids = list(folds.loc[folds["fold"] != 0, "Id"])
    table = read_labels_csv(data / "train.csv").set_index("Id")
    labels = multi_hot_matrix([table.loc[i, "labels"] for i in train_ids]).astype(np.float32)
    SAMPLER_CALLS.clear()
    expected = [one_class_sampler(train_ids, labels, seed=trainer.epoch_seed(3, e), batch_size=BATCH)
                for e in range(2)]
    assert len(set(SAMPLER_CALLS)) == 2  # a different seed per epoch
    steps = len(expected[0]) // BATCH
    state = json.loads((out / "backup" / "training_metadata.json").read_text())
    assert state["iterations"] == 2 * steps  # the default steps_per_epoch, in both processes' epochs

    lookup = {same_resize_map(e, None)[0].numpy().tobytes(): i for i, e in zip(train_ids, _examples(data, train_ids))}
    seen = [[lookup[img.tobytes()] for images, _ in stream for img in images.numpy()] for stream in streams]
    # the first call is fed epoch 1, the resumed call exactly epoch 2 (not epoch 1 again)
    assert seen == [expected[0][:steps * BATCH], expected[1][:steps * BATCH]]
    cls = int(np.argmax(labels.sum(0)))
    assert all(cls in table.loc[i, "labels"] for i in seen[0] + seen[1])  # only the sampled class, with repeats
    assert len(set(seen[0])) < len(seen[0])


def _examples(data, ids):
    from hpa_zoo.data import sources

    return list(sources.folder_dataset(data / "train", data / "train.csv", ids=ids, image_size=IMAGE))


def test_sampler_may_not_return_validation_or_unknown_ids(rows, data, tmp_path):
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.train.trainer import train

    RECIPE_PATCH.update(train_sampler=leaking_sampler)
    try:
        with pytest.raises(ConfigError, match="not in the training split of fold 0.*not_a_training_id"):
            train(SAMPLED, data, out_dir=tmp_path / "leak", epochs=1, verbose=0)
    finally:
        RECIPE_PATCH.clear()


def test_tfds_sampled_epoch_keeps_the_multiplicities():
    from hpa_zoo.train.sampling import sampled_source

    ids = [f"id{i}" for i in range(6)]
    src = tf.data.Dataset.from_tensor_slices({"id": tf.constant(ids), "image": tf.zeros((6, 2, 2, 4), tf.uint8),
                                              "multi_hot": tf.zeros((6, 28), tf.uint8)})
    epoch = ["id1", "id1", "id1", "id4", "id5", "id4"]  # id0, id2, id3 left out
    ds = sampled_source("hpa_kaggle/32", src, epoch, image_size=2, seed=5)
    got = [e["id"].decode() for e in ds.as_numpy_iterator()]
    assert sorted(got) == sorted(epoch) and int(ds.cardinality()) == len(epoch)
