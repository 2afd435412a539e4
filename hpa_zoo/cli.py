"""The ``hpa-zoo`` command line: a thin layer over the Python API (never the other way round).

Each sub-command is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``func`` to a ``_run_<name>(args) -> int`` handler, which imports what it needs lazily (so ``hpa-zoo --help``
does not start TensorFlow).
"""
from __future__ import annotations

import argparse
import sys


# ---------------------------------------------------------------------------------------------- synth
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic HPA-like dataset in the Kaggle layout")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the dataset folder to create")
    p.add_argument("--n-train", type=int, default=1000, help="train images (default 1000)")
    p.add_argument("--n-test", type=int, default=200, help="test images (default 200)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512, as Kaggle)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed gives byte-identical files")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs; 0 = this process)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--preset", choices=("hpa", "demo"), default="hpa",
                   help="difficulty: hpa (realistic, default) or demo (learnable on a CPU in minutes)")
    p.add_argument("--masks", action="store_true",
                   help="also write masks/{train,test}/ID.npz: each class's ground-truth pattern mask")
    p.add_argument("--fields-per-sample", type=int, default=1, metavar="K",
                   help="fields of view per sample, sharing labels, cell line and a hidden signature; adds a "
                        "Sample column (default 1: independent images)")
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    import time

    from hpa_zoo.data.synthetic import write_synthetic_dataset

    start = time.perf_counter()
    out = write_synthetic_dataset(args.out_dir, n_train=args.n_train, n_test=args.n_test, size=args.size,
                                  seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                                  preset=args.preset, masks=args.masks,
                                  fields_per_sample=args.fields_per_sample)
    took = time.perf_counter() - start
    n = args.n_train + args.n_test
    print(f"wrote {n} synthetic images ({args.size}px, preset {args.preset}) to {out} in {took:.1f}s "
          f"({n / max(took, 1e-9):.1f} images/s); synthetic data: its numbers are never HPA results")
    return 0


# ---------------------------------------------------------------------------------------------- prepare
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="build a TFDS dataset (hpa_kaggle / hpa_v18) from a manual-download folder")
    p.add_argument("--dataset", required=True, choices=["hpa_kaggle", "hpa_v18"])
    p.add_argument("--manual-dir", required=True, help="the downloaded data, laid out as `tfds_hpa` documents")
    p.add_argument("--data-dir", default=None, help="where TFDS writes the dataset (default ~/tensorflow_datasets)")
    p.add_argument("--config", default="512", help="image size: 512, 1024, 1536 or 128 (default 512)")
    p.add_argument("--storage", choices=["jpeg", "png"], default="jpeg",
                   help="how images are stored: jpeg (default: RGB+Y JPEG, quality 95, 4:4:4; mean error ~1 grey "
                        "level, smaller and faster to decode) or png (lossless; the '<size>_png' config)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out bad samples (missing/unreadable channels, bad CSV rows) and list them, "
                        "instead of stopping at the first one")
    p.add_argument("--csv-name", default=None, help="hpa_v18 only: the label CSV in --manual-dir")
    _add_beam_arguments(p, "Apache Beam (full-resolution data; needs `pip install 'hpa-zoo[beam]'`, docs/BEAM.md)",
                        "generate the splits with an Apache Beam pipeline (same examples as without it)")
    p.set_defaults(func=_run_prepare)


def _add_beam_arguments(p, title: str, what: str):
    """``--beam``, ``--runner``, ``--beam-option`` (read back by `_beam_flags`); returns the argument group."""
    beam = p.add_argument_group(title)
    beam.add_argument("--beam", action="store_true", help=what)
    beam.add_argument("--runner", default=None,
                      help="Beam runner: DirectRunner (default, this machine), FnApiRunner (in-process, offline), "
                           "DataflowRunner, SparkRunner, FlinkRunner, PortableRunner; implies --beam")
    beam.add_argument("--beam-option", action="append", default=[], metavar="NAME=VALUE",
                      help="a Beam pipeline option, repeatable, e.g. --beam-option direct_num_workers=2 "
                           "--beam-option project=my-project; implies --beam")
    return beam


def _beam_flags(args) -> list[str] | None:
    """`prepare`'s Beam arguments as pipeline flags (``["--runner=...", "--name=value", ...]``); None: no Beam."""
    from hpa_zoo.errors import ConfigError

    if not (args.beam or args.runner or args.beam_option):
        return None
    flags = [f"--runner={args.runner}"] if args.runner else []
    for option in args.beam_option:
        name, sep, _ = option.lstrip("-").partition("=")
        if not name or not sep:
            raise ConfigError(f"--beam-option {option!r}: write NAME=VALUE, e.g. --beam-option direct_num_workers=2")
        flags.append("--" + option.lstrip("-"))
    return flags


