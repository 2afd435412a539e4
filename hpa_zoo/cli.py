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
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    import time

    from hpa_zoo.synthetic import write_synthetic_dataset

    start = time.perf_counter()
    out = write_synthetic_dataset(args.out_dir, n_train=args.n_train, n_test=args.n_test, size=args.size,
                                  seed=args.seed, workers=args.workers, overwrite=args.overwrite)
    took = time.perf_counter() - start
    n = args.n_train + args.n_test
    print(f"wrote {n} synthetic images ({args.size}px) to {out} in {took:.1f}s ({n / max(took, 1e-9):.1f} images/s); "
          f"synthetic data: its numbers are never HPA results")
    return 0


# ---------------------------------------------------------------------------------------------- prepare
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="build a TFDS dataset (hpa_kaggle / hpa_v18) from a manual-download folder")
    p.add_argument("--dataset", required=True, choices=["hpa_kaggle", "hpa_v18"])
    p.add_argument("--manual-dir", required=True, help="the downloaded data, laid out as `tfds_hpa` documents")
    p.add_argument("--data-dir", default=None, help="where TFDS writes the dataset (default ~/tensorflow_datasets)")
    p.add_argument("--config", default="512", help="image size: 512, 1024, 1536 or 128 (default 512)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out bad samples (missing/unreadable channels, bad CSV rows) and list them, "
                        "instead of stopping at the first one")
    p.add_argument("--csv-name", default=None, help="hpa_v18 only: the label CSV in --manual-dir")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    import tfds_hpa

    extra = {"csv_name": args.csv_name} if args.csv_name else {}
    print(f"building {args.dataset}/{args.config} from {args.manual_dir} ...", flush=True)
    builder = tfds_hpa.build(args.dataset, manual_dir=args.manual_dir, data_dir=args.data_dir, config=args.config,
                             on_error="skip" if args.skip_bad else "raise", **extra)
    print(f"{args.dataset}/{args.config} written to {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"  {name}: {split.num_examples} examples")
    if args.skip_bad:  # from the dataset's metadata, so a build reused from --data-dir reports it too
        from hpa_zoo.labels import SkipReport

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
    p.set_defaults(func=_run_folds)


def _run_folds(args) -> int:
    from hpa_zoo.folds import folds_for_folders, save_folds

    folds = folds_for_folders(args.kaggle_dir, args.hpav18_dir, n_splits=args.n_splits, seed=args.seed,
                              max_distance=args.max_distance, progress=True, workers=args.workers)
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
    from hpa_zoo.metrics import evaluate_csv, report_to_markdown

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
    from hpa_zoo.autoaugment_search import search

    search(args.data, args.out, candidates=args.candidates, epochs=args.epochs, size=args.size, top_k=args.top_k,
           window=args.window, batch_size=args.batch_size, seed=args.seed, proxy=args.proxy,
           baseline=not args.no_baseline, results_csv=args.results)
    return 0


def _not_yet(args) -> int:
    print(f"hpa-zoo {args.command}: not implemented yet", file=sys.stderr)
    return 2


COMMANDS = [_add_synth, _add_prepare, _add_folds, _add_evaluate, _add_models]
COMMANDS += [_add_autoaugment_search]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="hpa-zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hpa-zoo`` console script. Returns the process exit code."""
    from hpa_zoo.errors import HpaZooError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HpaZooError as exc:
        print(f"hpa-zoo {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hpa-zoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
