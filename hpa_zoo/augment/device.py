"""Augmentation on the accelerator, in ``keras.ops``: the 8 dihedral (D4) transforms and Team 1's random-scale
square crop + resize (teams.md §1.4) as one Keras layer, fed uint8 images and per-example random draws.

Why: at 1536 -> 1024 the host's crop, resize, D4 and float conversion cost more CPU than decoding
(benchmarks/README.md, input_pipeline.py: ``team1`` vs ``team1_device``). With ``hpa-zoo train --augment-on
device`` the host only decodes to uint8 (`device_host_map`) and `RandomScaleCropD4` does the rest inside the
training step. The draws come from the host's stateless per-example seed, so a run is as reproducible (and a
resumed run replays the same augmentation) as with host augmentation.

Draws ``u`` (B, `N_DRAWS`) float32 in [0, 1): columns 0-2 the crop (side, left, top), 3-5 the D4 coins (flipud,
fliplr, transpose, each applied when < 0.5). The crop is the host's (`hpa_zoo.data.image_ops.random_scale_crop`):
an integer side uniform over ``size .. S`` inclusive, an integer corner uniform over the positions inside the
image, resized bilinearly with half-pixel centres (no antialias) -- done as one ``ops.image.affine_transform``.
"""
from __future__ import annotations

import keras
from keras import ops

from hpa_zoo.constants import D4_ORDER
from hpa_zoo.errors import ConfigError

#: Random draws per example: 3 for the crop (side, left, top), 3 D4 coins (flipud, fliplr, transpose).
N_DRAWS = 6
#: The D4 coins in the order they are applied; each applied with p = 1/2 they give each D4 element with p = 1/8.
D4_COINS = ("flipud", "fliplr", "transpose")


def d4_apply(images, k: int):
    """Apply the k-th dihedral transform of `D4_ORDER` to a batch.

    Args:
        images: (B, H, W, C) tensor or array, any dtype (H == W for the transposing transforms to keep the shape).
        k: index 0..7 into `D4_ORDER`.

    Returns:
        A tensor of the same dtype; shape (B, H, W, C), or (B, W, H, C) for the transposing transforms.
    """
    if not 0 <= int(k) < len(D4_ORDER):
        raise ConfigError(f"d4_apply: k={k} is out of range; use 0..7 (D4_ORDER = {D4_ORDER}).")
    x = ops.convert_to_tensor(images)
    if len(x.shape) != 4:
        raise ConfigError(f"d4_apply expects a (B, H, W, C) batch; got shape {tuple(x.shape)}.")
    for step in D4_ORDER[int(k)].split("_"):
        if step == "flipud":
            x = ops.flip(x, axis=1)
        elif step == "fliplr":
            x = ops.flip(x, axis=2)
        elif step == "transpose":
            x = ops.transpose(x, (0, 2, 1, 3))
    return x


def random_scale_crop(images, size: int, u):
    """Team 1's random-scale square crop resized to ``size`` (teams.md §1.4), per example, in one affine resample.

    Args:
        images: (B, S, S, C) float32 in [0, 255], S >= size static.
        size: output side.
        u: (B, 3) float32 in [0, 1): side ``size + floor(u0 (S - size + 1))``, left ``floor(u1 (S - side + 1))``,
            top ``floor(u2 (S - side + 1))`` (the host's integer window).
    Returns:
        (B, size, size, C) float32: each window resized bilinearly (half-pixel centres), as
        ``tf.image.resize(image[top:top + side, left:left + side], (size, size))``.
    """
    side_in = int(images.shape[1])
    if side_in < size:
        raise ConfigError(f"random_scale_crop: images of {side_in} px are smaller than the crop size {size}; the "
                          f"recipe's image_size must be >= its input_size")
    u = ops.minimum(ops.cast(u, "float32"), 1.0 - 1e-6)
    side = size + ops.floor(u[:, 0] * (side_in - size + 1))
    left = ops.floor(u[:, 1] * (side_in - side + 1))
    top = ops.floor(u[:, 2] * (side_in - side + 1))
    scale = side / size
    zero = ops.zeros_like(scale)
    # output pixel centre x + 1/2 samples the window at scale (x + 1/2): input index left + scale (x + 1/2) - 1/2
    tx, ty = left + 0.5 * scale - 0.5, top + 0.5 * scale - 0.5
    transform = ops.stack([scale, zero, tx, zero, scale, ty, zero, zero], axis=1)
    out = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="nearest")
    return out[:, :size, :size, :]


def random_d4(images, u):
    """One of the 8 dihedral transforms per example (teams.md §1.4), from `d4_apply`.

    Args:
        images: (B, S, S, C), any dtype.
        u: (B, 3) float in [0, 1): `D4_COINS` (flipud, fliplr, transpose), each applied when < 0.5, in that order.
    Returns:
        (B, S, S, C), same dtype.
    """
    coins = ops.less(u, 0.5)
    for j, name in enumerate(D4_COINS):
        pick = ops.reshape(coins[:, j], (-1, 1, 1, 1))
        images = ops.where(pick, d4_apply(images, D4_ORDER.index(name)), images)
    return images


