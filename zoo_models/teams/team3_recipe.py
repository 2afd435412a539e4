"""Team 3 — pudae (Park Jinmo), 3rd place: attention Inception-v3 / SE-ResNeXt50 at 1024 px, ResNet34 at 512 px,
focal loss averaged over all elements, constant-LR Adam with gradient accumulation, the searched AutoAugment
policy, SWA over the last 10 epochs, D4 mean-TTA and proportion-matched thresholds (teams.md §3).

The method section, in order: constants (each citing `docs/teams.md`), the loss (with Inception-v3's
auxiliary head), the optimiser, the data maps, the recipe for `hpa_zoo.train.trainer`, SWA after training
(`apply_swa`), and the final blend (`blend_team3`). The model builders live in `zoo_models.teams.team3_pudae`; the
normalisation (per-image z-score for the 1024 models, (x - 127.5)/255 for ResNet34, §3.4) is inside the models,
so the maps here produce [0, 255] float32 images.

Deviations / inferences (also in the recipe ``notes``): Keras' ``gradient_accumulation_steps`` applies the *mean*
of the accumulated gradients (PyTorch sums them unless the loss is divided; Adam is invariant to that scale up to
its epsilon). Thresholds are fitted on the trainer's validation split, pudae used a separate hold-out
(``test_val``, §3.4); pass held-out probabilities to `hpa_zoo.infer.thresholds.fit_thresholds` to do the same.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import numpy as np

from hpa_zoo.errors import ConfigError
from hpa_zoo.recipe import Recipe, ThresholdConfig, TTAConfig

# ---------------------------------------------------------------------------------------------- constants
#: teams.md §3.3: binary focal loss, γ = 2, no α, **mean over all B×28 elements**.
FOCAL_GAMMA = 2.0
FOCAL_REDUCTION = "mean"
#: teams.md §3.2: Inception-v3 loss = L(main) + 0.4·L(aux); the aux head is an attention head on Mixed_6e.
MAIN_OUTPUT, AUX_OUTPUT = "logits", "aux_logits"
AUX_LOSS_WEIGHT = 0.4

#: teams.md §3.3: Adam, lr 5e-4 constant (scheduler "none"), β (0.9, 0.999), no weight decay.
LEARNING_RATE = 5e-4
BETA_1, BETA_2 = 0.9, 0.999

#: teams.md §3.4: every model reads the 512-px RGBY PNGs; the 1024 models upsample them (bilinear Resize).
IMAGE_SIZE = 512

class ModelFacts(NamedTuple):
    """teams.md §3.1, one final model: builder, input side, per-step batch, gradient accumulation, epochs
    (ResNet34: epochs 0..40 = 41), and whether it has Inception-v3's auxiliary output."""
    builder: str  # function of zoo_models.teams.team3_pudae
    input_size: int
    batch_size: int
    grad_accum_steps: int
    epochs: int
    aux: bool = False


MODELS: dict[str, ModelFacts] = {
    "team3_attention_inceptionv3_1024": ModelFacts("build_team3_attention_inceptionv3_1024", 1024, 24, 2, 28, True),
    "team3_attention_se_resnext50_1024": ModelFacts("build_team3_attention_se_resnext50_1024", 1024, 8, 4, 23),
    "team3_resnet34_512": ModelFacts("build_team3_resnet34_512", 512, 32, 1, 41),
}

#: teams.md §3.5: the final training policy = the 25 sub-policies of ``pudae:data/best_policy.data``.
DEFAULT_POLICY = "team3"
#: teams.md §3.3: SWA = equal-weight average of the last 10 epoch checkpoints, then BN recalibration.
SWA_LAST_N = 10
#: teams.md §3.4: every model's input is the whole (augmented) image *resized* to the input side, never a crop,
#: so `hpa_zoo.train.trainer.load_recipe` accepts input_size > image_size (the 1024 models upsample the 512 PNGs).
INPUT_IS_RESIZED_IMAGE = True

#: teams.md §3.1 / §3.6: blend = weighted mean of probabilities; each resnet34 fold 1/5, inception-v3 1,
#: se-resnext50 1.
BLEND_WEIGHTS: dict[str, float] = {
    "team3_resnet34_512": 1.0 / 5.0,
    "team3_attention_inceptionv3_1024": 1.0,
    "team3_attention_se_resnext50_1024": 1.0,
}

NOTES = ("Gradient accumulation averages the k gradients (Keras) where PyTorch sums them; Adam is scale-invariant "
         "up to epsilon. The 1024 models augment the 512 image and then upsample it (teams.md §3.4). Thresholds: "
         "proportion matching on whatever split they are fitted on (pudae: the test_val hold-out). hpa_zoo.train.trainer "
         "checkpoints every epoch and makes the preset the SWA model (BatchNorm recalibrated on the training split "
         "with the validation transform); the best-on-val_logits_loss checkpoint is kept beside it.")