def _run_prepare(args) -> int:
    import tfds_hpa

    extra = {"csv_name": args.csv_name} if args.csv_name else {}
    name = f"{args.dataset}/{tfds_hpa.config_name(args.config, args.storage)}"
    print(f"building {name} ({args.storage} storage) from {args.manual_dir} ...", flush=True)
    builder = tfds_hpa.build(args.dataset, manual_dir=args.manual_dir, data_dir=args.data_dir, config=args.config,
                             storage=args.storage, on_error="skip" if args.skip_bad else "raise",
                             beam_options=_beam_flags(args), **extra)
    print(f"{name} written to {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"  {name}: {split.num_examples} examples")
    if getattr(builder, "beam_counters", None):  # empty when an existing dataset was reused
        print("Beam counters: " + ", ".join(f"{k}={v}" for k, v in builder.beam_counters.items()))
    if args.skip_bad:  # from the dataset's metadata, so a build reused from --data-dir reports it too
        from hpa_zoo.data.labels import SkipReport

        print(SkipReport([tuple(e) for e in builder.info.metadata.get("skipped", [])]).summary())
    return 0


# ---------------------------------------------------------------------------------------------- folds
def _add_folds(sub) -> None:
    p = sub.add_parser("folds", help="leak-aware multilabel stratified K folds, written to CSV")
    p.add_argument("--kaggle-dir", default=None, help="Kaggle folder: train.csv + train/")
    p.add_argument("--hpav18-dir", default=None, help="HPAv18 folder: HPAv18RBGY_wodpl.csv + its JPEGs")
    p.add_argument("--out", required=True, help="the folds CSV to write (Id,fold,source,group)")
    p.add_argument("--n-splits", type=int, default=5, help="number of folds (default 5, Team 1)")
    p.add_argument("--seed", type=int, default=100, help="stratification seed (default 100, Team 1)")
    p.add_argument("--max-distance", type=int, default=12,
                   help="pHash Hamming distance on R, G and B under which images are duplicates (default 12)")
    p.add_argument("--workers", type=int, default=4, help="threads reading images for hashing")
    p.add_argument("--group-by-sample", action="store_true",
                   help="keep all images of a sample (the CSV's Sample column) in one fold, as well as pHash duplicates")
    p.set_defaults(func=_run_folds)


def _run_folds(args) -> int:
    from hpa_zoo.data.folds import folds_for_folders, save_folds

    folds = folds_for_folders(args.kaggle_dir, args.hpav18_dir, n_splits=args.n_splits, seed=args.seed,
                              max_distance=args.max_distance, progress=True, workers=args.workers,
                              group_by_sample=args.group_by_sample)
    save_folds(folds, args.out)
    n_groups, n_dup = folds["group"].nunique(), int(folds["group"].duplicated(keep=False).sum())
    print(f"{len(folds)} images, {n_groups} groups ({n_dup} images have a near-duplicate) -> {args.out}")
    print(folds.groupby(["fold", "source"]).size().unstack(fill_value=0).to_string())
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="predictions CSV vs labels CSV -> macro F1 report")
    p.add_argument("pred_csv", metavar="PRED_CSV", help="submission 'Id,Predicted' (empty Predicted = no label)")
    p.add_argument("labels_csv", metavar="LABELS_CSV", help="truth 'Id,Target'")
    p.add_argument("--out", default=None, help="also write the Markdown report to this file")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from hpa_zoo.atomic import atomic_write_text
    from hpa_zoo.nn.metrics import evaluate_csv, report_to_markdown

    report = evaluate_csv(args.pred_csv, args.labels_csv)
    text = f"# {args.pred_csv} vs {args.labels_csv}\n\n" + report_to_markdown(report)
    print(text, end="")
    if args.out:
        atomic_write_text(args.out, text)
    return 0


# ---------------------------------------------------------------------------------------------- models
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--team", default=None, help="only this team's models, e.g. team1")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from hpa_zoo.registry import get_spec, list_models

    for name in list_models(team=args.team):
        spec = get_spec(name)
        weights = ",".join(w.name for w in spec.weights) or "-"
        print(f"{name:40s} {spec.team:6s} {spec.input_size:5d}px {spec.channels:5s} weights: {weights}")
    return 0


# ---------------------------------------------------------------------------------------------- qc
def _add_qc(sub) -> None:
    p = sub.add_parser("qc", help="the paper's image quality control: enough whole cells, a protein signal")
    p.add_argument("folder", help="a Kaggle / HPAv18-layout folder of {id}_{red,green,...} images")
    p.add_argument("--out", required=True, help="folder for qc.csv and qc_summary.json")
    p.add_argument("--full-res-px", type=int, default=2048,
                   help="side of the full-resolution fields the images were downscaled from (Kaggle: 2048)")
    p.add_argument("--min-cells", type=int, default=5, help="cells not touching the border an image needs")
    p.add_argument("--min-object-px", type=float, default=8000,
                   help="smallest cell area in px at full resolution (scaled to each image's resolution)")
    p.add_argument("--write-filtered", default=None, metavar="NEW.csv",
                   help="write the passing rows of the labels CSV (or their ids) here")
    p.add_argument("--labels", default=None, help="the Id,Target CSV (default FOLDER/../train.csv)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: the CPU count)")
    p.add_argument("--skip-bad", action="store_true", help="skip ids without both a red and a green file")
    p.set_defaults(func=_run_qc)


