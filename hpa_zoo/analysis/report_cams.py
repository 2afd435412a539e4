"""The report's Fig. 3 and its measured counterpart: Grad-CAMs of each model on the same images, and CAM relevance
against ground-truth masks (`hpa_zoo.analysis.report.figure_report` calls `cam_sections`).

* **Fig. 3 panel** (Ouyang et al. 2019): one image per class for the "easy" patterns (cytosol, nucleoli) and the
  "hard" ones (mitochondria, plasma membrane, Golgi apparatus) that occur in the labels (a single-label image
  when there is one), shown plain and under each model's Grad-CAM of that class, at the model's CAM layer: its
  registry row's ``cam_layer`` (`hpa_zoo.infer.explain.default_cam_layer`: DenseNet "Block3", Inception
  "Mixed_7c", ResNet "Layer3"), named under each panel and in the report's text.
* **CAM relevance**: with a folder of ground-truth masks (``hpa-zoo synth --masks``), per model and class the
  pointing game and the energy inside the mask (`hpa_zoo.infer.explain.score_cams`) over up to ``max_per_class`` images
  of that class, beside the chance level (the mean mask area: what a CAM spread evenly would score).
"""
from __future__ import annotations

import html as html_lib
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import ConfigError, HpaDataError

log = logging.getLogger(__name__)

#: The paper's Fig. 3 classes.
PANEL_CLASSES = {"easy": ("Cytosol", "Nucleoli"), "hard": ("Mitochondria", "Plasma membrane", "Golgi apparatus")}


def pick_panel_images(ids: Sequence[str], y: np.ndarray, class_names: Sequence[str] = CLASS_NAMES,
                      available: set | None = None) -> list[tuple[int, str, str]]:
    """One image per `PANEL_CLASSES` class present: (class id, "easy"/"hard", image id), a single-label image of
    the class first, else the first image carrying it; an image is used once.

    Args:
        ids: N image ids; y: (N, K) bool true labels; available: ids that have image files (None: all).
    """
    used, picks = set(), []
    for kind, names in PANEL_CLASSES.items():
        for name in names:
            if name not in class_names:
                continue
            c = list(class_names).index(name)
            rows = [i for i in np.flatnonzero(y[:, c]) if ids[i] not in used
                    and (available is None or ids[i] in available)]
            if not rows:
                continue
            single = [i for i in rows if y[i].sum() == 1]
            i = (single or rows)[0]
            used.add(ids[i])
            picks.append((c, kind, ids[i]))
    return picks


def _model_size(model, image_size: int | None) -> int:
    size = image_size or model.input_shape[1]
    if not size:
        raise ConfigError(f"model {model.name!r} has no fixed input size: pass image_size (CLI: --image-size)")
    return int(size)


def cam_layers_of(models: Sequence[tuple[str, object]], overrides: dict | None = None) -> dict[str, str]:
    """{model name: Grad-CAM layer}: ``overrides[name]`` where given, else the registry row's ``cam_layer``
    (`hpa_zoo.infer.explain.default_cam_layer`).

    Raises:
        ConfigError: an override for a model that is not among ``models``.
    """
    from hpa_zoo.infer.explain import default_cam_layer

    overrides = overrides or {}
    unknown = sorted(set(overrides) - {name for name, _ in models})
    if unknown:
        raise ConfigError(f"CAM layer given for {unknown}, which is not one of the models {[n for n, _ in models]}; "
                          f"name a model as the report does (its predictions' model name)")
    return {name: overrides.get(name) or default_cam_layer(model) for name, model in models}


