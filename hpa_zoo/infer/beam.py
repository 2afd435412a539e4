"""Prediction and embedding with Apache Beam ``RunInference`` (``hpa-zoo predict --beam`` / ``embed --beam``).

Beam does the scheduling, batching and retries on DirectRunner / FnApiRunner (this machine), Dataflow, Spark or
Flink; hpa-zoo brings only:

* `HpaZooModelHandler`, a ``apache_beam.ml.inference.base.ModelHandler`` over
  `hpa_zoo.infer.predict_images.load_member` (a registry name or preset folder, or several averaged as
  `hpa_zoo.infer.predict_images.predict_images` averages folds). ``run_inference`` calls the single-process code:
  `hpa_zoo.infer.tta.predict_tta` with each member's TTA, and for features the first member's feature layer
  (`hpa_zoo.zoo.models_api.feature_extractor`) on the whole image at the input size.
* the inputs: `discover_items` (a folder in the Kaggle / HPAv18 layout, with its CSV selecting the ids when it has
  one, a fine-tuning CSV or a list of image files), every image read and decoded by
  `hpa_zoo.infer.predict_images.read_item` (the single-process reader, `hpa_zoo.data.images`), i.e. brought to the model's
  image size before batching (every element of a batch has one shape); or a TFDS dataset's ``test`` split.
* paths: a local path or a URL. Inputs are read through `hpa_zoo.remote` (any fsspec protocol: ``memory://``,
  ``gs://`` with gcsfs, ``s3://`` with s3fs; else Beam's ``FileSystems``: ``gs://``, ``s3://``, ``hdfs://``); a
  remote fine-tuning CSV is copied to the hpa-zoo cache (`hpa_zoo.zoo.weights.stage_remote`) while its images stay
  remote. Remote image files are copied to a temporary local folder one element at a time and decoded there (error
  messages name the remote path). Outputs go through Beam's ``FileSystems``.
* outputs (`run_beam`): sharded ``probabilities-SSSSS-of-NNNNN.csv`` (``Id`` + one column per class, ``%.6f``
  as ``probabilities.csv``) and ``predictions-*.csv`` (``Id,Labels``), or for ``embed`` ``features-*.csv``
  (``Id,f0..`` float32 exactly, ``%.9g``); the same tables as Parquet with ``parquet=True`` (pyarrow);
  ``skipped-*.csv`` (``Id,reason``); and the `hpa_zoo.infer.ensemble` sidecar ``probabilities.csv.json`` /
  ``features.csv.json`` with a ``shards`` pattern. `read_shards` reads a sharded table back.
* Beam counters in namespace `NAMESPACE`: ``images_read``, ``images_skipped``, ``images_predicted``, and the
  distribution ``worker_peak_rss_mb`` (each worker process's peak resident memory, ``resource.getrusage``).

Random-crop TTA (Team 1's 3 crops) draws its boxes per batch from ``seed`` in both paths, so with random crops
the crops differ between runs that batch differently; deterministic TTA (``none``, ``d4``, Team 3's d4 mean)
gives the same numbers as the single-process path.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.remote import exists, is_remote, join, list_folder, local_copy, local_form, parent, read_bytes

log = logging.getLogger(__name__)

#: Beam metrics namespace of the counters.
NAMESPACE = "hpa_zoo"


def _require_beam():
    try:
        import apache_beam as beam  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--beam needs apache-beam ({exc}); install it with `pip install 'hpa-zoo[beam]'` "
                          f"(apache-beam==2.77.0)") from exc
    return beam


# ---------------------------------------------------------------------------------------------- file systems
# Reading local paths and URLs (fsspec, then Beam FileSystems) is `hpa_zoo.remote`, shared with the TFDS builders.
def write_text(path: str, text: str) -> str:
    """Write a small text file (the sidecar) locally (atomically) or through Beam's ``FileSystems``."""
    if not is_remote(path):
        from hpa_zoo.atomic import atomic_write_text

        return str(atomic_write_text(path, text))
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------- inputs
#: A folder's CSV that selects the ids, and the sub-folder the images are in (Kaggle test, Kaggle train, HPAv18).
_FOLDER_CSVS = (("sample_submission.csv", "test"), ("train.csv", "train"), ("HPAv18RBGY_wodpl.csv", "images"))