def _run_qc(args) -> int:
    from hpa_zoo.data.qc import qc_folder

    summary = qc_folder(args.folder, out_dir=args.out, full_res_px=args.full_res_px, min_cells=args.min_cells,
                        min_object_px_full_res=args.min_object_px, write_filtered=args.write_filtered,
                        labels_csv=args.labels, workers=args.workers, skip_bad=args.skip_bad)
    print(f"{summary['passed']} of {summary['n_images']} images pass; failures: {summary['reasons'] or 'none'}")
    _print_written(summary, ("qc_csv", "filtered_csv", "summary"))
    return 0


def _print_written(summary: dict, keys) -> None:
    """One indented ``key: path`` line per file a command wrote (the keys present in its summary)."""
    for key in keys:
        if key in summary:
            print(f"  {key}: {summary[key]}")


def _add_leaks(sub) -> None:
    p = sub.add_parser("leaks", help="same-sample leak audit between two image folders (pHash, features, "
                                     "metric-learning embedding)")
    p.add_argument("a", help="first folder of {id}_{red,green,blue,yellow} images (e.g. train)")
    p.add_argument("b", help="second folder (e.g. test, or HPAv18)")
    p.add_argument("--out", required=True, help="folder for pairs.csv, pairs.png and audit.json")
    p.add_argument("--model", default="team1_densenet121_512", help="classifier whose features are compared")
    p.add_argument("--weights", default=None, help="its weights (hpa, imagenet, a file)")
    p.add_argument("--no-features", action="store_true", help="pHash only")
    p.add_argument("--embedding-model", default=None,
                   help="Team 1's metric-learning model trained on your samples (preset with an 'embedding' layer)")
    p.add_argument("--a-csv", default=None, help="Id,Sample CSV of A (the truth, for recall/precision)")
    p.add_argument("--b-csv", default=None, help="Id,Sample CSV of B")
    p.add_argument("--image-size", type=int, default=None, help="feature models' input side (default the row's)")
    p.add_argument("--top", type=int, default=24, help="pairs in the thumbnail sheet")
    p.set_defaults(func=_run_leaks)


def _run_leaks(args) -> int:
    from hpa_zoo.analysis.leaks import audit

    summary = audit(args.a, args.b, out_dir=args.out, model=None if args.no_features else args.model,
                    weights=args.weights, embedding_model=args.embedding_model, a_csv=args.a_csv, b_csv=args.b_csv,
                    image_size=args.image_size, top=args.top)
    print(f"{summary['n_candidates']} candidate pairs between {summary['n_a']} and {summary['n_b']} images "
          f"(signals: {', '.join(summary['signals'])})")
    for name, score in (summary.get("recall_precision") or {}).items():
        print(f"  {name}: {score}")
    _print_written(summary, ("pairs_csv", "pairs_png", "audit_json"))
    return 0


def _add_train_embedding(sub) -> None:
    p = sub.add_parser("train-embedding", help="train Team 1's ArcFace same-sample embedding on a folder's Sample ids")
    p.add_argument("data", help="Kaggle-layout folder whose train.csv has a Sample column")
    p.add_argument("--out", required=True, help="run folder (checkpoint, state.json, history.csv, preset/)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default 768, Team 1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 50, Team 1)")
    p.add_argument("--batch-size", type=int, default=None, help="batch (default 32, Team 1)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-4, Team 1)")
    p.add_argument("--weights", default=None, help="initial weights: imagenet or a .weights.h5")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_train_embedding)


def _run_train_embedding(args) -> int:
    from hpa_zoo.train.metric_learning import train_metric_learning

    result = train_metric_learning(args.data, out_dir=args.out, image_size=args.image_size, epochs=args.epochs,
                                   batch_size=args.batch_size, learning_rate=args.lr, weights=args.weights,
                                   seed=args.seed)
    loss = result["history"]["loss"]
    print(f"trained on {result['num_samples']} samples: ArcFace loss {loss[0]:.4f} -> {loss[-1]:.4f}; "
          f"use it with hpa-zoo leaks --embedding-model {result['preset']}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="the paper's Fig. 2 (a-d), Supp. Fig. 2 and Fig. 3 (Grad-CAMs, CAM "
                                      "relevance) from runs or predictions CSVs, as HTML")
    p.add_argument("predictions", nargs="+", help="probabilities CSVs (Id + class columns; sidecars name the models) "
                                                  "or training run folders (their val_predictions.csv and preset/)")
    p.add_argument("--labels", default=None,
                   help="Id,Target CSV of the predicted images (default: the first file's Target column, as in "
                        "val_predictions.csv)")
    p.add_argument("--out", required=True, help="folder for report.html and the PNGs")
    p.add_argument("--train-labels", default=None, help="Id,Target CSV of the training images (Fig. 2a)")
    p.add_argument("--data-label", default="your data",
                   help="what the images are, printed on every figure (e.g. 'synthetic data - not an HPA result')")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (top class always on)")
    p.add_argument("--images", default=None, help="folder of the images' channel files: adds the Fig. 3 Grad-CAMs")
    p.add_argument("--models", nargs="+", default=None,
                   help="one model per input for the Grad-CAMs (registry name, preset, .keras, '-' for none; "
                        "default: a run folder's preset/)")
    p.add_argument("--masks", default=None, help="ground-truth masks ({Id}.npz, hpa-zoo synth --masks): adds CAM "
                                                 "relevance per class and model")
    p.add_argument("--image-size", type=int, default=None, help="side the CAM images are loaded at (default: the "
                                                                "model's input)")
    p.add_argument("--cam-layer", action="append", default=None, metavar="MODEL=LAYER",
                   help="Grad-CAM layer of one model (default: its registry row's cam_layer); repeat per model")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from hpa_zoo.analysis.report import figure_report
    from hpa_zoo.analysis.report_cams import resolve_report_inputs

    csvs, models = resolve_report_inputs(args.predictions, args.models, load_models=args.images is not None)
    if args.images is not None and not models:
        from hpa_zoo.errors import ConfigError

        raise ConfigError("--images draws each model's Grad-CAMs, but no input names a model: give run folders "
                          "(with preset/) or --models, one per input")
    layers = dict(item.split("=", 1) for item in args.cam_layer or () if "=" in item)
    if len(layers) != len(args.cam_layer or ()):
        from hpa_zoo.errors import ConfigError

        raise ConfigError(f"--cam-layer {args.cam_layer}: give MODEL=LAYER, e.g. "
                          f"team1_densenet121_512=conv4_block24_concat")
    summary = figure_report(csvs, args.labels, out_dir=args.out, data_label=args.data_label,
                            train_csv=args.train_labels, threshold=args.threshold, cam_models=models or None,
                            images_dir=args.images, masks_dir=args.masks, image_size=args.image_size,
                            cam_layers=layers or None)
    for name, m in summary["models"].items():
        print(f"{name}: macro F1 {m['macro_f1']:.3f}, precision {m['micro_precision']:.3f}, recall "
              f"{m['micro_recall']:.3f} ({summary['data']})")
    for name, layer in (summary.get("cam_layers") or {}).items():
        print(f"{name}: Grad-CAM at {layer}")
    print(f"report: {summary['html']}")
    return 0