# ---------------------------------------------------------------------------------------------- loss
def make_loss(aux: bool = False):
    """teams.md §3.3: focal loss γ=2 averaged over all elements (`hpa_zoo.nn.losses.FocalLoss`, mode ``"mean"``).

    With ``aux`` (Inception-v3, §3.2) a dict ``{"logits": loss, "aux_logits": loss}``, to be combined with
    ``loss_weights={"logits": 1.0, "aux_logits": 0.4}`` (`Recipe.loss_weights`; `hpa_zoo.train.trainer.train` passes
    them to ``compile`` and feeds every output the same multi-hot target). Each loss maps
    (y_true (B, 28), logits (B, 28)) to a float32 scalar.
    """
    from hpa_zoo.nn.losses import FocalLoss

    if not aux:
        return FocalLoss(gamma=FOCAL_GAMMA, mode=FOCAL_REDUCTION, name="focal_mean")
    return {key: FocalLoss(gamma=FOCAL_GAMMA, mode=FOCAL_REDUCTION, name=f"{key}_focal_mean")
            for key in (MAIN_OUTPUT, AUX_OUTPUT)}


# ---------------------------------------------------------------------------------------------- optimiser
def make_optimizer(steps_per_epoch: int, epochs: int, *, grad_accum_steps: int = 1):
    """teams.md §3.3: Adam(lr 5e-4 constant, β 0.9/0.999, no weight decay), stepping every `grad_accum_steps`
    batches (Keras ``gradient_accumulation_steps``). `steps_per_epoch`/`epochs` are unused: the LR is constant.

    Returns ``keras.optimizers.Adam``.
    """
    import keras

    del steps_per_epoch, epochs
    if int(grad_accum_steps) < 1:
        raise ConfigError(f"grad_accum_steps={grad_accum_steps}: use 1 (no accumulation) or more")
    return keras.optimizers.Adam(learning_rate=LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2,
                                 gradient_accumulation_steps=int(grad_accum_steps) if grad_accum_steps > 1 else None)


# ---------------------------------------------------------------------------------------------- data maps
def train_map(example: dict, seed, *, policy, input_size: int):
    """teams.md §3.5 training transform: base D4 (RandomRotate90, Flip, Transpose, p=0.5 each) + ONE sub-policy
    of `policy` chosen uniformly (`hpa_zoo.augment.transforms.apply_policy`), then Resize to ``input_size`` (the 1024 models
    upsample the 512 image, §3.4). Normalisation is inside the model.

    Args:
        example: ``{"image": uint8 (H, W, 4), "multi_hot": uint8 (28,), ...}`` (H = W = the recipe's image_size).
        seed: int (2,) tensor, the stateless per-example seed.
        policy: list of `hpa_zoo.augment.transforms.SubPolicy`.
    Returns:
        (image float32 (input_size, input_size, 4) in [0, 255], multi_hot float32 (28,)).
    """
    import tensorflow as tf

    from hpa_zoo.augment import transforms
    from hpa_zoo.data import pipeline

    image = transforms.apply_policy(example["image"], policy, seed)
    image = pipeline.resize(image, input_size)
    return tf.cast(image, tf.float32), tf.cast(example["multi_hot"], tf.float32)


# ---------------------------------------------------------------------------------------------- recipe
def make_recipe(model_name: str = "team3_attention_inceptionv3_1024", *, policy: Any = DEFAULT_POLICY,
                **overrides) -> Recipe:
    """Team 3's recipe for one of `MODELS`; ``overrides`` replace `Recipe` fields.

    Args:
        model_name: ``"team3_attention_inceptionv3_1024"``, ``"team3_attention_se_resnext50_1024"`` or
            ``"team3_resnet34_512"``.
        policy: the AutoAugment policy: a packaged name (``"team3"``, pudae's final 25 sub-policies), a policy
            JSON path (e.g. written by ``hpa-zoo autoaugment-search``), or a list of `hpa_zoo.augment.transforms.SubPolicy`.
        overrides: any `Recipe` field; ``image_size`` / ``input_size`` also rebuild the data maps,
            ``grad_accum_steps`` the optimiser factory.
    Returns:
        `hpa_zoo.recipe.Recipe` (Inception-v3: ``loss_weights={"logits": 1.0, "aux_logits": 0.4}`` and a dict loss).
    Raises:
        ConfigError: unknown model name, or a bad policy file.
    """
    from hpa_zoo.augment import transforms
    from zoo_models.teams.team1_bestfitting import eval_map as team1_eval_map

    if model_name not in MODELS:
        raise ConfigError(f"make_recipe: {model_name!r} is not a Team 3 model; use one of {sorted(MODELS)}")
    facts = MODELS[model_name]
    sub_policies = list(policy) if isinstance(policy, (list, tuple)) else transforms.load_policy(policy)
    image_size = int(overrides.pop("image_size", IMAGE_SIZE))
    input_size = int(overrides.pop("input_size", facts.input_size))
    grad_accum = int(overrides.pop("grad_accum_steps", facts.grad_accum_steps))
    fields = dict(
        name=model_name.replace("_attention", ""),
        image_size=image_size,
        input_size=input_size,
        batch_size=facts.batch_size,
        epochs=facts.epochs,
        make_loss=functools.partial(make_loss, aux=facts.aux),
        make_optimizer=functools.partial(make_optimizer, grad_accum_steps=grad_accum),
        train_map=functools.partial(train_map, policy=sub_policies, input_size=input_size),
        # teams.md §3.3/§3.6: validation = Resize to the input size only, the same path as Team 1's eval_map
        eval_map=functools.partial(team1_eval_map, input_size=input_size),
        monitor="val_loss",
        monitor_mode="min",
        tta=TTAConfig("d4", aggregate="mean"),  # teams.md §3.6: 8 D4 transforms, mean of probabilities
        thresholds=ThresholdConfig("proportion_match"),  # teams.md §3.6: on a held-out split, no forced argmax
        grad_accum_steps=grad_accum,
        swa_last_n=SWA_LAST_N,
        loss_weights={MAIN_OUTPUT: 1.0, AUX_OUTPUT: AUX_LOSS_WEIGHT} if facts.aux else None,
        notes=NOTES,
    )
    fields.update(overrides)
    return Recipe(**fields)