@keras.saving.register_keras_serializable(package="hpa_zoo")
class RandomScaleCropD4(keras.layers.Layer):
    """Team 1's training augmentation on the accelerator: random-scale crop -> resize to ``size`` -> random D4.

    Active only with ``training=True``; otherwise the identity (cast to float32), the path validation takes: the
    trainer feeds validation images already at the network's input size (the recipe's ``eval_map``). A batch of
    another side at ``training=False`` (e.g. a backend's build or evaluation call on the training inputs) is the
    whole image resized (bilinear) to ``size``, Team 1's evaluation view.

    Call:
        inputs: ``{"image": (B, S, S, C) uint8 (or float) in [0, 255], "u": (B, N_DRAWS) float32 in [0, 1)}``
            (`device_host_map` makes one example of it), or just the image batch: ``u`` is then drawn from the
            layer's ``keras.random.SeedGenerator`` (needs ``seed``).
        training: apply the augmentation.
    Returns:
        float32 (B, size, size, C) with ``training=True``; else the image, float32 (resized to ``size`` if needed).

    Args:
        size: the output side (the recipe's ``input_size``).
        seed: an int to draw ``u`` on the device when the inputs carry none (benchmarks); None: inputs carry ``u``.
    """

    def __init__(self, size: int, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # augmentation in float32, also under a mixed precision policy
        super().__init__(**kwargs)
        self.size = int(size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if seed is not None else None

    def call(self, inputs, training=False):
        images, u = (inputs["image"], inputs.get("u")) if isinstance(inputs, dict) else (inputs, None)
        x = ops.cast(images, "float32")
        if not training:  # validation: already at the input size; a whole image of another side is resized
            if x.shape[1] is not None and (x.shape[1], x.shape[2]) != (self.size, self.size):
                x = ops.image.resize(x, (self.size, self.size), interpolation="bilinear")
            return x
        if u is None:
            if self.seed_generator is None:
                raise ConfigError(f"RandomScaleCropD4: training=True without draws; pass {{'image': ..., 'u': (B, "
                                  f"{N_DRAWS}) uniforms}} (device_host_map) or build the layer with seed=<int>")
            u = keras.random.uniform((ops.shape(x)[0], N_DRAWS), seed=self.seed_generator)
        return random_d4(random_scale_crop(x, self.size, u[:, :3]), u[:, 3:N_DRAWS])

    def compute_output_shape(self, input_shape):
        shape = input_shape["image"] if isinstance(input_shape, dict) else input_shape
        return (shape[0], self.size, self.size, shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size, "seed": self.seed}


class DeviceAugmented(keras.Model):
    """The training model of ``hpa_zoo.train.trainer.train(..., augment_on="device")``: ``augment(inputs, training)``
    -> ``net``.

    Its weights are the network's (the augmentation layer holds none) and ``save_weights`` / ``load_weights`` read
    and write the bare network's file (with the shared optimizer the network was compiled with), so checkpoints,
    the resume state and SWA files are those of a host-augmented run. ``training=False`` (validation) passes the
    already-resized float images straight to the network.

    Args:
        augment: a layer such as `RandomScaleCropD4` (the recipe's `hpa_zoo.recipe.DeviceAugment` layer).
        net: the recipe's network, built and compiled (its optimizer is the one this model trains with).
    Call:
        inputs: with ``training=True`` the host map's batch (``{"image": uint8 (B, S, S, C), ...}``); else images
            float32 (B, input, input, C). Returns the network's outputs (logits (B, 28) float32).
    """

    def __init__(self, augment, net, **kwargs):
        super().__init__(name=kwargs.pop("name", f"{net.name}_device_augmented"), **kwargs)
        self.augment = augment
        self.net = net

    def call(self, inputs, training=False):
        return self.net(self.augment(inputs, training=training), training=training)

    @property
    def saved_network(self):
        """The bare network: what `hpa_zoo.atomic.save_network_weights` saves and loads for this model."""
        return self.net

    def save_weights(self, filepath, **kwargs):
        """The bare network's ``.weights.h5`` (layers + optimizer), as a host-augmented run writes it."""
        return self.net.save_weights(filepath, **kwargs)

    def load_weights(self, filepath, **kwargs):
        """Load a bare network's ``.weights.h5`` (layers + optimizer) into the network."""
        return self.net.load_weights(filepath, **kwargs)


def device_host_map(example: dict, seed, *, image_size: int):
    """The host part of device augmentation (tf.data map): decode to uint8 at ``image_size`` and draw ``u``.

    Nothing is cropped, resized beyond ``image_size``, flipped or converted to float: the batch stays uint8 and
    `RandomScaleCropD4` does the rest in the training step.

    Args:
        example: ``{"image": uint8 (H, W, 4), "multi_hot": uint8 (28,), ...}`` (resized to ``image_size`` when
            H, W differ), or ``{hpa_zoo.data.rgby_jpeg.ENCODED_KEY: string (2,), "multi_hot": ...}`` stored at
            ``image_size`` (decoded whole).
        seed: int tensor (2,), the stateless per-example seed; ``u`` = ``tf.random.stateless_uniform([N_DRAWS])``.
        image_size: the recipe's ``image_size``.
    Returns:
        (``{"image": uint8 (image_size, image_size, 4), "u": float32 (N_DRAWS,)}``, multi_hot float32 (28,)).
    """
    import tensorflow as tf

    from hpa_zoo.data import image_ops, rgby_jpeg

    if rgby_jpeg.ENCODED_KEY in example:
        parts = example[rgby_jpeg.ENCODED_KEY]
        hw = rgby_jpeg.checked_stored_shape(parts, image_size, "device_host_map")
        with tf.control_dependencies([hw]):
            image = rgby_jpeg.decode_rgby_jpeg(parts)
    else:
        image = tf.convert_to_tensor(example["image"])
        hw = tf.shape(image)[:2]
        image = tf.cond(tf.reduce_all(tf.equal(hw, image_size)), lambda: image,
                        lambda: image_ops.resize(image, image_size))
    image = tf.ensure_shape(tf.cast(image, tf.uint8), [image_size, image_size, 4])
    u = tf.random.stateless_uniform([N_DRAWS], seed, dtype=tf.float32)
    return {"image": image, "u": u}, tf.cast(example["multi_hot"], tf.float32)