# ---------------------------------------------------------------------------------------------- weights
def _add_weights(sub) -> None:
    p = sub.add_parser("weights", help="published weights: prove a conversion on the package's test tensors")
    verbs = p.add_subparsers(dest="weights_command", required=True, metavar="VERB")
    v = verbs.add_parser("verify", help="convert the published ONNX and compare Keras with the package's own "
                                        "test tensors (test_input.npy -> test_output_classes/features.npy)")
    v.add_argument("model", help="registry name, e.g. team1_densenet121_1024")
    v.add_argument("--weights", default="hpa", help="the published set (default hpa)")
    v.add_argument("--onnx", default=None, help="a local ONNX file instead of the (cached) download")
    v.add_argument("--tensors", default=None, help="a folder with test_input.npy, test_output_classes.npy and "
                                                   "test_output_features.npy instead of the download")
    v.set_defaults(func=_run_weights_verify)


def _run_weights_verify(args) -> int:
    from hpa_zoo.zoo.verify_weights import verify

    report = verify(args.model, args.weights, onnx_path=args.onnx, tensors_dir=args.tensors)
    for line in report.lines():
        print(line)
    return 0 if report.passed else 1


# ---------------------------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    from hpa_zoo.recipe import KEEP_WEIGHTS

    p = sub.add_parser("train", help="train one fold of a registered model with its team recipe")
    p.add_argument("model", help="registry name, e.g. team1_densenet121_512 (see `hpa-zoo models`)")
    p.add_argument("--data", required=True, help="Kaggle-layout folder (train.csv + train/) or TFDS name "
                                                 "like hpa_kaggle/512")
    p.add_argument("--data-dir", default=None, help="TFDS data directory (TFDS data only)")
    p.add_argument("--fold", type=int, default=0, help="validation fold id (default 0)")
    p.add_argument("--folds-csv", default=None, help="Id,fold CSV (default: computed, saved to OUT/folds.csv)")
    p.add_argument("--out", required=True, help="output folder; re-running the same command resumes")
    p.add_argument("--epochs", type=int, default=None, help="epochs (the LR schedule is scaled to it)")
    p.add_argument("--image-size", type=int, default=None, help="side the images are loaded at")
    p.add_argument("--input-size", type=int, default=None,
                   help="side of the network input: the crop (Team 1) or the resize target (Team 3: 512 -> 1024)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: train images // batch size")
    p.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"], default=None)
    p.add_argument("--xla", action="store_true", help="compile the train step with XLA (jit_compile)")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker", "tpu"], default=None,
                   help="hpa_zoo.train.distribute: mirrored = all local GPUs (JAX: DataParallel), multiworker = the "
                        "TF_CONFIG cluster, tpu; --batch-size is the global batch")
    p.add_argument("--weights", default=None, help="initial weights: imagenet, hpa or a .weights.h5 file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic TF ops: bit-identical reruns and resumes (slower on GPU)")
    p.add_argument("--augment-on", choices=["host", "device"], default="host",
                   help="where the training augmentation runs: host (tf.data, default) or device (Team 1: the "
                        "host only decodes uint8, crop/resize/D4 run in the training step; for a GPU/TPU)")
    p.add_argument("--keep-weights", choices=KEEP_WEIGHTS, default=None,
                   help="weights the preset keeps: best (the recipe's rule: the best epoch on its monitor, e.g. "
                        "Team 1's val_focal) or last (the final epoch); default: the recipe's")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from hpa_zoo.train.trainer import train

    train(args.model, args.data, fold=args.fold, folds_csv=args.folds_csv, out_dir=args.out,
          data_dir=args.data_dir, epochs=args.epochs, image_size=args.image_size, input_size=args.input_size,
          batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, precision=args.precision,
          jit_compile=args.xla, strategy=args.strategy, seed=args.seed, weights=args.weights,
          deterministic=args.deterministic, augment_on=args.augment_on,
          recipe_overrides={"keep_weights": args.keep_weights} if args.keep_weights else None)
    return 0


