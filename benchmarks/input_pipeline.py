"""Input-pipeline throughput per CPU core, by recipe path and storage format (issue P2).

    python benchmarks/input_pipeline.py [--images DIR] [--seconds 8] [--formats png4,raw_zlib,...] [--threads N]

Every figure is **images per CPU-second of this process** (``time.process_time``) with TensorFlow's intra-op,
inter-op and tf.data private thread pools and OpenCV's pool all set to one thread: the per-core rate, and robust to
other load on the machine (wall-clock images/s are printed too). ``--threads N`` maps with N threads (each op still
single-threaded, OpenCV one thread per call): its wall images/s over a ``--threads 1`` run is the N-core scaling.
The source images are the real HPA samples (``--images``, default ``../shared/data/hpa_real_samples``) upsampled
to the stored size, as in the issue's measurement (real full-size images hold more detail and decode slower).

Paths:

* ``team1``: Team 1's training path at 1024 (`zoo_models.teams.team1_bestfitting.train_map`): a 1536 px image, random-scale
  crop (side ~ U(1024, 1536)) joined and resized to 1024 by OpenCV (`hpa_zoo.data.cv_ops`), one of the 8 dihedral
  transforms, float32.
* ``team1_device``: the host part of ``hpa-zoo train --augment-on device``, where the crop, resize and D4 run on
  the accelerator (`hpa_zoo.augment.device.RandomScaleCropD4`, as ``benchmarks/train_throughput.py`` times them):
  the library's host map (Team 1's ``Recipe.device_augment.host_map``, `hpa_zoo.augment.device.device_host_map`):
  decode the whole 1536 px image to uint8 and draw the per-example random numbers, nothing else.
* ``team3``: Team 3's path (`zoo_models.teams.team3_pudae.train_map`): a 512 px image, D4 + one AutoAugment sub-policy
  of the team's 25, resized to 1024, float32.

Storage formats (what a TFDS example would hold):

* ``png4``: one 4-channel PNG (today's `tfds_hpa` ``Image(encoding_format="png")``);
* ``raw_zlib`` / ``raw_bytes``: ``tfds.features.Tensor`` uint8 with zlib or plain bytes encoding;
* ``jpeg_rgb_y``: an RGB JPEG (4:2:0 chroma subsampling, OpenCV's default) + a grayscale Y JPEG, quality 95;
  ``jpeg_rgb_y444``: the same without chroma subsampling, decoded with the accurate integer IDCT: the `tfds_hpa`
  default since 2.0.0, encoded and decoded by the library (`hpa_zoo.data.rgby_jpeg`), and on the Team 1 path fed
  undecoded to Team 1's own ``train_map``, as the trainer does; ``jpeg4``: four grayscale JPEGs (quality 95).
  JPEG paths decode only the crop window (``tf.image.decode_and_crop_jpeg``) on the Team 1 path. The pixel error
  against the original is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORMATS = ("png4", "raw_zlib", "raw_bytes", "jpeg_rgb_y", "jpeg_rgb_y444", "jpeg4")
PATHS = ("team1", "team1_device", "team3")
JPEG_QUALITY = 95


def _configure_threads(threads: int = 1) -> None:
    """TensorFlow's intra-op and inter-op pools at ``threads``; OpenCV at one thread per call (tf.data's parallel
    map supplies the parallelism, as in training)."""
    import cv2
    import tensorflow as tf

    cv2.setNumThreads(1)  # Team 1's train_map resizes with OpenCV (hpa_zoo.data.cv_ops)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process (e.g. under pytest): rates per CPU-s still
        print(f"note: TensorFlow's thread pools were already initialised; tf.data still runs on {threads} thread(s)")


def source_images(folder: Path, size: int):
    """The real samples as (size, size, 4) uint8 RGBY (bilinear upsampling of the 512 PNGs)."""
    import numpy as np
    import pandas as pd

    from hpa_zoo.data.images import load_rgby

    ids = list(pd.read_csv(folder / "labels.csv")["Id"])
    return [np.ascontiguousarray(load_rgby(folder, i, size=size)) for i in ids]


def encode(image, fmt: str) -> list[bytes]:
    """The stored bytes of one (H, W, 4) uint8 image in ``fmt`` (a list: one entry per stored file)."""
    import cv2

    if fmt == "png4":
        ok, buf = cv2.imencode(".png", image[..., [2, 1, 0, 3]])  # OpenCV writes BGRA
        return [buf.tobytes()]
    if fmt == "raw_zlib":
        return [zlib.compress(image.tobytes())]
    if fmt == "raw_bytes":
        return [image.tobytes()]
    if fmt == "jpeg_rgb_y444":
        from hpa_zoo.data.rgby_jpeg import encode_rgby_jpeg

        return encode_rgby_jpeg(image, JPEG_QUALITY)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    if fmt == "jpeg_rgb_y":
        return [cv2.imencode(".jpg", image[..., [2, 1, 0]], params)[1].tobytes(),
                cv2.imencode(".jpg", image[..., 3], params)[1].tobytes()]
    if fmt == "jpeg4":
        return [cv2.imencode(".jpg", image[..., c], params)[1].tobytes() for c in range(4)]
    raise ValueError(fmt)


def decode_fn(fmt: str, size: int, window=None):
    """tf function: the stored bytes (a (k,) string tensor) -> (h, w, 4) uint8; JPEG formats decode only
    ``window`` = (top, left, side) when given."""
    import tensorflow as tf

    def jpeg(data, channels):
        if window is None:
            return tf.io.decode_jpeg(data, channels=channels)
        top, left, side = window
        return tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, side, side]), channels=channels)

    def decode(parts):
        if fmt == "jpeg_rgb_y444":
            from hpa_zoo.data.rgby_jpeg import decode_rgby_jpeg

            return decode_rgby_jpeg(parts, window)
        if fmt == "png4":
            return tf.io.decode_png(parts[0], channels=4)
        if fmt == "raw_zlib":
            raw = tf.io.decode_compressed(parts[0], compression_type="ZLIB")
            return tf.reshape(tf.io.decode_raw(raw, tf.uint8), [size, size, 4])
        if fmt == "raw_bytes":
            return tf.reshape(tf.io.decode_raw(parts[0], tf.uint8), [size, size, 4])
        if fmt == "jpeg_rgb_y":
            return tf.concat([jpeg(parts[0], 3), jpeg(parts[1], 1)], axis=-1)
        return tf.concat([jpeg(parts[c], 1) for c in range(4)], axis=-1)

    return decode


def dataset(encoded: list[list[bytes]], fmt: str, path: str, n: int, threads: int = 1):
    """A tf.data pipeline of path ``path`` over the encoded images, ``n`` elements, mapped by ``threads`` threads
    (each op single-threaded)."""
    import tensorflow as tf

    from hpa_zoo.data import cv_ops, image_ops
    from zoo_models.teams import team1_bestfitting as t1
    from zoo_models.teams import team3_pudae as t3

    stored = 512 if path == "team3" else 1536
    parts = tf.data.Dataset.from_tensor_slices([e for e in encoded]).repeat().take(n)
    seeds = tf.data.Dataset.random(seed=0).batch(2, drop_remainder=True)
    ds = tf.data.Dataset.zip((parts, seeds))
    labels = tf.zeros([28], tf.uint8)
    if path == "team1" and fmt == "jpeg_rgb_y444":  # the library path: what the trainer feeds Team 1's train_map
        from hpa_zoo.data.rgby_jpeg import ENCODED_KEY

        def fn(p, seed):
            return t1.train_map({ENCODED_KEY: p, "multi_hot": labels}, seed, image_size=stored, input_size=1024)
    elif path == "team1" and fmt.startswith("jpeg"):
        def fn(p, seed):
            crop_seed, d4_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
            window = image_ops.random_scale_crop_box(tf.constant([stored, stored]), 1024, crop_seed)
            image = cv_ops.merge_resize([decode_fn(fmt, stored, window)(p)], 1024)  # as Team 1's train_map
            return tf.cast(image_ops.random_d4(image, d4_seed), tf.float32), tf.cast(labels, tf.float32)
    elif path == "team1":
        def fn(p, seed):
            return t1.train_map({"image": decode_fn(fmt, stored)(p), "multi_hot": labels}, seed,
                                image_size=stored, input_size=1024)
    elif path == "team1_device":  # the library's host map of `hpa-zoo train --augment-on device`
        host_map = t1.make_recipe("team1_densenet121_1024").device_augment.host_map
        if fmt == "jpeg_rgb_y444":
            from hpa_zoo.data.rgby_jpeg import ENCODED_KEY

            def fn(p, seed):
                return host_map({ENCODED_KEY: p, "multi_hot": labels}, seed)
        else:
            def fn(p, seed):
                return host_map({"image": decode_fn(fmt, stored)(p), "multi_hot": labels}, seed)
    else:
        policy = t3.make_recipe("team3_attention_inceptionv3_1024").train_map.keywords["policy"]

        def fn(p, seed):
            return t3.train_map({"image": tf.ensure_shape(decode_fn(fmt, stored)(p), [stored, stored, 4]),
                                 "multi_hot": labels}, seed, policy=policy, input_size=1024)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.map(fn, num_parallel_calls=threads).with_options(options)


def measure(encoded, fmt: str, path: str, seconds: float, warmup: int = 3, threads: int = 1
            ) -> tuple[float, float, int]:
    """(images per CPU-second, wall images/s, images) of path/format on ``threads`` threads, run for about
    ``seconds`` CPU-seconds."""
    ds = iter(dataset(encoded, fmt, path, n=1_000_000, threads=threads))
    for _ in range(warmup * threads):
        next(ds)
    cpu0, wall0, count = time.process_time(), time.perf_counter(), 0
    while time.process_time() - cpu0 < seconds:
        next(ds)
        count += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return count / cpu, count / wall, count


def pixel_error(images, fmt: str) -> tuple[float, float]:
    """(mean, max) |decoded - original| over the images for ``fmt`` (0 for lossless formats)."""
    import numpy as np
    import tensorflow as tf

    errors = []
    for image in images:
        got = decode_fn(fmt, image.shape[0])(tf.constant(encode(image, fmt))).numpy()
        errors.append(np.abs(got.astype(np.int16) - image.astype(np.int16)))
    err = np.stack(errors)
    return float(err.mean()), float(err.max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "hpa_real_samples"))
    parser.add_argument("--seconds", type=float, default=8.0, help="CPU-seconds measured per path and format")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--threads", type=int, default=1,
                        help="tf.data map threads (and TensorFlow pools); >1 measures scaling: compare the wall "
                             "img/s with a --threads 1 run")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: use 1 or more")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _configure_threads(args.threads)
    formats, paths = args.formats.split(","), args.paths.split(",")
    print(f"images per CPU-second (the per-core rate) and wall images/s, {args.threads} thread(s); {args.seconds:g} "
          f"CPU-s each; source: {args.images}")
    print(f"{'path':13s} {'format':11s} {'img/CPU-s':>9s} {'wall img/s':>10s} {'stored KiB':>10s} "
          f"{'pixel err mean/max':>18s}")
    for path in paths:
        size = 512 if path == "team3" else 1536
        images = source_images(Path(args.images), size)
        for fmt in formats:
            encoded = [encode(im, fmt) for im in images]
            if len({len(e) for e in encoded}) != 1:
                raise SystemExit("inconsistent parts")
            kib = sum(len(b) for e in encoded for b in e) / len(encoded) / 1024
            mean_err, max_err = pixel_error(images, fmt)
            rate, wall, n = measure(encoded, fmt, path, args.seconds, threads=args.threads)
            print(f"{path:13s} {fmt:11s} {rate:9.1f} {wall:10.1f} {kib:10.0f} {mean_err:8.2f} / {max_err:5.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