def discover_items(inputs, *, stains: Sequence, images_dir=None, skip_bad: bool = False) -> tuple[list, list]:
    """The images to predict, as picklable tuples ``(id, root, files, planes)``, and the ones left out.

    Args:
        inputs: a folder (Kaggle root with ``sample_submission.csv`` + ``test/``, ``train.csv`` + ``train/``, an
            HPAv18 root with its CSV + ``images/``, or any folder of ``{id}_{stain}`` files), a fine-tuning CSV,
            or a list of image files; local paths or URLs.
        stains: the stain of each model input channel (`hpa_zoo.infer.predict_images.Member.stains`).
        images_dir: the folder a CSV's file names are relative to.
        skip_bad: leave incomplete channel sets out instead of refusing.
    Returns:
        (items, skipped) with skipped a list of ``(id, reason)``.
    Raises:
        HpaDataError: as `hpa_zoo.infer.predict_images.discover`, naming the folder / CSV line.
    """
    from hpa_zoo.data.user_images import discover

    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]
    inputs = [local_form(f) for f in inputs] if isinstance(inputs, (list, tuple)) else local_form(inputs)
    if isinstance(inputs, (list, tuple)):
        remote = [f for f in inputs if is_remote(f)]
        if not remote:
            items, skipped = discover([os.fspath(f) for f in inputs], stains=stains)
            return [(i.id, str(i.root), i.files, i.planes) for i in items], skipped
        items = []
        for f in inputs:
            f = str(f)
            if not exists(f):
                raise HpaDataError(f"{f}: file not found; pass existing image files, a folder or a CSV")
            root, name = f.rsplit("/", 1)
            items.append((name.rsplit(".", 1)[0], root, (name,), None))
        return _unique(items), []
    path = str(os.fspath(inputs))
    csv_ids, folder = None, path
    if not path.lower().endswith(".csv"):
        for csv_name, sub in _FOLDER_CSVS:
            csv = join(path, csv_name)
            if exists(csv) and exists(join(path, sub)):
                csv_ids, folder = _csv_ids(csv), join(path, sub)
                break
    elif is_remote(path) or (images_dir is not None and is_remote(images_dir)):
        # the CSV is read on the launcher from a local copy (the hpa-zoo cache); its images stay where they are
        from hpa_zoo.zoo.weights import stage_remote

        local = stage_remote(path)
        root = local_form(images_dir) if images_dir is not None else parent(path)
        items, skipped = discover(local, stains=stains, images_dir=local.parent, skip_bad=skip_bad)
        return [(i.id, root, i.files, i.planes) for i in items], skipped
    else:
        items, skipped = discover(path, stains=stains, images_dir=images_dir, skip_bad=skip_bad)
        return [(i.id, str(i.root), i.files, i.planes) for i in items], skipped
    if not is_remote(folder) and csv_ids is None:
        items, skipped = discover(folder, stains=stains, skip_bad=skip_bad)
        return [(i.id, str(i.root), i.files, i.planes) for i in items], skipped
    return _folder_items(folder, stains, csv_ids, skip_bad)


def _csv_ids(csv: str) -> list[str]:
    """The ``Id`` column of a Kaggle / HPAv18 CSV, validated by `hpa_zoo.data.labels.read_labels_csv`."""
    from hpa_zoo.data.labels import read_labels_csv

    name = str(csv).rsplit("/", 1)[-1]
    root = str(csv)[: -len(name)].rstrip("/") or "."
    with local_copy(root, [name]) as local:
        return [str(i) for i in read_labels_csv(local / name, require_target=False)["Id"]]