# ---------------------------------------------------------------------------------------------- predict
def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="preset(s) -> Kaggle submission + probabilities CSV (folds averaged)")
    p.add_argument("presets", nargs="+", metavar="PRESET_OR_MODEL",
                   help="preset folder(s) written by `hpa-zoo train` / `finetune` (averaged), or a registry name")
    p.add_argument("--data", default=None,
                   help="Kaggle folder (sample_submission.csv + test/), TFDS name, a folder of your own "
                        "{id}_{red,green,blue,yellow} images (no CSV needed) or a CSV of filename(s)[,labels]")
    p.add_argument("--images", nargs="+", default=None, metavar="FILE",
                   help="your own image files (one multi-channel image each, in the model's channel order)")
    p.add_argument("--images-dir", default=None, help="the folder a --data CSV's file names are relative to")
    p.add_argument("--weights", default=None, help="for a registry name: hpa, imagenet or a weights file")
    p.add_argument("--features", action="store_true", help="also write features.npy + features_ids.csv")
    p.add_argument("--runtime", choices=["auto", "keras", "onnx"], default="keras",
                   help="onnx: onnxruntime on the project's own ONNX export (logits equal Keras to 1e-5, cached per "
                        "weights file; faster than Keras on one CPU thread, benchmarks/README.md); auto: onnx for "
                        "presets on a CPU-only machine with onnxruntime, else keras")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip images with an incomplete channel set or an unreadable file (listed in skipped.csv)")
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="µm per pixel of your images: rescale them to the model's scale first (default off)")
    p.add_argument("--data-dir", default=None, help="TFDS data directory (TFDS data only)")
    p.add_argument("--out", required=True, help="output folder for submission.csv and probabilities.csv")
    p.add_argument("--tta", choices=["default", "none", "d4"], default="default",
                   help="the recipe's TTA, none, or d4 (8 dihedral views, mean; your own images only)")
    p.add_argument("--thresholds", choices=["preset", "refit"], default="preset",
                   help="the presets' fitted thresholds, or the recipe's rule re-fitted on the test probabilities")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tie-fallback", action="store_true",
                   help="degenerate LB-ratio labels (a class on for >= 90%% of the images): use the tie-aware variant")
    _add_beam_outputs(_add_beam_arguments(p, "Apache Beam RunInference (docs/BEAM.md)",
                                          "predict with an Apache Beam pipeline: sharded CSVs in --out"))
    p.set_defaults(func=_run_predict)


def _add_beam_outputs(group) -> None:
    group.add_argument("--parquet", action="store_true", help="with --beam: also write Parquet shards (pyarrow)")
    group.add_argument("--num-shards", type=int, default=0, help="with --beam: output shards (0: the runner's choice)")
    group.add_argument("--large-model", action="store_true",
                       help="with --beam: one model copy per machine shared by its worker processes (big models)")


def _run_beam_verb(args, mode: str, models, inputs) -> int:
    """``predict --beam`` / ``embed --beam``: one `hpa_zoo.infer.beam.run_beam` call, then what it wrote."""
    from hpa_zoo.infer.beam import run_beam

    got = run_beam(models, inputs, out_dir=args.out, mode=mode, beam_options=_beam_flags(args),
                   weights=args.weights, tta=getattr(args, "tta", "default"), batch_size=args.batch_size,
                   skip_bad=getattr(args, "skip_bad", False), images_dir=getattr(args, "images_dir", None),
                   data_dir=getattr(args, "data_dir", None), pixel_size_um=args.pixel_size, parquet=args.parquet,
                   num_shards=args.num_shards, large_model=args.large_model)
    print("Beam counters: " + ", ".join(f"{k}={v}" for k, v in got.pop("counters").items()))
    peak = got.pop("peak_rss_mb")
    if peak:
        print(f"peak memory per worker process: {peak['min']}-{peak['max']} MB")
    for kind, path in got.items():
        print(f"  {kind + ':':22s} {path}")
    return 0