def build_model(model_name: str, **kw):
    """Build a Team 3 model with its `zoo_models.teams.team3_pudae` builder (imported lazily); ``kw`` go to the builder
    (``num_classes``, ``input_shape``, ``weights``, ``with_aux``...). Returns a keras.Model."""
    import importlib

    if model_name not in MODELS:
        raise ConfigError(f"build_model: {model_name!r} is not a Team 3 model; use one of {sorted(MODELS)}")
    module = importlib.import_module("zoo_models.teams.team3_pudae")
    return getattr(module, MODELS[model_name].builder)(**kw)


# ---------------------------------------------------------------------------------------------- SWA
def make_callbacks(run_dir: str | os.PathLike, recipe: Recipe) -> list:
    """teams.md §3.3: a checkpoint every epoch, for a training loop other than `hpa_zoo.train.trainer.train` (which adds
    it itself): `hpa_zoo.train.swa.EpochCheckpoints` into ``run_dir/checkpoints/epochs`` keeping the last
    ``recipe.swa_last_n`` epochs. [] when SWA is off."""
    from hpa_zoo.train import swa

    if not recipe.swa_last_n:
        return []
    return [swa.EpochCheckpoints(Path(run_dir) / swa.EPOCH_CHECKPOINT_DIR, keep_last=recipe.swa_last_n)]


def apply_swa(run_dir: str | os.PathLike, model, train_ds: Iterable, *, last_n: int = SWA_LAST_N,
              steps: Optional[int] = None, verbose: int = 1) -> Path:
    """teams.md §3.3 after training: `hpa_zoo.train.swa.apply_swa` with Team 3's window (the last 10 epochs): average
    the epoch checkpoints, recalibrate BatchNorm on `train_ds` (training images, validation transform), save
    ``run_dir/checkpoints/swa.weights.h5``. Returns that path. `hpa_zoo.train.trainer.train` calls it for you."""
    from hpa_zoo.train import swa

    return swa.apply_swa(run_dir, model, train_ds, last_n=last_n, steps=steps, verbose=verbose)


# ---------------------------------------------------------------------------------------------- blend
def _blend_weight(key: str) -> float:
    """The `BLEND_WEIGHTS` entry whose model name `key` starts with (``team3_resnet34_512_fold3`` -> 1/5)."""
    matches = [name for name in BLEND_WEIGHTS if key == name or key.startswith(name + "_")]
    if not matches:
        raise ConfigError(f"blend_team3: {key!r} is not a Team 3 model; keys are model names, optionally with a "
                          f"suffix such as '_fold2': {sorted(BLEND_WEIGHTS)}")
    return BLEND_WEIGHTS[max(matches, key=len)]


def blend_team3(prob_dict: Mapping[str, Any]) -> np.ndarray:
    """teams.md §3.1/§3.6: Team 3's blend, the weighted mean of model probabilities.

    Weights: each ``team3_resnet34_512*`` entry (one per fold, e.g. ``team3_resnet34_512_fold0``) 1/5,
    ``team3_attention_inceptionv3_1024`` 1, ``team3_attention_se_resnext50_1024`` 1; the result is
    ``Σ w_m p_m / Σ w_m`` over the entries given (the registry has no ensemble rows, so this is the team3_ensemble).

    Args:
        prob_dict: model key -> probabilities (N, C), all the same shape (sigmoid outputs, e.g. after D4 TTA).
    Returns:
        (N, C) float32 blended probabilities.
    Raises:
        ConfigError: empty dict, an unknown key, or shapes that differ.
    """
    if not prob_dict:
        raise ConfigError("blend_team3: no probabilities given; pass {model_name: (N, 28) probabilities}")
    arrays = {k: np.asarray(v, np.float64) for k, v in prob_dict.items()}
    shapes = {k: a.shape for k, a in arrays.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ConfigError(f"blend_team3: every entry must be (N, C) with the same N and C, got {shapes}")
    weights = {k: _blend_weight(k) for k in arrays}
    total = sum(weights.values())
    return (sum(weights[k] * arrays[k] for k in arrays) / total).astype(np.float32)