def _folder_items(folder: str, stains, ids: list[str] | None, skip_bad: bool) -> tuple[list, list]:
    """Items of a folder of ``{id}_{stain}.{ext}`` files, restricted to ``ids`` (a CSV's) when given."""
    from hpa_zoo.constants import CHANNELS
    from hpa_zoo.data.images import HPAV18_PLANE
    from hpa_zoo.data.user_images import IMAGE_EXTENSIONS, check_complete
    from hpa_zoo.safepaths import check_image_id

    found: dict[str, dict[str, str]] = {}
    for name in list_folder(folder):
        stem, dot, ext = name.rpartition(".")
        if not dot or f".{ext.lower()}" not in IMAGE_EXTENSIONS:
            continue
        color = next((c for c in CHANNELS if stem.endswith(f"_{c}")), None)
        if color:
            found.setdefault(stem[: -len(color) - 1], {}).setdefault(color, name)
    wanted = ids if ids is not None else list(found)
    items, skipped = [], []
    for image_id in wanted:
        check_image_id(str(image_id), str(folder))
        files = found.get(image_id, {})
        missing = [s for s in stains if s not in files]
        if missing:
            skipped.append((image_id, f"missing {', '.join(map(str, missing))} channel file(s) in {folder} "
                                      f"(has {sorted(files)})"))
            continue
        items.append((image_id, folder, tuple(files[s] for s in stains), tuple(HPAV18_PLANE[s] for s in stains)))
    check_complete(folder, len(items), skipped, stains, skip_bad)
    return items, skipped


def _unique(items: list) -> list:
    seen: dict[str, int] = {}
    out = []
    for image_id, *rest in items:
        n = seen.get(image_id, 0)
        seen[image_id] = n + 1
        out.append((f"{image_id}#{n}" if n else image_id, *rest))
    return out


def read_element(item: tuple, *, n_channels: int, size: int, pixel_size_um=None, model_pixel_size_um=None):
    """One item ``(id, root, files, planes)`` as (size, size, n_channels) uint8, read and decoded by
    `hpa_zoo.infer.predict_images.read_item` (remote files through a temporary local copy).

    Raises:
        HpaDataError: an unreadable or inconsistent image, naming the file.
    """
    from hpa_zoo.data.user_images import Item, read_item

    image_id, root, files, planes = item
    with local_copy(root, files) as local:
        return read_item(Item(image_id, Path(local), tuple(files), planes), n_channels, size,
                         pixel_size_um=pixel_size_um, model_pixel_size_um=model_pixel_size_um)


# ---------------------------------------------------------------------------------------------- model handler
try:  # the subclass needs Beam at class-definition time; without Beam the module still imports
    from apache_beam.ml.inference.base import ModelHandler as _Base
except ImportError:  # pragma: no cover - apache-beam is in the beam and test extras
    _Base = object


class LoadedModels:
    """What `HpaZooModelHandler.load_model` returns (Beam keeps a weak reference to it): the members
    (`hpa_zoo.infer.predict_images.Member`) and the feature extractor (a keras.Model, or None)."""

    def __init__(self, members: list, extractor=None):
        self.members, self.extractor = members, extractor


