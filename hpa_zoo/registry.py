"""The one registry table of hpa-zoo: model name -> how to build it, its data, recipe, weights and scores.

A model name is a stable string and the public API (``hpa_zoo.load("team1_densenet121_1024")``). Each row
(`ModelSpec`) states:

* ``builder``: ``"module:function"`` of a function ``f(num_classes, input_shape, weights, **kw) -> keras.Model``;
* ``input_size`` / ``channels``: what the team fed the network;
* ``recipe``: ``"module:make_recipe"``, the team's recipe factory (loss, schedule, augmentation, TTA, thresholds,
  SWA, blend), called as ``make_recipe(model_name, **overrides)`` by `hpa_zoo.recipe.load_recipe`;
* ``first_conv`` / ``classifier`` / ``feature_layer``: layer names used by backbone surgery, head replacement
  and embeddings (timm's pretrained-config idea);
* ``cam_layer``: the layer whose (B, h, w, D) output Grad-CAM weighs (`hpa_zoo.infer.explain.grad_cam`, the
  report's Fig. 3 panel, ``hpa-zoo explain``): the paper's choice per architecture (Ouyang et al. 2019, Fig. 3:
  DenseNet "Block3", Inception-v3 "Mixed_7c", ResNet "Layer3"), named as in the built Keras model;
* ``weights``: the available weights (`WeightsSpec`, URL + sha256);
* ``reported``: the team's own reported HPA scores, with their source. These are *theirs*, never ours;
* ``pixel_size_um``: µm per pixel of the images the recipe loads (its ``image_size``, before its own crop or
  resize), derived in `pixel_size_of` from the full-resolution fields (`FULL_RES_PX` at `FULL_RES_UM`).

Rows are added in ``ROWS`` at the bottom of this file only.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from hpa_zoo.errors import ConfigError, UnknownModelError


@dataclass(frozen=True)
class WeightsSpec:
    """One downloadable weights file of a model.

    Attributes:
        name: the ``weights=`` value that selects it (``"hpa"``, ``"imagenet"``...).
        urls: mirrors, tried in order.
        sha256: hex digest of the file; downloads are verified against it.
        format: ``"onnx"``, ``"keras_weights_h5"``, ``"torch"``...
        filename: cache file name.
        trained_on: the data the weights were trained on, in words.
        license: licence of the weights.
        citation: who to cite.
        notes: anything a user must know (fold, resolution, which outputs...).
        test_tensors: files published beside the weights to check a runtime reproduces them, as specs of their
            own named ``"input"`` and after the outputs they hold (``"classes"``, ``"features"``); a spec without
            sha256 there is checked by running the (hash-pinned) weights file on the input instead
            (`hpa_zoo.zoo.verify_weights.verify`).
    """

    name: str
    urls: tuple[str, ...]
    sha256: str
    format: str
    filename: str
    trained_on: str = ""
    license: str = ""
    citation: str = ""
    notes: str = ""
    test_tensors: tuple["WeightsSpec", ...] = ()


@dataclass(frozen=True)
class ReportedScore:
    """A score the team reported on the HPA Kaggle leaderboard (theirs, not measured by hpa-zoo)."""

    metric: str  # e.g. "private LB macro F1"
    value: float
    source: str  # file/post the number comes from


@dataclass(frozen=True)
class ModelSpec:
    """One row of the registry table (see the module docstring)."""

    name: str
    team: str
    builder: str
    input_size: int
    channels: str = "RGBY"
    recipe: str | None = None
    first_conv: str | None = None
    classifier: str | None = None
    feature_layer: str | None = None
    cam_layer: str | None = None
    weights: tuple[WeightsSpec, ...] = ()
    reported: tuple[ReportedScore, ...] = ()
    description: str = ""
    citation: str = ""
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    pixel_size_um: float | None = None

    @property
    def num_channels(self) -> int:
        """How many input channels the model takes (int: 4 for RGBY, 3 for RGB): ``len(self.channels)``."""
        return len(self.channels)

    def weights_spec(self, name: str) -> WeightsSpec | None:
        """The published weights called ``name`` (e.g. ``"hpa"``), or None when this model has none by that name."""
        for w in self.weights:
            if w.name == name:
                return w
        return None

    def build_fn(self) -> Callable[..., Any]:
        """Import and return the builder function."""
        return _import_factory(self.builder, f"builder of {self.name!r}")

    def recipe_fn(self) -> Callable[..., Any] | None:
        """Import and return the recipe factory ``make_recipe(model_name, **overrides) -> Recipe`` (None: the
        model has no training recipe)."""
        return _import_factory(self.recipe, f"recipe of {self.name!r}") if self.recipe else None


def _import_factory(ref: str, what: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function."""
    module, sep, attr = ref.partition(":")
    if not sep or not attr:
        raise ConfigError(f"the {what} is {ref!r}; registry rows name factories as 'module:function'")
    return getattr(importlib.import_module(module), attr)