def cam_panel(models: Sequence[tuple[str, object]], images_dir, picks, out_png, *, image_size: int | None = None,
              class_names: Sequence[str] = CLASS_NAMES, save: Callable | None = None, layers: dict | None = None):
    """Draw the Fig. 3 panel: a row per pick, the image then each model's Grad-CAM overlay of the row's class.

    Args:
        models: (name, keras model) pairs; images_dir: folder of the picked images' channel files.
        picks: `pick_panel_images` output; out_png: the PNG (used when ``save`` is None).
        image_size: side the images are loaded at (default each model's input size).
        save: ``save(fig, stem)`` of the report (adds the data caption, writes atomically); None: saved here.
        layers: {model name: layer} overriding the registry's ``cam_layer`` (`cam_layers_of`).

    Returns:
        dict ``{"layers": {model name: CAM layer}, "picks": picks, "cams": {(model name, image id): (H, W)
        float32 map in [0, 1]}}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpa_zoo.infer.explain import grad_cam, overlay_cam, rgby_to_rgb
    from hpa_zoo.data.images import load_rgby

    layers = cam_layers_of(models, layers)
    cams = {}
    fig, axes = plt.subplots(len(picks), 1 + len(models), figsize=(2.1 * (1 + len(models)), 2.2 * len(picks)),
                             squeeze=False)
    for row, (c, kind, image_id) in enumerate(picks):
        shown = None
        for col, (name, model) in enumerate(models, start=1):
            image = load_rgby(images_dir, image_id, size=_model_size(model, image_size))
            cam = cams[name, image_id] = grad_cam(model, image, class_index=c, layer_name=layers[name])[0]
            axes[row, col].imshow(overlay_cam(image, cam))
            axes[row, col].set_title(f"{name}\n@ {layers[name]}", fontsize=6)
            shown = image if shown is None else shown
        axes[row, 0].imshow(rgby_to_rgb(shown))
        axes[row, 0].set_title(f"{class_names[c]} ({kind})\n{image_id[:13]}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if save is None:
        from hpa_zoo.atomic import atomic_path

        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
    else:
        save(fig, Path(out_png).stem)
    return {"layers": layers, "picks": picks, "cams": cams}


def cam_relevance_rows(models: Sequence[tuple[str, object]], images_dir, masks_dir, ids: Sequence[str],
                       y: np.ndarray, *, classes: Sequence[int] | None = None, max_per_class: int = 24,
                       image_size: int | None = None, class_names: Sequence[str] = CLASS_NAMES,
                       layers: dict | None = None) -> list[dict]:
    """Pointing game and energy inside the mask per model and class (module docstring).

    Args:
        models: (name, keras model) pairs; images_dir: the images' folder; masks_dir: ``{Id}.npz`` mask files
            (`hpa_zoo.data.synthetic.load_masks`); ids, y: the labelled images ((N, K) bool).
        classes: class ids to score (default: every labelled class; classes no mask file holds are left out).
        max_per_class: images scored per class (the first ones carrying it, in ``ids`` order).
        image_size: side the images are loaded at (default each model's input); the CAM is resized (bilinear)
            to the mask's size before scoring.
        layers: {model name: layer} overriding the registry's ``cam_layer`` (`cam_layers_of`).

    Returns:
        rows ``{"model", "layer", "class", "n", "pointing", "energy", "chance"}`` (chance: mean mask area fraction).

    Raises:
        HpaDataError: no mask file for any of the images.
    """
    import cv2

    from hpa_zoo.infer.explain import grad_cam, score_cams
    from hpa_zoo.data.images import load_rgby
    from hpa_zoo.data.synthetic import load_masks

    masks_dir = Path(masks_dir)
    have = [i for i, image_id in enumerate(ids) if (masks_dir / f"{image_id}.npz").is_file()]
    if not have:
        raise HpaDataError(f"{masks_dir}: no mask file {{Id}}.npz for any of the {len(ids)} images (e.g. "
                           f"{ids[0]}.npz); write them with hpa-zoo synth --masks (same arguments as the images)")
    classes = sorted(set(np.flatnonzero(y[have].any(0))) if classes is None else classes)
    rows, layers = [], cam_layers_of(models, layers)
    for name, model in models:
        layer = layers[name]
        size = _model_size(model, image_size)
        for c in classes:
            chosen = [i for i in have if y[i, c]][:max_per_class]
            if not chosen:
                continue
            masks = [load_masks(masks_dir / f"{ids[i]}.npz").get(int(c)) for i in chosen]
            keep = [(i, m) for i, m in zip(chosen, masks) if m is not None]
            if not keep:  # the class is labelled but no mask file holds it
                continue
            images = np.stack([load_rgby(images_dir, ids[i], size=size) for i, _ in keep])
            cams = grad_cam(model, images, class_index=int(c), layer_name=layer)
            mask_arr = np.stack([m for _, m in keep])
            cams = np.stack([cv2.resize(cam, (mask_arr.shape[2], mask_arr.shape[1]), interpolation=cv2.INTER_LINEAR)
                             for cam in cams])
            score = score_cams(cams, mask_arr)
            if not score["n"]:
                continue
            rows.append({"model": name, "layer": layer, "class": class_names[c], "n": score["n"],
                         "pointing": score["pointing"], "energy": score["energy"],
                         "chance": float(mask_arr[mask_arr.reshape(len(mask_arr), -1).any(1)].mean())})
        log.info("CAM relevance: %s scored on %d classes", name, len(classes))
    return rows


def cam_sections(models: Sequence[tuple[str, object]], ids: Sequence[str], y: np.ndarray, *, images_dir,
                 out_dir, save: Callable, masks_dir=None, image_size: int | None = None,
                 max_per_class: int = 24, class_names: Sequence[str] = CLASS_NAMES, layers: dict | None = None
                 ) -> dict:
    """The report's Fig. 3 panel and (with ``masks_dir``) the CAM-relevance table and CSV.

    Args:
        layers: {model name: layer} overriding the registry's ``cam_layer`` (`cam_layers_of`); the rest as
            `cam_panel` and `cam_relevance_rows`.

    Returns:
        dict ``{"layers" {model name: layer}, "picks", "cams" (`cam_panel`'s maps), "relevance" (rows or None),
        "html" (fragment: the layer of each model, the relevance table), "files" {name: path}}``.
    """
    from hpa_zoo.atomic import atomic_to_csv

    import pandas as pd

    images_dir = Path(images_dir)
    available = {i for i in ids if any(images_dir.glob(f"{i}_green.*"))}
    picks = pick_panel_images(ids, y, class_names, available=available)
    layers = cam_layers_of(models, layers)
    out: dict = {"layers": layers, "picks": picks, "cams": {}, "relevance": None, "files": {}, "html": ""}
    named = ", ".join(f"{html_lib.escape(n)} at <code>{html_lib.escape(layer)}</code>" for n, layer in layers.items())
    parts = [f"<p>Grad-CAM layer of each model (its registry row's <code>cam_layer</code> unless overridden): "
             f"{named}.</p>"]
    if picks:
        panel = cam_panel(models, images_dir, picks, Path(out_dir) / "fig3_gradcam.png", image_size=image_size,
                          class_names=class_names, save=save, layers=layers)
        out["cams"] = panel["cams"]
        out["files"]["fig3_gradcam"] = str(Path(out_dir) / "fig3_gradcam.png")
    else:
        parts.append("<p>Fig. 3: none of the panel classes (cytosol, nucleoli, mitochondria, plasma membrane, "
                     "Golgi apparatus) occurs among the images found.</p>")
    if masks_dir is not None:
        rows = cam_relevance_rows(models, images_dir, masks_dir, ids, y, max_per_class=max_per_class,
                                  image_size=image_size, class_names=class_names, layers=layers)
        out["relevance"] = rows
        out["files"]["cam_relevance"] = str(atomic_to_csv(pd.DataFrame(rows), Path(out_dir) / "cam_relevance.csv",
                                                          index=False, float_format="%.4f"))
        body = "".join(f"<tr><td>{r['model']}</td><td>{r['layer']}</td><td>{r['class']}</td><td>{r['n']}</td>"
                       f"<td>{r['pointing']:.3f}</td><td>{r['energy']:.3f}</td><td>{r['chance']:.3f}</td></tr>"
                       for r in rows)
        parts.append("<h2>CAM relevance</h2><p>Grad-CAM of each true class against its ground-truth mask: the "
                     "pointing game (the CAM's maximum lies in the mask) and the energy inside the mask (fraction of "
                     "the positive CAM mass). Chance = mean mask area (a flat CAM's energy).</p><table><tr>"
                     "<th>model</th><th>layer</th><th>class</th><th>images</th><th>pointing</th><th>energy</th>"
                     f"<th>chance</th></tr>{body}</table>")
    out["html"] = "".join(parts)
    return out


def resolve_report_inputs(inputs: Sequence, models: Sequence | None = None, *, load_models: bool = True
                          ) -> tuple[list[Path], list[tuple[str, object]]]:
    """``hpa-zoo report`` inputs -> (predictions CSVs, (name, model) pairs for the Grad-CAM sections).

    Args:
        inputs: predictions CSVs or training run folders (``hpa-zoo train --out``: its ``val_predictions.csv``
            and, for the CAMs, its ``preset/``).
        models: one model per input (registry name, preset folder or ``.keras``; ``-`` for none), default each
            run folder's preset; CSV inputs without a model get no CAM column.
        load_models: False returns no models (no Keras import).

    Raises:
        ConfigError: a folder without ``val_predictions.csv``, or a models list of another length.
    """
    from hpa_zoo.infer.ensemble import load_predictions

    csvs, specs = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if not (path / "val_predictions.csv").is_file():
                raise ConfigError(f"{path}: a folder input must be a training run (hpa-zoo train --out) with "
                                  f"val_predictions.csv; or pass the predictions CSV itself")
            csvs.append(path / "val_predictions.csv")
            specs.append(str(path / "preset") if (path / "preset").is_dir() else None)
        else:
            csvs.append(path)
            specs.append(None)
    if models:
        if len(models) != len(csvs):
            raise ConfigError(f"--models: {len(models)} models for {len(csvs)} inputs; give one per input ('-' for "
                              f"none)")
        specs = [None if m in (None, "-") else m for m in models]
    pairs = []
    if load_models and any(specs):
        from hpa_zoo.zoo.models_api import load

        for csv, spec in zip(csvs, specs):
            if spec is not None:
                p = load_predictions(csv)
                pairs.append((p.model_name or Path(p.path).stem, load(spec)))
    return csvs, pairs