class HpaZooModelHandler(_Base):
    """Beam ``ModelHandler`` of hpa-zoo models: one or several (averaged) registry names or preset folders.

    Elements are (S, S, C) uint8 images at the members' image size (`read_element`); use it keyed
    (``KeyedModelHandler(HpaZooModelHandler(...))``) to carry the ids. ``run_inference`` returns one
    ``PredictionResult`` per image whose ``inference`` is ``{"probabilities": (K,) float32}`` (the members'
    `hpa_zoo.infer.tta.predict_tta` probabilities, summed then divided by the number of members, as
    `hpa_zoo.infer.predict_images.predict_images`), plus ``"features": (F,) float32`` with ``features=True`` (the first
    member's feature layer on the whole image resized to the input size, no TTA, as ``predict --features``).
    """

    def __init__(self, models: Sequence[str], *, weights=None, tta="default", batch_size: int = 8, seed: int = 0,
                 features: bool = False, probabilities: bool = True, runtime: str = "keras",
                 min_batch_size: int = 1, max_batch_size: int = 32, large_model: bool = False,
                 model_copies: int | None = None):
        """Args:
            models: registry names or preset folders (local paths; a worker must see them).
            weights, tta, runtime: as `hpa_zoo.infer.predict_images.load_member`.
            batch_size: network batch size inside a Beam batch; seed: TTA random-crop seed.
            features: also return features; probabilities: False skips the TTA predictions (``embed``).
            min_batch_size, max_batch_size: Beam's ``BatchElements`` bounds (images per ``run_inference``).
            large_model: load one copy per machine shared by its worker processes (Beam's
                ``share_model_across_processes``); model_copies: how many such copies.
        """
        if batch_size < 1 or min_batch_size < 1 or max_batch_size < min_batch_size:
            raise ConfigError(f"batch_size={batch_size}, min/max_batch_size={min_batch_size}/{max_batch_size}: "
                              f"need batch_size >= 1 and 1 <= min_batch_size <= max_batch_size")
        self._models = [str(m) for m in models]
        self._weights, self._tta, self._runtime = weights, tta, runtime
        self._batch_size, self._seed = int(batch_size), int(seed)
        self._features, self._probabilities = bool(features), bool(probabilities)
        self._batching = {"min_batch_size": int(min_batch_size), "max_batch_size": int(max_batch_size)}
        self._large_model, self._copies = bool(large_model), model_copies

    def load_model(self) -> LoadedModels:
        """The members (`hpa_zoo.infer.predict_images.load_member`) and, with features, the feature extractor."""
        from hpa_zoo.infer.predict_images import load_member

        members = [load_member(m, weights=self._weights, tta=self._tta, runtime=self._runtime)
                   for m in self._models]
        extractor = None
        if self._features:
            from hpa_zoo.zoo.models_api import feature_extractor

            if not members[0].feature_layer:
                raise ConfigError(f"{members[0].name}: no feature layer in its registry row; embed another model")
            extractor = feature_extractor(members[0].keras_model, layer=members[0].feature_layer)
        return LoadedModels(members, extractor)

    def run_inference(self, batch: Sequence[np.ndarray], model: LoadedModels, inference_args=None) -> Iterable[Any]:
        """Probabilities (and features) of a batch of (S, S, C) uint8 images (class docstring)."""
        import keras
        from apache_beam.ml.inference.base import PredictionResult

        from hpa_zoo.infer.tta import predict_tta

        images = np.stack(list(batch))
        members = model.members
        out: dict[str, np.ndarray] = {}
        if self._probabilities:
            total = None
            for m in members:
                p = predict_tta(m.model, images, config=m.tta, image_size=m.image_size, input_size=m.input_size,
                                batch_size=self._batch_size, seed=self._seed, activation=m.activation)
                total = p if total is None else total + p
            out["probabilities"] = total / len(members)
        if model.extractor is not None:
            first = members[0]
            x = images.astype(np.float32)
            if first.input_size != first.image_size:
                x = keras.ops.image.resize(x, (first.input_size,) * 2)
            out["features"] = np.asarray(model.extractor.predict(x, batch_size=self._batch_size, verbose=0),
                                         np.float32)
        return [PredictionResult(image, {k: v[n] for k, v in out.items()}) for n, image in enumerate(batch)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        """Bytes of the images of a batch (Beam's throughput metrics)."""
        return int(sum(np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def batch_elements_kwargs(self) -> dict:
        return dict(self._batching)

    def share_model_across_processes(self) -> bool:
        return self._large_model

    def model_copies(self) -> int:
        return int(self._copies or 1)


# ---------------------------------------------------------------------------------------------- pipeline
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _format_row(image_id: str, values: np.ndarray, fmt: str) -> str:
    import csv

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([image_id, *(fmt % v for v in values)])
    return buf.getvalue()


def _header(columns: Sequence[str]) -> str:
    return _format_row("Id", np.asarray(list(columns), object), "%s")


def run_beam(models, inputs, *, out_dir, mode: str = "predict", beam_options: Sequence[str] | None = None,
             weights=None, tta="default", batch_size: int = 8, seed: int = 0, skip_bad: bool = False,
             images_dir=None, data_dir=None, pixel_size_um: float | None = None, parquet: bool = False,
             num_shards: int = 0, max_batch_size: int = 32, large_model: bool = False) -> dict:
    """Predict (``mode="predict"``) or embed (``mode="embed"``) with a Beam pipeline (module docstring).

    Args:
        models: a registry name / preset folder or a list of them (averaged; ``embed`` uses the first).
        inputs: a folder, a CSV or a list of image files (`discover_items`), local or URL; or a TFDS name
            (its ``test`` split, with ``data_dir``).
        out_dir: output folder, local or any Beam ``FileSystems`` URL.
        beam_options: Beam pipeline flags (``["--runner=FnApiRunner", "--direct_num_workers=2"]``); default
            DirectRunner.
        weights, tta, batch_size, seed, pixel_size_um, images_dir: as `hpa_zoo.infer.predict_images.predict_images`.
        skip_bad: leave unreadable images and incomplete channel sets out (``skipped-*.csv``), else stop at the
            first one naming its file.
        parquet: also write the tables as Parquet (needs pyarrow).
        num_shards: output shards (0: the runner decides).
        max_batch_size: most images per ``run_inference`` call; large_model: one model copy per machine.
    Returns:
        dict with ``"counters"`` ({name: value} of `NAMESPACE`), ``"peak_rss_mb"`` (max/min over worker
        processes, or None), and the written patterns/paths (``probabilities``, ``predictions``, ``features``,
        ``skipped``, ``sidecar``, ``parquet_*``).
    Raises:
        ConfigError: bad arguments, no apache-beam, an unknown runner. HpaDataError: bad input without
            ``skip_bad`` (Beam appends the step it ran in).
    """
    beam = _require_beam()
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    import dataclasses

    from hpa_zoo.infer.ensemble import FORMAT_VERSION, sidecar_path
    from hpa_zoo.infer.predict_images import check_members, load_member
    from hpa_zoo.checks import beam_pipeline_options

    if mode not in ("predict", "embed"):
        raise ConfigError(f"mode={mode!r}: use 'predict' or 'embed'")
    if num_shards < 0 or batch_size < 1 or max_batch_size < 1:
        raise ConfigError(f"num_shards={num_shards}, batch_size={batch_size}, max_batch_size={max_batch_size}: "
                          f"need num_shards >= 0 (0: the runner decides; CLI --num-shards) and batch sizes >= 1 "
                          f"(--batch-size)")
    names = [str(os.fspath(m)) for m in (models if isinstance(models, (list, tuple)) else [models])]
    if not names:
        raise ConfigError("run_beam: no model given")
    if mode == "embed":
        names = names[:1]
    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"parquet output needs pyarrow ({exc}); pip install pyarrow, or drop --parquet") from exc
    options = beam_pipeline_options(list(beam_options or []))
    members = [load_member(m, weights=weights, tta=tta) for m in names]  # settings; the workers load their own
    first = members[0]
    check_members(members, pixel_size_um)
    if len({m.image_size for m in members}) != 1:
        raise ConfigError(f"the models read images at different sizes {[m.image_size for m in members]}; "
                          f"a Beam batch has one shape: average models of one image size")
    if mode == "embed" and not first.feature_layer:
        raise ConfigError(f"{first.name}: no feature layer in its registry row; embed another model")
    class_names, size, n_channels = list(first.class_names), first.image_size, len(first.stains)
    thresholds = np.mean([m.thresholds for m in members], axis=0)
    activation, tta_meta = first.activation, dataclasses.asdict(first.tta)
    model_name = "+".join(dict.fromkeys(m.model_name for m in members))
    feature_dim = None
    if mode == "embed":
        from hpa_zoo.zoo.models_api import feature_extractor

        feature_dim = int(feature_extractor(first.keras_model, layer=first.feature_layer).output_shape[-1])
    stains, model_pixel = list(first.stains), first.pixel_size_um
    del members, first

    tfds_source = _tfds_source(inputs, data_dir)
    if tfds_source is None:
        items, pre_skipped = discover_items(inputs, stains=stains,
                                            images_dir=images_dir, skip_bad=skip_bad)
    else:
        items, pre_skipped = [], []
    handler = KeyedModelHandler(HpaZooModelHandler(
        names, weights=weights, tta=tta, batch_size=batch_size, seed=seed, features=mode == "embed",
        probabilities=mode == "predict", max_batch_size=max_batch_size, large_model=large_model))
    out = local_form(out_dir)
    if not is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    shard = "-SSSSS-of-NNNNN"
    read_kw = {"n_channels": n_channels, "size": size, "pixel_size_um": pixel_size_um,
               "model_pixel_size_um": model_pixel if pixel_size_um is not None else None}

    class _Read(beam.DoFn):
        def __init__(self):
            self.read = Metrics.counter(NAMESPACE, "images_read")
            self.skipped = Metrics.counter(NAMESPACE, "images_skipped")

        def process(self, item):
            try:
                image = read_element(item, **read_kw)
            except HpaDataError as exc:
                if not skip_bad:
                    raise
                self.skipped.inc()
                yield beam.pvalue.TaggedOutput("skipped", (item[0], str(exc)))
                return
            self.read.inc()
            yield item[0], image

    class _Done(beam.DoFn):
        def __init__(self):
            self.predicted = Metrics.counter(NAMESPACE, "images_predicted")
            self.rss = Metrics.distribution(NAMESPACE, "worker_peak_rss_mb")

        def process(self, keyed):
            self.predicted.inc()
            self.rss.update(int(round(_peak_rss_mb())))
            yield keyed[0], keyed[1].inference

    written: dict[str, Any] = {}
    p = beam.Pipeline(options=options)
    if tfds_source is None:
        decoded = (p | "Items" >> beam.Create(items) | "Spread" >> beam.Reshuffle()
                   | "Read" >> beam.ParDo(_Read()).with_outputs("skipped", main="images"))
        images, bad = decoded.images, decoded.skipped
    else:
        images = p | "TFDS" >> _read_tfds(tfds_source, size, Metrics.counter(NAMESPACE, "images_read"))
        bad = p | "NoBad" >> beam.Create([])
    results = images | "RunInference" >> RunInference(handler) | "Count" >> beam.ParDo(_Done())
    skipped = (bad, p | "Listed" >> beam.Create(pre_skipped)) | "AllSkipped" >> beam.Flatten()
    _ = (skipped | "SkipRows" >> beam.Map(lambda r: _format_row(r[0], np.asarray([r[1]], object), "%s"))
         | "WriteSkipped" >> beam.io.WriteToText(join(out, "skipped"), file_name_suffix=".csv", shard_name_template=shard,
                                                 num_shards=num_shards, header="Id,reason"))
    written["skipped"] = join(out, f"skipped{shard}.csv")
    if mode == "predict":
        table, columns, fmt = "probabilities", class_names, "%.6f"
        values = results | "Probs" >> beam.Map(lambda r: (r[0], r[1]["probabilities"]))
        labels = values | "Labels" >> beam.Map(_labels_row, class_names, thresholds, activation)
        _ = labels | "WriteLabels" >> beam.io.WriteToText(
            join(out, "predictions"), file_name_suffix=".csv", shard_name_template=shard, num_shards=num_shards,
            header="Id,Labels")
        written["predictions"] = join(out, f"predictions{shard}.csv")
    else:
        table, columns, fmt = "features", [f"f{i}" for i in range(feature_dim)], "%.9g"
        values = results | "Feats" >> beam.Map(lambda r: (r[0], r[1]["features"]))
    _ = (values | "Rows" >> beam.Map(lambda r: _format_row(r[0], r[1], fmt))
         | "WriteTable" >> beam.io.WriteToText(join(out, table), file_name_suffix=".csv", shard_name_template=shard,
                                               num_shards=num_shards, header=_header(columns)))
    written[table] = join(out, f"{table}{shard}.csv")
    if parquet:
        _write_parquet(beam, values, join(out, table), columns, num_shards)
        written[f"parquet_{table}"] = join(out, f"{table}{shard}.parquet")
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    counters = {m.key.metric.name: m.committed for m in metrics["counters"]}
    counters = {k: int(counters.get(k, 0)) for k in ("images_read", "images_skipped", "images_predicted")}
    counters["images_skipped"] += len(pre_skipped)
    rss = [m.committed for m in metrics["distributions"] if m.key.metric.name == "worker_peak_rss_mb"]
    peak = {"max": rss[0].max, "min": rss[0].min} if rss and rss[0] and rss[0].count else None
    sidecar = {"format_version": FORMAT_VERSION, "model_name": model_name, "fold": "test", "tta": tta_meta,
               "class_names": class_names if mode == "predict" else None, "n_rows": counters["images_predicted"],
               "shards": written[table], "columns": ["Id", *columns], "source": str(inputs)}
    written["sidecar"] = write_text(join(out, sidecar_path(f"{table}.csv").name), json.dumps(sidecar, indent=2))
    log.info("Beam %s counters: %s%s", mode, ", ".join(f"{k}={v}" for k, v in counters.items()),
             f"; worker peak RSS {peak['min']}-{peak['max']} MB" if peak else "")
    return {"counters": counters, "peak_rss_mb": peak, **written}


def _labels_row(keyed, class_names, thresholds, activation) -> str:
    from hpa_zoo.infer.predict_images import LABEL_SEPARATOR

    image_id, p = keyed
    on = [int(np.argmax(p))] if activation == "softmax" else list(np.flatnonzero(p > thresholds))
    return _format_row(image_id, np.asarray([LABEL_SEPARATOR.join(class_names[k] for k in on)], object), "%s")


def _write_parquet(beam, values, prefix: str, columns: Sequence[str], num_shards: int):
    import pyarrow as pa

    schema = pa.schema([("Id", pa.string())] + [(c, pa.float32()) for c in columns])
    cols = list(columns)
    return (values | "ParquetRows" >> beam.Map(lambda r: {"Id": r[0], **{c: float(v) for c, v in zip(cols, r[1])}})
            | "WriteParquet" >> beam.io.WriteToParquet(prefix, schema, file_name_suffix=".parquet",
                                                       num_shards=num_shards, shard_name_template="-SSSSS-of-NNNNN"))


# ---------------------------------------------------------------------------------------------- TFDS input
def _tfds_source(inputs, data_dir):
    """(name, data_dir) when ``inputs`` names a TFDS dataset (not a path, URL, CSV or file list), else None."""
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != 1:
            return None
        inputs = inputs[0]
    text = local_form(inputs)
    if is_remote(text) or Path(text).exists() or not re.fullmatch(r"[a-z][a-z0-9_]*(/[\w.]+)?(:[\d.*]+)?", text):
        return None
    return text, None if data_dir is None else str(os.fspath(data_dir))


def _read_tfds(source, size: int, counter):
    """A PTransform: the ``test`` split of a TFDS dataset as (id, (size, size, 4) uint8), resized like
    `hpa_zoo.infer.predict._test_source` (bilinear, rounded, clipped)."""
    import apache_beam as beam
    import tensorflow_datasets as tfds

    from hpa_zoo.data import image_ops, sources

    name, data_dir = source
    sources.register_tfds_builders(name)  # hpa_kaggle / hpa_v18
    try:
        builder = sources.tfds_builder(name, data_dir=data_dir)  # an older prepared version (1.0.0 PNG) too
    except HpaDataError:
        raise
    except Exception as exc:  # tfds: DatasetNotFoundError, or a name it cannot parse
        raise HpaDataError(f"{name}: not a folder, CSV, file or a TFDS dataset in {data_dir or 'the default data dir'} "
                           f"({type(exc).__name__}: {str(exc)[:200]}); pass an existing path, or --data-dir") from exc

    def convert(example):
        image = np.asarray(example["image"])
        if image.shape[0] != size:
            import tensorflow as tf

            resized = image_ops.resize(tf.convert_to_tensor(image), size)
            image = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
        counter.inc()
        return example["id"].decode() if isinstance(example["id"], bytes) else str(example["id"]), image

    @beam.ptransform_fn
    def read(pcoll):
        return (pcoll | tfds.beam.ReadFromTFDS(builder, split="test") | beam.Map(tfds.as_numpy)
                | beam.Map(convert))

    return read()


# ---------------------------------------------------------------------------------------------- reading back
def read_shards(out_dir, table: str = "probabilities"):
    """The sharded CSV ``table`` (``probabilities``, ``predictions``, ``features``, ``skipped``) of a `run_beam`
    output folder as one pandas DataFrame (rows in shard order; sort by ``Id`` if you need an order).

    Raises:
        HpaDataError: no shards of that table in ``out_dir``.
    """
    import pandas as pd

    out = local_form(out_dir)
    names = [n for n in list_folder(out) if re.fullmatch(rf"{re.escape(table)}-\d{{5}}-of-\d{{5}}\.csv", n)]
    if not names:
        raise HpaDataError(f"{out}: no {table}-SSSSS-of-NNNNN.csv shards; run `hpa-zoo predict --beam` (or embed) "
                           f"with --out {out}")
    frames = [pd.read_csv(io.BytesIO(read_bytes(join(out, n))), dtype={"Id": str}, keep_default_na=False)
              for n in names]
    return pd.concat(frames, ignore_index=True)
