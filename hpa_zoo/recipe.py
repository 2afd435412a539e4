"""What a team recipe is, and the one way to get one.

A team module (``zoo_models/teams/*.py``) fills in a `Recipe`: plain data plus factories, so the module reads like
that team's method section and the generic code stays team-agnostic. A recipe *declares* what the trainer and the
predictor do (the SWA window, the TTA, the threshold rule, the ensemble blend); `hpa_zoo.train` and `hpa_zoo.infer`
carry it out.

The protocol: a registry row names its factory, ``recipe="zoo_models.teams.team1_bestfitting:make_recipe"``, and
every factory has the signature ``make_recipe(model_name: str, **overrides) -> Recipe`` where ``overrides`` are
`Recipe` fields (``image_size`` / ``input_size`` also rebuild the data maps, ``epochs`` the schedule) or the team's
documented extras. `load_recipe` is the one caller.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

from hpa_zoo.checks import positive_int
from hpa_zoo.constants import MAIN_OUTPUT
from hpa_zoo.errors import ConfigError

#: Values of `Recipe.keep_weights`: the best epoch on the recipe's monitor (the teams' rule) or the last epoch.
KEEP_WEIGHTS = ("best", "last")


@dataclass(frozen=True)
class TTAConfig:
    """Test-time augmentation of a team.

    Attributes:
        transforms: ``"d4"`` (the 8 dihedral transforms), ``"identity"``, or ``"random_flip_ssr"`` (Team 2).
        n_random_crops: random-scale crops in addition to the whole image (Team 1: 3; others 0).
        n_random_passes: random augmentation passes (Team 2: 5), for ``"random_flip_ssr"``.
        aggregate: ``"max"`` (Team 1), ``"mean"`` (Teams 2, 3) or ``"median"``.
    """

    transforms: Literal["d4", "identity", "random_flip_ssr"] = "d4"
    n_random_crops: int = 0
    n_random_passes: int = 0
    aggregate: Literal["max", "mean", "median"] = "mean"


@dataclass(frozen=True)
class ThresholdConfig:
    """How probabilities become labels (see `hpa_zoo.infer.thresholds`).

    Attributes:
        rule: ``"lb_ratio_match"`` (Team 1), ``"proportion_match"`` (Team 3, on a held-out split),
            ``"f1_optimal_scaled"`` (Team 2: 0.7 x per-class F1-optimal, fallbacks 0.6x, 0.5x),
            ``"freq_match"`` (Team 4), ``"f1_optimal"``, ``"fixed"``.
        force_top: always switch the most probable class on, in every row (Team 1, teams.md §1.6), so no row is
            empty.
        kwargs: rule parameters (e.g. ``{"scale": 0.7, "fallbacks": (0.6, 0.5)}``).
    """

    rule: str = "f1_optimal"
    force_top: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlendConfig:
    """How the team combined its models' probabilities (`hpa_zoo.infer.ensemble.blend`).

    Attributes:
        rule: ``"mean"`` (Team 2: unweighted mean of the members), ``"weighted_mean"`` (Team 3: ``kwargs["weights"]``
            maps a model name, or a name prefix such as ``team3_resnet34_512`` for its folds, to a weight), or
            ``"hill_climb_vote"`` (Team 4: per member a hill-climbed blend on OOF, frequency-matched labels, then a
            weighted vote; `hpa_zoo.infer.ensemble.multiscale_vote`).
        kwargs: rule parameters.
    """

    rule: Literal["mean", "weighted_mean", "hill_climb_vote"] = "mean"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceAugment:
    """A recipe's training augmentation moved to the accelerator (``hpa-zoo train --augment-on device``).

    The host map only decodes (uint8 batches at ``image_size``) and draws the per-example random numbers from the
    stateless seed; the layer does the crop / resize / flips inside the training step (Team 1:
    `hpa_zoo.augment.device`). Validation and everything saved are the bare network, as with host augmentation.

    Attributes:
        make_layer: ``() -> keras.layers.Layer`` called as ``layer(inputs, training=...)`` on the host map's
            batched inputs; returns float32 (B, input_size, input_size, C) with ``training=True`` and its image
            input unchanged (float32) with ``training=False``.
        host_map: tf.data map ``(example: dict, seed: tf.Tensor[2] int) -> (inputs, multi_hot float32 (28,))``,
            ``inputs`` a dict with ``image`` uint8 (image_size, image_size, C) and the draws; it reads the same
            examples as the recipe's ``train_map`` (also the stored JPEG pair when ``train_map_reads_jpeg``).
    """

    make_layer: Callable[[], Any]
    host_map: Callable[..., Any]


@dataclass(frozen=True)
class Recipe:
    """A team's training and inference recipe.

    Attributes:
        name: recipe id, e.g. ``"team1"``.
        image_size: side the images are loaded at (Team 1 final: 1536).
        input_size: side the network sees (Team 1 final: 1024, the crop).
        batch_size: per-step global batch the team used.
        epochs: the team's epoch count.
        make_loss: ``() -> keras.losses.Loss`` (logits in, float32 out).
        make_optimizer: ``(steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer``; the schedule must
            scale its boundaries to ``epochs`` when the user trains for fewer epochs than the team did.
        train_map: tf.data map function ``(example: dict, seed: tf.Tensor[2] int) -> (image float32 (s,s,C),
            multi_hot float32 (28,))`` applying the team's crop/augmentation; ``example`` has keys ``id``,
            ``image`` (H, W, 4) uint8 and ``multi_hot`` (28,) uint8.
        eval_map: ``(example: dict) -> (image float32, multi_hot float32)``: the deterministic validation path.
        monitor: the validation quantity that picks the checkpoint (``"val_focal"`` for Team 1).
        monitor_mode: ``"min"`` or ``"max"``.
        keep_weights: which weights the preset holds when SWA is off: ``"best"``, the epoch that is best on
            ``monitor`` (every team's rule), or ``"last"``, the final epoch (for a schedule that decays to its floor
            rate, such as the demo's cosine, where a validation loss of an overconfident model picks an early,
            underfit epoch). The best epoch is still tracked and recorded either way.
        tta: `TTAConfig`.
        thresholds: `ThresholdConfig`.
        grad_accum_steps: gradient accumulation (Team 3).
        make_metrics: ``() -> list[keras.metrics.Metric]`` extra validation metrics.
        swa_last_n: average the last N epoch checkpoints (Team 3: 10), 0 = off.
        loss_weights: for a model with several outputs (a dict of tensors, e.g. Team 3's Inception-v3
            ``{"logits", "aux_logits"}``): output name -> weight of its loss (Keras ``compile(loss_weights=...)``).
            ``make_loss`` then returns a dict of losses with the same keys, and every output is trained against
            the same ``multi_hot`` target (``(image, {key: multi_hot for key in loss_weights})``). None = one output.
        train_sampler: which training images each epoch sees, in which order: ``(ids: list[str], labels:
            float32 NumPy (N, 28) multi-hot, *, seed: int, batch_size: int) -> list[str]``, the epoch's ids in
            training order, repeats allowed (Team 2's rare-class oversampling, Team 4's rarest-label weighted
            sampling and Kaggle/external alternating batches). ``seed`` differs per epoch and is a function of the
            run seed and the epoch, so a resumed run replays the same epochs. None = every training image once per
            epoch, shuffled.
        blend: `BlendConfig`, how several trained models of the team are combined.
        targets: what the labels are: ``"multi_hot"`` (the 28 classes; `hpa_zoo.train.trainer.train`) or
            ``"sample_id"`` (one identity per sample, Team 1's metric learning;
            `hpa_zoo.train.metric_learning.train_metric_learning`).
        input_is_resized_image: the maps resize the whole image to ``input_size`` (never crop), so
            ``input_size > image_size`` is allowed (Team 3's 1024 models upsample the 512 PNGs).
        train_map_reads_jpeg: ``train_map`` also takes an example whose image is still the stored RGB+Y JPEG pair
            (key ``hpa_zoo.data.rgby_jpeg.ENCODED_KEY``, (2,) tf.string, at ``image_size``) instead of ``image``,
            and decodes only what it needs (Team 1: its crop window). The trainer then reads a TFDS train split
            stored that way (the ``tfds_hpa`` default) undecoded when it is stored at ``image_size``.
        device_augment: `DeviceAugment`: the training augmentation as a layer on the accelerator, used by
            ``train(..., augment_on="device")`` (Team 1); None = the recipe augments on the host only.
        notes: where the recipe deviates from or infers beyond the facts.
    """

    name: str
    image_size: int
    input_size: int
    batch_size: int
    epochs: int
    make_loss: Callable[[], Any]
    make_optimizer: Callable[[int, int], Any]
    train_map: Callable[..., Any]
    eval_map: Callable[..., Any]
    monitor: str = "val_loss"
    monitor_mode: Literal["min", "max"] = "min"
    keep_weights: Literal["best", "last"] = "best"
    tta: TTAConfig = TTAConfig()
    thresholds: ThresholdConfig = ThresholdConfig()
    grad_accum_steps: int = 1
    make_metrics: Optional[Callable[[], list]] = None
    swa_last_n: int = 0
    loss_weights: Optional[dict[str, float]] = None
    train_sampler: Optional[Callable[..., list]] = None
    blend: BlendConfig = BlendConfig()
    targets: Literal["multi_hot", "sample_id"] = "multi_hot"
    input_is_resized_image: bool = False
    train_map_reads_jpeg: bool = False
    device_augment: Optional[DeviceAugment] = None
    notes: str = ""


def load_recipe(model_name: str, *, epochs: Optional[int] = None, image_size: Optional[int] = None,
                input_size: Optional[int] = None, batch_size: Optional[int] = None) -> Recipe:
    """The `Recipe` of a registered model, with the team's values unless overridden.

    Calls the registry row's factory, ``make_recipe(model_name, **overrides)`` (the maps and the LR schedule are
    rebuilt for the new sizes / epochs).

    Args:
        model_name: a registry name, e.g. ``"team1_densenet121_512"``.
        epochs, image_size, input_size, batch_size: overrides (None keeps the team's value).
    Returns:
        the `Recipe`.
    Raises:
        UnknownModelError: the name is not registered.
        ConfigError: the model has no recipe, an override is not a positive integer, or the sizes do not fit
            the recipe (a crop larger than the image).
    """
    from hpa_zoo.registry import get_spec

    spec = get_spec(model_name)
    factory = spec.recipe_fn()
    if factory is None:
        raise ConfigError(f"model {model_name!r} has no training recipe in the registry (ModelSpec.recipe is "
                          f"empty); it can be loaded for inference but not trained with `hpa-zoo train`")
    overrides = {k: v for k, v in dict(epochs=epochs, image_size=image_size, input_size=input_size,
                                       batch_size=batch_size).items() if v is not None}
    for key, value in overrides.items():
        positive_int(value, key)
    recipe = factory(model_name, **overrides)
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"{spec.recipe} returned {type(recipe).__name__}, not a hpa_zoo.recipe.Recipe")
    if recipe.input_size > recipe.image_size and not recipe.input_is_resized_image:
        raise ConfigError(f"input_size {recipe.input_size} > image_size {recipe.image_size}: the network input of "
                          f"{model_name!r} is a crop of the loaded image, so choose input_size <= image_size (only "
                          f"recipes whose maps resize the whole image, Recipe.input_is_resized_image, e.g. Team 3's "
                          f"512 -> 1024, may upsample)")
    if recipe.loss_weights is not None and MAIN_OUTPUT not in recipe.loss_weights:
        raise ConfigError(f"the recipe of {model_name!r} has loss_weights {recipe.loss_weights} without the main "
                          f"output {MAIN_OUTPUT!r}; the main output is the one validated, thresholded and exported")
    return recipe

