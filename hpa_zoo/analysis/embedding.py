"""``hpa-zoo embed``: a folder's features, their 2-D projection, the scatter plot and (``html=True``) the explorer.

`embed_folder` reads the folder once through tf.data (`hpa_zoo.data.sources.folder_dataset`) and runs the model
**once** per batch: `hpa_zoo.infer.explain.features_and_probabilities` splits it into a two-output model (the
feature layer and the logits), so the explorer's top classes cost no second forward pass. The whole image is seen
at the model's input size, without TTA, so those probabilities are ``hpa-zoo predict --tta none``'s. Then
`hpa_zoo.infer.explain.umap_projection` (PCA below ``n_neighbors + 1`` images), `plot_embedding`, and
`hpa_zoo.analysis.explorer.build_explorer` with 256 px views of the same files.

Outputs in ``out_dir`` (atomic writes): ``features.npy`` (N, D) float32, ``features.csv`` (``Id`` + ``f0..``),
``projection.csv`` (``Id, x, y, Target, method``), ``embedding.png``, and with ``html=True`` ``explorer.html``
(+ ``explorer_images/`` for large sets).
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from hpa_zoo.atomic import atomic_path, atomic_to_csv
from hpa_zoo.errors import ConfigError

log = logging.getLogger(__name__)

#: Longer side of the explorer's click view (its thumbnails are made from it).
VIEW_PX = 256


def resolve_folder(data, csv=None) -> tuple[Path, Path | None]:
    """The image folder and labels CSV of ``embed --data``: a Kaggle folder (``train.csv`` + ``train/``), or a
    folder of channel files with an optional ``labels.csv``; an explicit ``csv`` wins."""
    data = Path(data)
    if (data / "train.csv").is_file() and (data / "train").is_dir():
        return data / "train", Path(csv) if csv else data / "train.csv"
    if csv is None and (data / "labels.csv").is_file():
        return data, data / "labels.csv"
    return data, Path(csv) if csv else None


def _model_and_activation(model, weights, image_size):
    """(keras model, activation, registry name or preset path for the pixel size) of a name, preset or model."""
    if not isinstance(model, (str, os.PathLike)):
        return model, "sigmoid", model.name
    from hpa_zoo.zoo.models_api import load, preset_info

    shape = (image_size, image_size, 4) if image_size else None
    loaded = load(model, weights=weights, input_shape=shape)
    activation = preset_info(model)["activation"] if Path(model).is_dir() else "sigmoid"
    return loaded, activation, model


def embed_folder(model, data, *, out_dir, csv=None, weights=None, image_size: int | None = None,
                 layer: str | None = None, batch_size: int = 8, pixel_size_um: float | None = None,
                 n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, html: bool = False,
                 data_label: str = "your images") -> dict:
    """Features, projection, plot and optionally the explorer page of a folder of images (module docstring).

    Args:
        model: registry name, preset folder or ``.keras`` file (loaded with ``weights`` at ``image_size``), or a
            keras.Model (B, S, S, 4) [0, 255] -> logits (B, K) named after its registry row.
        data: a Kaggle folder or a folder of ``{Id}_{red,green,blue,yellow}.*`` files (`resolve_folder`).
        out_dir: output folder. csv: ``Id,Target`` CSV (default ``train.csv`` / ``labels.csv``).
        weights, image_size: for a name or path (`hpa_zoo.zoo.models_api.load`).
        layer: feature layer (default the registry row's ``feature_layer``).
        batch_size: images per forward pass (>= 1).
        pixel_size_um: µm per pixel of the images: rescaled to the model's scale first (default off: each image
            is resized whole to the model's input).
        n_neighbors, min_dist, seed: `hpa_zoo.infer.explain.umap_projection`.
        html: also write ``explorer.html`` with each image's top classes (same forward pass as the features).
        data_label: what the images are, shown on the page.

    Returns:
        dict ``ids`` (N), ``features`` (N, D) float32, ``probabilities`` (N, K) float32 or None (without
        ``html``), ``xy`` (N, 2), ``method`` ("umap" / "pca"), ``model_name``, ``size`` (input side),
        ``images_dir``, ``files`` {name: path}, ``explorer`` (`build_explorer`'s dict or None).

    Raises:
        ConfigError: a batch size < 1, a pixel size for a model whose own is unknown.
        HpaDataError: missing or unreadable image files (from the data layer).
    """
    from hpa_zoo.data.labels import format_target, read_labels_csv
    from hpa_zoo.data.sources import folder_dataset
    from hpa_zoo.infer.explain import embed, features_and_probabilities, plot_embedding, umap_projection

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: use at least 1")
    images_dir, csv = resolve_folder(data, csv)
    out = Path(out_dir)
    net, activation, pixel_ref = _model_and_activation(model, weights, image_size)
    size = int(net.input_shape[1] or 512)
    ds = _model_dataset(images_dir, csv, size, pixel_size_um, pixel_ref)
    ids: list[str] = []

    def batches():  # one read of the files: the ids are collected on the way
        for b in ds.batch(batch_size).as_numpy_iterator():
            ids.extend(i.decode() for i in b["id"])
            yield b["image"]

    log.info("embedding the images of %s at %d px ...", images_dir, size)
    if html:
        feats, probs = features_and_probabilities(net, batches(), layer=layer, batch_size=batch_size,
                                                  activation=activation, verbose=True)
    else:
        feats, probs = embed(net, batches(), layer=layer, batch_size=batch_size, verbose=True), None
    by_id = {}
    if csv is not None:
        table = read_labels_csv(csv)
        by_id = dict(zip(table["Id"], table["labels"]))
    labels = [tuple(by_id.get(i, ())) for i in ids]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        xy = umap_projection(feats, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    method = "pca" if any("PCA" in str(w.message) for w in caught) else "umap"
    if method == "pca":
        log.info("only %d images (<= n_neighbors=%d): projected with PCA instead of UMAP", len(ids), n_neighbors)
    files = _write_tables(out, ids, feats, xy, [format_target(t) for t in labels], method)
    import matplotlib.pyplot as plt

    title = f"{net.name}: {method.upper()} of features"
    plt.close(plot_embedding(xy, labels, out / "embedding.png", title=title))
    files["embedding"] = out / "embedding.png"
    page = None
    if html:
        from hpa_zoo.analysis.explorer import build_explorer

        views = folder_dataset(images_dir, csv, ids=ids, image_size=VIEW_PX, labelled=False).map(lambda e: e["image"])
        page = build_explorer(xy, ids, labels, out / "explorer.html", images=views.as_numpy_iterator(),
                              probabilities=probs, data_label=data_label, progress=True, title=title)
        files["explorer"] = Path(page["html"])
    return {"ids": ids, "features": feats, "probabilities": probs, "xy": xy, "method": method,
            "model_name": net.name, "size": size, "images_dir": images_dir, "files": files, "explorer": page}


def _model_dataset(images_dir: Path, csv, size: int, pixel_size_um, pixel_ref):
    """The folder's examples at the model's input: resized whole, or rescaled to its µm per pixel."""
    from hpa_zoo.data.sources import folder_dataset

    if pixel_size_um is None:
        log.info("note: no pixel size given (--pixel-size UM): each image is resized whole to the model input")
        return folder_dataset(images_dir, csv, image_size=size, labelled=False)
    from hpa_zoo.data.image_ops import rescale_to_model
    from hpa_zoo.infer.predict_images import model_pixel_size

    target = model_pixel_size(pixel_ref, size)
    if target is None:
        raise ConfigError(f"{pixel_ref}: its training pixel size is unknown, so images cannot be rescaled to it; "
                          f"drop --pixel-size")
    rescale = functools.partial(rescale_to_model, size=size, scale=pixel_size_um / target)
    return folder_dataset(images_dir, csv, labelled=False).map(lambda e: {**e, "image": rescale(e["image"])})


def _write_tables(out: Path, ids, feats: np.ndarray, xy: np.ndarray, targets, method: str) -> dict[str, Path]:
    """features.npy, features.csv and projection.csv (atomic)."""
    import pandas as pd

    with atomic_path(out / "features.npy") as tmp:
        np.save(tmp, feats)
    cols = pd.DataFrame(feats, columns=[f"f{i}" for i in range(feats.shape[1])])
    return {"features": out / "features.npy",
            "features_csv": atomic_to_csv(pd.concat([pd.DataFrame({"Id": ids}), cols], axis=1), out / "features.csv"),
            "projection": atomic_to_csv(pd.DataFrame({"Id": ids, "x": xy[:, 0], "y": xy[:, 1], "Target": targets,
                                                      "method": method}), out / "projection.csv")}