def _run_predict(args) -> int:
    from hpa_zoo.infer.predict import is_kaggle_source

    if args.images is None and args.data is None:
        from hpa_zoo.errors import ConfigError

        raise ConfigError("give --data (a folder, CSV or TFDS name) or --images FILE ...")
    if _beam_flags(args) is not None:
        return _run_beam_verb(args, "predict", args.presets, args.images if args.images is not None else args.data)
    from hpa_zoo.remote import is_remote
    from hpa_zoo.zoo.weights import stage_remote

    args.presets = [str(stage_remote(p)) if is_remote(p) else p for p in args.presets]  # URL presets: local copies
    if args.images is None and is_kaggle_source(args.presets, args.data):
        from hpa_zoo.infer.predict import predict

        predict(args.presets, args.data, out_dir=args.out, data_dir=args.data_dir, tta=args.tta,
                batch_size=args.batch_size, thresholds=None if args.thresholds == "preset" else "refit",
                tie_fallback=getattr(args, "tie_fallback", False), runtime=args.runtime)
        return 0
    from hpa_zoo.infer.predict_images import predict_images

    written = predict_images(args.presets if len(args.presets) > 1 else args.presets[0],
                             args.images if args.images is not None else args.data, out_dir=args.out,
                             images_dir=args.images_dir, weights=args.weights, tta=args.tta,
                             batch_size=args.batch_size, features=args.features, skip_bad=args.skip_bad,
                             pixel_size_um=args.pixel_size, runtime=args.runtime)
    for kind, path in written.items():
        print(f"  {kind + ':':22s} {path}")
    return 0


# ---------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    from hpa_zoo.demo import DEMO_DEFAULTS as d, DEMO_TTA, DEMO_TTA_CHOICES
    from hpa_zoo.recipe import KEEP_WEIGHTS

    p = sub.add_parser("demo", help="end-to-end demo on synthetic data (synthesise, TFDS, train, report, predict)")
    p.add_argument("--out", default="hpa_zoo_demo", help="output folder (default ./hpa_zoo_demo)")
    p.add_argument("--preset", choices=("demo", "hpa"), default="demo", help="synthetic difficulty (default demo)")
    p.add_argument("--n-train", type=int, default=d["n_train"])
    p.add_argument("--n-test", type=int, default=d["n_test"])
    p.add_argument("--size", type=int, default=d["size"], help="side of the synthetic images")
    p.add_argument("--image-size", type=int, default=d["image_size"], help="training load size (default --size)")
    p.add_argument("--input-size", type=int, default=d["input_size"], help="network input")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"], help="linear LR warm-up (0: none)")
    p.add_argument("--peak-lr", type=float, default=d["peak_lr"],
                   help="rate after the warm-up, then cosine decay to the recipe's last rate; 0 (and "
                        "--warmup-epochs 0) = the recipe's own schedule")
    p.add_argument("--keep-weights", choices=KEEP_WEIGHTS, default=d["keep_weights"],
                   help="weights the preset keeps: last (default: the final epoch of the cosine schedule) or best "
                        "(Team 1's rule: the lowest validation focal loss)")
    p.add_argument("--tta", choices=DEMO_TTA_CHOICES, default=DEMO_TTA,
                   help="test-submission TTA: whole (default: Team 1's 8 dihedral views, max, no random crops), "
                        "default (the recipe's: + 3 random crops per view, 4x the time) or none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="team1_densenet121_512", help="registered model to train (needs a recipe)")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from hpa_zoo.demo import run_demo

    run_demo(args.out, n_train=args.n_train, n_test=args.n_test, size=args.size, image_size=args.image_size,
             input_size=args.input_size, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
             tta=args.tta, model_name=args.model, preset=args.preset, warmup_epochs=args.warmup_epochs,
             peak_lr=args.peak_lr or None, keep_weights=args.keep_weights)
    return 0


# ---------------------------------------------------------------------------------------------- autoaugment-search
def _add_autoaugment_search(sub) -> None:
    p = sub.add_parser("autoaugment-search",
                       help="Team 3's AutoAugment random search -> policy JSON for training (teams.md §3.5)")
    p.add_argument("--data", required=True, help="Kaggle-layout folder (train.csv + train/), split into two halves")
    p.add_argument("--out", required=True, help="the policy JSON to write (top-k x 5 sub-policies)")
    p.add_argument("--candidates", type=int, default=50, help="random candidate policies (default 50, the team's)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per candidate (default 60)")
    p.add_argument("--size", type=int, default=256, help="image side for the proxy (default 256)")
    p.add_argument("--top-k", type=int, default=5, help="policies kept and flattened (default 5 -> 25 sub-policies)")
    p.add_argument("--window", type=int, default=10, help="moving-average window of the F1 score (default 10)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--proxy", choices=["resnet18", "small_cnn"], default="resnet18",
                   help="network trained per candidate (default resnet18, the team's)")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-augmentation baseline run")
    p.add_argument("--results", default=None, help="results CSV (default OUT.results.csv); a re-run resumes it")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_autoaugment_search)


def _run_autoaugment_search(args) -> int:
    from hpa_zoo.train.policy_search import search

    search(args.data, args.out, candidates=args.candidates, epochs=args.epochs, size=args.size, top_k=args.top_k,
           window=args.window, batch_size=args.batch_size, seed=args.seed, proxy=args.proxy,
           baseline=not args.no_baseline, results_csv=args.results)
    return 0