#: The Kaggle competition's full-resolution TIFFs: 2048 x 2048 px (docs/teams.md §0.1, from Team 1's diagram; not
#: verified from data) at the HPA confocal images' 0.08 µm per pixel (docs/teams.md §0.1; HPA-Cell-Segmentation
#: issue 27). The 512 px Kaggle PNGs are these fields resized, so each model's pixel size follows from its
#: ``image_size``: 512 -> 0.32 µm, 768 -> 0.213 µm, 1024 -> 0.16 µm, 1536 -> 0.107 µm.
FULL_RES_PX = 2048
FULL_RES_UM = 0.08


def pixel_size_of(image_size: int) -> float:
    """µm per pixel of a whole HPA field of view resized to ``image_size`` px (`FULL_RES_PX` at `FULL_RES_UM`)."""
    return FULL_RES_UM * FULL_RES_PX / float(image_size)


ROWS: list[ModelSpec] = []
_TABLE: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a row to the table (used only by this module's ``ROWS`` and by tests)."""
    if spec.name in _TABLE and _TABLE[spec.name] is not spec:
        raise ConfigError(f"model name {spec.name!r} is registered twice; give the new row another name")
    _TABLE[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a row (for tests)."""
    _TABLE.pop(name, None)


def list_models(team: str | None = None) -> list[str]:
    """Registered model names, sorted; optionally only one team's (``team="team1"``)."""
    _ensure_rows()
    names = sorted(_TABLE)
    if team is not None:
        names = [n for n in names if _TABLE[n].team == team]
    return names


def get_spec(name: str) -> ModelSpec:
    """The registry row of ``name``.

    Raises:
        UnknownModelError: the name is not registered; the message lists the closest names.
    """
    _ensure_rows()
    if name in _TABLE:
        return _TABLE[name]
    close = difflib.get_close_matches(name, list(_TABLE), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model name {name!r}.{hint} `hpa_zoo.list_models()` or "
                            f"`hpa-zoo models` lists all {len(_TABLE)} names.")


def _ensure_rows() -> None:
    if ROWS and not all(r.name in _TABLE for r in ROWS):
        for row in ROWS:
            register(row)


# --------------------------------------------------------------------------------------------------------------
# The table. Team issues append rows here (one block per team, facts cited from docs/teams.md).
# --------------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------- Team 1: bestfitting
# teams.md §1.1-1.2, §1.6, §1.8. The Keras stem layer is `conv1_conv` (torch `features.conv0`); the feature is the
# 1024-d output of the second head dropout (bioimage.io output `features`). The Grad-CAM layer is DenseNet "Block3"
# (the paper's Fig. 3 layer for Team 1): torchvision `features.denseblock3` = Keras `conv4_block24_concat` (Keras
# numbers the dense blocks from conv2), 1024 channels at stride 16 (32 for the 1024 model, with its extra pool).
_TEAM1_CITATION = ("Ouyang W, Winsnes CF, Hjelmare M, et al. Analysis of the Human Protein Atlas Image Classification "
                   "competition. Nature Methods 16, 1254-1261 (2019), doi:10.1038/s41592-019-0658-6; "
                   "Shubin Dai (bestfitting), 1st-place solution, github.com/CellProfiling/HPA-competition-solutions "
                   "(bestfitting/).")
_TEAM1_SCORES_SOURCE = "bestfitting/src/bestfitting-densenet-diagram.png; bestfitting/README.md (teams.md §1.6)"
_TEAM1_COMMON = dict(team="team1", channels="RGBY", recipe="zoo_models.teams.team1_bestfitting:make_recipe", first_conv="conv1_conv",
                     classifier="logits", feature_layer="head_dropout2", cam_layer="conv4_block24_concat",
                     citation=_TEAM1_CITATION)


def _team1_scores(private: float, public: float, private_ml: float, public_ml: float) -> tuple[ReportedScore, ...]:
    """teams.md §1.6 table: the model alone, and with the metric-learning label replacement (§1.7)."""
    return (ReportedScore("private LB macro F1", private, _TEAM1_SCORES_SOURCE),
            ReportedScore("public LB macro F1", public, _TEAM1_SCORES_SOURCE),
            ReportedScore("private LB macro F1 (+ metric-learning replacement)", private_ml, _TEAM1_SCORES_SOURCE),
            ReportedScore("public LB macro F1 (+ metric-learning replacement)", public_ml, _TEAM1_SCORES_SOURCE))


ROWS.append(ModelSpec(
    name="team1_densenet121_1024",
    builder="zoo_models.teams.team1_bestfitting:build_team1_densenet121_1024",
    input_size=1024,  # teams.md §1.1: 1536 -> random crop 1024 (final model)
    pixel_size_um=pixel_size_of(1536),  # teams.md §1.1, §1.4: the 1536 px resizes of the fields, cropped to 1024 by the recipe
    weights=(WeightsSpec(
        name="hpa",
        urls=("https://zenodo.org/api/records/5942853/files/densenet_model.onnx/content",
              "https://zenodo.org/api/files/91895c21-4e8e-4cd0-98c3-1fae496b6068/densenet_model.onnx"),
        sha256="0ef125632b0058b2f04448de56dc23339fcbfe4f628601e836e17cef6f344e3f",  # teams.md §1.8 (RDF)
        format="onnx",
        filename="team1_densenet_model.onnx",
        trained_on="Kaggle HPA train + HPAv18 external images (teams.md §1.4), 1536 -> crop 1024",
        license="MIT",  # teams.md §1.8: the bioimage.io RDF
        citation=_TEAM1_CITATION + " bioimage.io 'HPA Bestfitting Densenet' (polite-pig), doi:10.5281/zenodo.5942853.",
        notes=("bioimage.io package of class_densenet121_large_dropout (teams.md §1.8): ONNX, input RGBY "
               "(1, 4, 1024, 1024) in [0, 1], outputs sigmoid `classes` (28) and `features` (1024). Converted to "
               "Keras weights on first use (accepted only when Keras and the ONNX graph agree on probe images) "
               "and cached next to the download; the Keras model returns logits. `hpa-zoo weights verify "
               "team1_densenet121_1024` checks the conversion on the package's own test tensors."),
        test_tensors=tuple(WeightsSpec(
            name=role,
            # teams.md §1.8: the test tensors sit in the same Zenodo record; the URL follows the record's pattern
            urls=(f"https://zenodo.org/api/records/5942853/files/{file}/content",),
            sha256="",  # not in the facts: verified by running the sha256-pinned ONNX file on test_input.npy
            format="npy",
            filename=f"team1_densenet_model.{file}",
            notes=note,
        ) for role, file, note in (
            ("input", "test_input.npy", "(1, 4, 1024, 1024) float32 RGBY, already / 255, NCHW"),
            ("classes", "test_output_classes.npy", "(1, 28) sigmoid probabilities"),
            ("features", "test_output_features.npy", "(1, 1024) features"))),
    ),),
    reported=_team1_scores(0.565, 0.627, 0.593, 0.656),  # the last two: the final 1st-place submission
    description=("Team 1 (bestfitting, 1st place) final model: DenseNet121 with an extra 2x2 max-pool after the "
                 "stem (output stride 64), RGBY stem with the red filter copied for yellow, concat(avg, max) "
                 "dropout head 2048 -> 1024 -> 28. Trained 1536 -> 1024 crops, Adam45, focal + Lovasz + hard-log "
                 "loss, D4 + random-crop max-TTA, LB-ratio thresholds."),
    **_TEAM1_COMMON,
))

ROWS.append(ModelSpec(
    name="team1_densenet121_512",
    builder="zoo_models.teams.team1_bestfitting:build_team1_densenet121_512",
    input_size=512,  # teams.md §1.1: 768 -> random crop 512
    pixel_size_um=pixel_size_of(768),  # teams.md §1.1, §1.4: the 768 px resizes, cropped to 512
    weights=(WeightsSpec(
        name="hpa",
        urls=("https://github.com/CellProfiling/densenet/releases/download/v0.1.0/external_crop512_focal_slov_"
              "hardlog_class_densenet121_dropout_i768_aug2_5folds_fold0_final_probability.onnx",),
        sha256="",  # not in the facts (teams.md §1.8): hpa_zoo.zoo.weights refuses to download without a hash
        format="onnx",
        filename="team1_densenet121_i768_crop512_fold0_probability.onnx",
        trained_on="Kaggle HPA train + HPAv18 external images (teams.md §1.4), 768 -> crop 512, fold 0",
        license="MIT (stated by the bioimage.io RDF of the 1024 model; the release itself states none in our facts)",
        citation=_TEAM1_CITATION,
        notes=("GitHub release CellProfiling/densenet v0.1.0 (teams.md §1.8): the i768/crop512 fold-0 model with "
               "probability outputs; predict_onnx.py feeds it 1024x1024 inputs. No sha256 is known, so hpa-zoo "
               "does not download it: download it yourself and pass the file, e.g. "
               "hpa_zoo.load('team1_densenet121_512', weights='/path/to/that.onnx') (or weights='hpa', "
               "local_path=...)."),
    ),),
    reported=_team1_scores(0.563, 0.621, 0.592, 0.648),
    description=("Team 1 (bestfitting) DenseNet121 at 768 -> crop 512 (output stride 32), RGBY stem with the red "
                 "filter copied for yellow, concat(avg, max) dropout head 2048 -> 1024 -> 28; Adam55, batch 48."),
    **_TEAM1_COMMON,
))

ROWS.append(ModelSpec(
    name="team1_arcface_resnet50_768",
    team="team1",
    builder="zoo_models.teams.team1_metric_learning:build_team1_arcface_resnet50_768",
    recipe="zoo_models.teams.team1_metric_learning:make_recipe",  # targets="sample_id": `hpa-zoo train-embedding`
    input_size=768,  # teams.md §1.7: 768 px, no crop
    pixel_size_um=pixel_size_of(768),
    channels="RGBY",
    first_conv="conv1_conv",
    classifier="logits",  # ArcMarginProduct cosines to the training identities (samples / antibodies)
    feature_layer="embedding",  # the 512-d matching vector
    cam_layer="conv4_block6_out",  # ResNet50 "Layer3" (torchvision layer3 = Keras conv4, 1024 channels, stride 16)
    description=("Team 1 (bestfitting) metric-learning model, recast as a same-sample / batch-effect detector: "
                 "ResNet50 with an RGBY stem, input /255, concat(avg, max) -> BN -> Dropout .25 -> 2048 -> ReLU -> "
                 "BN -> Dropout .5 -> 512 -> BN embedding, ArcFace (s 30, m 0.5) over sample or antibody ids, Adam "
                 "1e-4, clip 1 (teams.md §1.7). The paper (Ouyang et al. 2019) found that Team 1's gain from it "
                 "came from matching test images to HPAv18 images of the same sample: of 935 test_private images "
                 "with such a partner it found 647 (69.2 %, the paper's figure), and 261 of the 270 predictions "
                 "it changed had one. Use it with `hpa-zoo leaks` to audit splits; the label replacement "
                 "(hpa_zoo.infer.ensemble.metric_learning_replace) is a leak exploit and off by default. No weights are "
                 "published: train it on your own sample ids with hpa_zoo.train.metric_learning.train_metric_learning "
                 "(Team 1's recipe; not `hpa-zoo train`, whose contract is 28-class multi-hot)."),
    citation=_TEAM1_CITATION,
))

# ---------------------------------------------------------------------------------------- Team 3: pudae
# teams.md §3.1-3.4, §6. RGBY stems with the red filter copied for yellow; normalisation inside the models.
# No HPA-trained Team 3 weights are published: weights=None / "imagenet" / your own .weights.h5 or preset.
_TEAM3_CITATION = ("Ouyang W, Winsnes CF, Hjelmare M, et al. Analysis of the Human Protein Atlas Image Classification "
                   "competition. Nature Methods 16, 1254-1261 (2019), doi:10.1038/s41592-019-0658-6; "
                   "Park Jinmo (pudae), 3rd-place solution, github.com/pudae/kaggle-hpa.")
_TEAM3_SCORES_SOURCE = ("secondary source: transcription of the Kaggle discussion post 77320 (teams.md §3.1); "
                        "single fold + 8x D4 TTA; no CV numbers are in the repo")

ROWS.append(ModelSpec(
    name="team3_attention_inceptionv3_1024",
    team="team3",
    builder="zoo_models.teams.team3_pudae:build_team3_attention_inceptionv3_1024",
    input_size=1024,  # teams.md §3.1, §3.4: the 512 PNGs upsampled to 1024
    pixel_size_um=pixel_size_of(512),  # teams.md §3.4: the 512 PNGs, upsampled to 1024 by the recipe
    channels="RGBY",
    recipe="zoo_models.teams.team3_pudae:make_recipe",
    first_conv="conv2d",
    classifier="logits",  # the attention pooling (not a Dense): heads are attention_class_conv/attention_att_conv
    feature_layer="mixed10",  # (B, h, w, 2048) map the attention head reads
    cam_layer="mixed10",  # torchvision Mixed_7c (teams.md §3.2: Keras mixed10), the paper's Fig. 3 layer for Team 3
    reported=(ReportedScore("private LB macro F1", 0.549, _TEAM3_SCORES_SOURCE),
              ReportedScore("public LB macro F1", 0.583, _TEAM3_SCORES_SOURCE)),
    description=("Team 3 (pudae, 3rd place) AttentionInceptionV3: per-image z-score, Keras InceptionV3 with an RGBY "
                 "stem (red copied for yellow), class-wise spatial-softmax attention head on mixed10 (pooled to 30), "
                 "auxiliary attention head on mixed7 for training (with_aux=True, loss + 0.4 aux). Focal loss, Adam "
                 "5e-4, SWA of the last 10 epochs. Keras' ImageNet InceptionV3 weights (not torchvision's). No "
                 "HPA-trained weights are public."),
    citation=_TEAM3_CITATION,
))

ROWS.append(ModelSpec(
    name="team3_attention_se_resnext50_1024",
    team="team3",
    builder="zoo_models.teams.team3_pudae:build_team3_attention_se_resnext50_1024",
    input_size=1024,
    pixel_size_um=pixel_size_of(512),  # teams.md §3.4: the 512 PNGs, upsampled to 1024 by the recipe
    channels="RGBY",
    recipe="zoo_models.teams.team3_pudae:make_recipe",
    first_conv="layer0_conv1",
    classifier="logits",  # the attention pooling (not a Dense)
    feature_layer="layer4",  # (B, h, w, 2048) map the attention head reads
    cam_layer="layer3",  # ResNet "Layer3" (the paper's Fig. 3 layer for the ResNet-based models), 1024 channels
    reported=(ReportedScore("private LB macro F1", 0.531, _TEAM3_SCORES_SOURCE),
              ReportedScore("public LB macro F1", 0.601, _TEAM3_SCORES_SOURCE)),
    description=("Team 3 (pudae) Attention(se_resnext50_32x4d): per-image z-score, SE-ResNeXt50 32x4d (Cadene "
                 "names) with an RGBY stem, class-wise spatial-softmax attention head (attention_size 32). ImageNet "
                 "init from the Cadene .pth you download (imagenet_weights=). No HPA-trained weights are public."),
    citation=_TEAM3_CITATION,
))

ROWS.append(ModelSpec(
    name="team3_resnet34_512",
    team="team3",
    builder="zoo_models.teams.team3_pudae:build_team3_resnet34_512",
    input_size=512,
    pixel_size_um=pixel_size_of(512),  # teams.md §3.4: the 512 PNGs
    channels="RGBY",
    recipe="zoo_models.teams.team3_pudae:make_recipe",
    first_conv="conv1",
    classifier="logits",
    feature_layer="avgpool",  # 512-d
    cam_layer="layer3",  # ResNet "Layer3" (paper Fig. 3), 256 channels at stride 16
    reported=(ReportedScore("private LB macro F1 (5 folds, as transcribed: 0.500 sic)", 0.500,
                            _TEAM3_SCORES_SOURCE),
              ReportedScore("public LB macro F1 (5 folds)", 0.574, _TEAM3_SCORES_SOURCE)),
    description=("Team 3 (pudae) resnet34 (5 folds in the final blend, weight 1/5 each): (x - 127.5)/255, "
                 "torchvision ResNet34 with an RGBY stem, global average pool -> Dense 28. ImageNet init from the "
                 "torchvision .pth you download (imagenet_weights=). No HPA-trained weights are public."),
    citation=_TEAM3_CITATION,
))

# ---------------------------------------------------------------------------------------- Team 2: WAIR
# teams.md §2.1-2.2, §2.6. RGBY input, yellow dropped inside the model (layer `rgb`); Keras DenseNet trunk names;
# the feature is the global average pool `head_gap`. The only reported number is the 7-model ensemble's. Grad-CAM at
# DenseNet "Block3" (paper Fig. 3), the end of the third dense block: `conv4_block24_concat` in DenseNet121,
# `conv4_block32_concat` in DenseNet169 (blocks of 6, 12, 32, 32 layers).
_TEAM2_CITATION = ("Ouyang W, Winsnes CF, Hjelmare M, et al. Analysis of the Human Protein Atlas Image Classification "
                   "competition. Nature Methods 16, 1254-1261 (2019), doi:10.1038/s41592-019-0658-6; Jun Lan (WAIR), "
                   "2nd-place solution, github.com/CellProfiling/HPA-competition-solutions (wair/).")
_TEAM2_COMMON = dict(pixel_size_um=pixel_size_of(512),  # teams.md §2: the 512 PNGs
                     team="team2", channels="RGBY", recipe="zoo_models.teams.team2_wair:make_recipe", first_conv="conv1_conv",
                     classifier="logits", feature_layer="head_gap", citation=_TEAM2_CITATION, input_size=512,
                     reported=(ReportedScore("private LB macro F1 (7-model ensemble, not this model alone)", 0.571,
                                             "wair/README.md (teams.md §2.6)"),))

ROWS.append(ModelSpec(
    name="team2_densenet121_rgb_512",
    builder="zoo_models.teams.team2_wair:build_team2_densenet121_rgb_512",
    cam_layer="conv4_block24_concat",
    description=("Team 2 (WAIR, 2nd place) DenseNet121_change_avg: RGB (yellow dropped inside), ImageNet "
                 "normalisation, DenseNet121 -> ReLU -> GAP -> Dense 28; class-weighted BCE, rare-class "
                 "oversampling, Adamax cosine restarts -> Adam-amsgrad; 5 random flip/SSR TTA passes (mean), "
                 "0.7 x F1-optimal thresholds. Three oversampling variants (v2, v3, v5) are in the team's blend."),
    **_TEAM2_COMMON,
))

ROWS.append(ModelSpec(
    name="team2_densenet169_rgb_512",
    builder="zoo_models.teams.team2_wair:build_team2_densenet169_rgb_512",
    cam_layer="conv4_block32_concat",
    description=("Team 2 (WAIR) DenseNet169_change_avg (_v5): as the DenseNet121 member with a DenseNet169 trunk "
                 "(1664-d GAP feature)."),
    **_TEAM2_COMMON,
))

# ---------------------------------------------------------------------------------------- Team 4: WSG
# teams.md §4.1-4.2. No final LB score is stated in the team's repo (§4, §6 table: "not in repo"), so `reported` is
# empty. Christof's GAPNet is RGB (yellow dropped inside, layer `rgb`); Dmytro's GWAP member is RGBY with a fresh
# stem. The stem is torchvision's `conv1`; the feature is the 256-d `head_fc`. Grad-CAM at ResNet "Layer3" (the
# paper's Fig. 3 layer for the ResNet-based models): `layer3`, 256 channels at stride 16.
_TEAM4_CITATION = ("Ouyang W, Winsnes CF, Hjelmare M, et al. Analysis of the Human Protein Atlas Image Classification "
                   "competition. Nature Methods 16, 1254-1261 (2019), doi:10.1038/s41592-019-0658-6; "
                   "Wienerschnitzelgemeinschaft (S. Galib, C. Henkel, K. Hwang, D. Poplavskiy, B. Tunguz, "
                   "R. Wolfinger), 4th-place solution, github.com/CellProfiling/HPA-competition-solutions "
                   "(wienerschnitzelgemeinschaft/).")
_TEAM4_COMMON = dict(team="team4", channels="RGBY", recipe="zoo_models.teams.team4_wsg:make_recipe", first_conv="conv1",
                     classifier="logits", feature_layer="head_fc", cam_layer="layer3",
                     citation=_TEAM4_CITATION)

ROWS.append(ModelSpec(
    name="team4_gapnet_resnet18_512",
    builder="zoo_models.teams.team4_wsg:build_team4_gapnet_resnet18_512",
    input_size=512,  # teams.md §4.2: 13_ext, whole 512 images
    pixel_size_um=pixel_size_of(512),  # teams.md §4.2 13_ext: whole 512 images
    description=("Team 4 (Christof) GAPNet 13_ext: RGB ResNet18 with squeeze-excite + GAP at five depths, concat "
                 "-> BN -> Dropout .5 -> Dense 256 -> BN -> Dropout .5 -> Dense 28; 4 x BCE(pos_weight 10) - "
                 "log(batch F1), Adam 5e-4 cosine; frequency-matched thresholds."),
    **_TEAM4_COMMON,
))

ROWS.append(ModelSpec(
    name="team4_gapnet_resnet18_1024crop512",
    builder="zoo_models.teams.team4_wsg:build_team4_gapnet_resnet18_1024crop512",
    input_size=512,  # teams.md §4.2: 13_ext_512crop, the network sees 512 crops of 1024 images
    pixel_size_um=pixel_size_of(1024),  # teams.md §4.2 13_ext_512crop: 1024 images, 512 crops
    description=("Team 4 (Christof) GAPNet 13_ext_512crop: the GAPNet trained on random 512 crops of 1024 images, "
                 "predicted on 5 fixed crops combined by a small stacker (zoo_models.teams.team4_wsg.predict_five_crops, "
                 "train_stacker)."),
    **_TEAM4_COMMON,
))

ROWS.append(ModelSpec(
    name="team4_gwap_resnet34_512",
    builder="zoo_models.teams.team4_wsg:build_team4_gwap_resnet34_512",
    input_size=512,  # teams.md §4.2: Dmytro's models on 512 crops
    pixel_size_um=pixel_size_of(512),  # teams.md §4.2: 512 crops with affine augmentation of the 512 images
    description=("Team 4 (Dmytro) resnet34_gwap: RGBY ResNet34 with a fresh stem, global weighted average pooling "
                 "(GWAP) at three depths -> Dense 256 -> 28; focal loss, SGD with cosine restarts."),
    **_TEAM4_COMMON,
))