# ---------------------------------------------------------------------------------------------- finetune
def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a zoo model on your own images, classes and stains")
    p.add_argument("base", help="registry name (e.g. team1_densenet121_512) or preset folder")
    p.add_argument("--csv", required=True, help="CSV: labels (names separated by ';') and filename (one "
                                                "multi-channel file) or filenames (one per channel, ';')")
    p.add_argument("--images-dir", required=True, help="folder the CSV's file names are relative to")
    p.add_argument("--out", required=True, help="output folder; the preset goes to OUT/preset")
    p.add_argument("--channels", default="red,green,blue,yellow",
                   help="your channel names in file order, comma-separated (e.g. nucleus,protein)")
    p.add_argument("--map", action="append", default=[], metavar="CHANNEL=STAIN",
                   help="map a channel to an HPA stain (red/green/blue/yellow) or 'none' (repeatable)")
    p.add_argument("--classes", default=None, help="class names in output order, comma-separated "
                                                   "(default: the sorted names in the CSV)")
    p.add_argument("--single-label", action="store_true", help="softmax + cross-entropy (one label per image)")
    p.add_argument("--weights", default=None, help="for a registry name: imagenet, hpa or a weights file")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--freeze-epochs", type=int, default=2, help="first epochs with the backbone frozen")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the frozen phase (then /10)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="µm per pixel of your images: rescale them to the model's scale first (default off)")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args) -> int:
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.train.finetune import finetune

    channel_map = {}
    for item in args.map:
        channel, sep, stain = item.partition("=")
        if not sep:
            raise ConfigError(f"--map {item!r}: write CHANNEL=STAIN, e.g. --map dapi=blue or --map mito=none")
        channel_map[channel.strip()] = None if stain.strip().lower() == "none" else stain.strip()
    preset = finetune(args.base, args.csv, args.images_dir, out_dir=args.out,
                      classes=args.classes.split(",") if args.classes else None, multi_label=not args.single_label,
                      channels=tuple(c.strip() for c in args.channels.split(",")), channel_map=channel_map or None,
                      weights=args.weights, epochs=args.epochs, freeze_epochs=args.freeze_epochs,
                      image_size=args.image_size, batch_size=args.batch_size, learning_rate=args.lr,
                      val_fraction=args.val_fraction, seed=args.seed, pixel_size_um=args.pixel_size)
    print(f"fine-tuned preset: {preset}")
    return 0


# ---------------------------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model as TF SavedModel, ONNX or a bioimage.io package")
    p.add_argument("model", help="registry name, preset folder or .keras file")
    p.add_argument("--format", required=True, choices=["saved_model", "onnx", "bioimageio"])
    p.add_argument("--out", required=True, help="SavedModel folder, .onnx file or bioimage.io package folder")
    p.add_argument("--weights", default=None, help="for a registry name: imagenet, hpa or a weights file")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the model's)")
    p.add_argument("--name", default=None, help="bioimageio: display name (default: the model name)")
    p.add_argument("--test-image", default=None, metavar="DIR/ID",
                   help="bioimageio: a field of view {ID}_{red,green,blue,yellow}.png used as test tensor")
    p.add_argument("--author", action="append", default=None, help="bioimageio: author name (repeatable)")
    p.add_argument("--license", default="MIT", help="bioimageio: SPDX licence id of the weights")
    p.set_defaults(func=_run_export)


def _cli_model(name, weights, image_size, channels: int = 4):
    from hpa_zoo.zoo.models_api import load

    shape = (image_size, image_size, channels) if image_size else None
    return load(name, weights=weights, input_shape=shape)


def _run_export(args) -> int:
    from pathlib import Path

    from hpa_zoo.infer import export

    model = _cli_model(args.model, args.weights, args.image_size)
    print(f"exporting {model.name} ({model.count_params():,} parameters) as {args.format} ...", flush=True)
    if args.format == "saved_model":
        out = export.export_saved_model(model, args.out)
    elif args.format == "onnx":
        out = export.export_onnx(model, args.out)
    else:
        image = None
        if args.test_image:
            from hpa_zoo.data.images import load_rgby

            folder, image_id = Path(args.test_image).parent, Path(args.test_image).name
            image = load_rgby(folder, image_id, size=int(model.input_shape[1] or 512))
        authors = [{"name": a} for a in args.author] if args.author else None
        out = export.export_bioimageio(model, args.out, name=args.name or model.name, test_image=image,
                                       authors=authors, license=args.license)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------- explain
def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM map of one class for one image, as a PNG")
    p.add_argument("model", help="registry name, preset folder or .keras file")
    p.add_argument("image_id", metavar="IMAGE_ID", help="the image id ({ID}_{red,green,blue,yellow}.png)")
    p.add_argument("--images-dir", required=True, help="folder holding the image's channel files")
    p.add_argument("--class", dest="class_", default="0", help="class index or name (default 0)")
    p.add_argument("--cam-layer", "--layer", dest="layer", default=None,
                   help="layer (default: the registry row's cam_layer, e.g. DenseNet Block3 conv4_block24_concat)")
    p.add_argument("--out", required=True, help="PNG to write (image | overlay)")
    p.add_argument("--weights", default=None, help="for a registry name: imagenet, hpa or a weights file")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the model's)")
    p.set_defaults(func=_run_explain)


def _run_explain(args) -> int:
    from hpa_zoo.constants import CLASS_NAMES
    from hpa_zoo.errors import ConfigError
    from hpa_zoo.infer.explain import default_cam_layer, grad_cam, save_cam_png
    from hpa_zoo.data.images import load_rgby

    model = _cli_model(args.model, args.weights, args.image_size)
    if args.class_.isdigit():
        class_index = int(args.class_)
    elif args.class_ in CLASS_NAMES:
        class_index = CLASS_NAMES.index(args.class_)
    else:
        raise ConfigError(f"--class {args.class_!r}: give a class index or one of the names {list(CLASS_NAMES)}")
    image = load_rgby(args.images_dir, args.image_id, size=int(model.input_shape[1] or 512))
    layer = args.layer or default_cam_layer(model)
    cam = grad_cam(model, image, class_index=class_index, layer_name=layer)[0]
    out = save_cam_png(args.out, image, cam)
    print(f"Grad-CAM of class {class_index} at layer {layer} -> {out}")
    return 0


# ---------------------------------------------------------------------------------------------- embed
def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="features of a folder of images, their UMAP projection and a scatter plot")
    p.add_argument("model", help="registry name, preset folder or .keras file")
    p.add_argument("--data", required=True, help="Kaggle folder (train.csv + train/) or a folder of channel "
                                                 "files with an optional labels.csv (Id,Target)")
    p.add_argument("--csv", default=None, help="Id,Target CSV (default: DATA/train.csv or DATA/labels.csv)")
    p.add_argument("--out", required=True, help="folder for features.npy/.csv, projection.csv, embedding.png")
    p.add_argument("--weights", default=None, help="for a registry name: imagenet, hpa or a weights file")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the model's)")
    p.add_argument("--layer", default=None, help="feature layer (default: the registry row's feature_layer)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="µm per pixel of your images: rescale them to the model's scale first (default off)")
    p.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors (PCA below n_neighbors+1 images)")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--html", action="store_true",
                   help="also write OUT/explorer.html: the interactive, offline embedding explorer")
    p.add_argument("--data-label", default="your images", help="what the images are, shown on the page")
    _add_beam_outputs(_add_beam_arguments(p, "Apache Beam RunInference (docs/BEAM.md)",
                                          "embed with an Apache Beam pipeline: sharded features CSVs in --out "
                                          "(no projection; --data: a folder, CSV, image files or TFDS name)"))
    p.add_argument("--skip-bad", action="store_true", help="with --beam: skip unreadable images (skipped-*.csv)")
    p.set_defaults(func=_run_embed)


def _run_embed(args) -> int:
    from hpa_zoo.analysis.embedding import embed_folder

    if _beam_flags(args) is not None:
        return _run_beam_verb(args, "embed", [args.model], args.data)
    result = embed_folder(args.model, args.data, out_dir=args.out, csv=args.csv, weights=args.weights,
                          image_size=args.image_size, layer=args.layer, batch_size=args.batch_size,
                          pixel_size_um=args.pixel_size, n_neighbors=args.n_neighbors, min_dist=args.min_dist,
                          seed=args.seed, html=args.html, data_label=args.data_label)
    print(f"embedded {len(result['ids'])} images from {result['images_dir']} at {result['size']}px with "
          f"{result['model_name']}" + (" (one forward pass: features and predictions)" if args.html else ""))
    if result["method"] == "pca":
        print(f"only {len(result['ids'])} images (<= n_neighbors={args.n_neighbors}): projected with PCA instead "
              f"of UMAP")
    print(f"wrote features {result['features'].shape}, projection.csv and embedding.png to {args.out}")
    page = result["explorer"]
    if page is not None:
        print(f"wrote {page['html']} ({page['bytes'] / 1e6:.1f} MB"
              + (f", images in {page['sidecar']}" if page["sidecar"] else "") + ")")
    return 0


COMMANDS = [_add_synth, _add_prepare, _add_folds, _add_evaluate, _add_models, _add_weights, _add_qc, _add_leaks, _add_report]
COMMANDS += [_add_train, _add_predict, _add_demo]
COMMANDS += [_add_finetune, _add_export, _add_explain, _add_embed]
COMMANDS += [_add_autoaugment_search]
COMMANDS += [_add_train_embedding]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="hpa-zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _show_library_messages() -> None:
    """hpa-zoo's INFO log records (e.g. a weights conversion's measured differences) on stderr, once."""
    import logging

    class _Stderr(logging.StreamHandler):  # the current sys.stderr at each record (it may be replaced)
        def emit(self, record):
            self.stream = sys.stderr
            super().emit(record)

    logger = logging.getLogger("hpa_zoo")
    if not any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("hpa-zoo: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpa-zoo`` console script. Returns the process exit code."""
    from hpa_zoo.errors import HpaZooError

    from hpa_zoo.interrupt import release_frames, terminate_raises

    args = build_parser().parse_args(argv)
    _show_library_messages()
    try:
        with terminate_raises():  # SIGTERM unwinds like Ctrl-C: cleanups run, nothing half-written is kept
            return int(args.func(args) or 0)
    except HpaZooError as exc:
        print(f"hpa-zoo {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # hpa_zoo.interrupt.Interrupted carries the signal and what to do next
        release_frames(exc)  # a pipeline stopped mid-stream is freed before the interpreter shuts down
        print(f"hpa-zoo {args.command}: {exc if str(exc) else 'interrupted'}", file=sys.stderr)
        return 128 + int(getattr(exc, "signum", 2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
