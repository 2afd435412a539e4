"""The model, loss and TTA code is backend-agnostic: the same weights and inputs give the same numbers on the
TensorFlow backend (this process) and on the JAX backend (a subprocess with KERAS_BACKEND=jax).

hpa-zoo's model, loss and TTA modules must not import TensorFlow on the JAX backend: the GPU machine has none.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")

_JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from keras import ops
    from hpa_zoo import losses, tta
    from zoo_models.team1_bestfitting import build_densenet121

    # Checked right after import: building a keras.applications trunk lets Keras itself use tf.io.gfile
    # whenever TensorFlow happens to be installed, which hpa-zoo does not control.
    tensorflow_imported = "tensorflow" in sys.modules
    data = np.load(sys.argv[1])
    y, z, images = data["y"], data["z"], data["images"]
    out = {
        "focal": float(losses.focal_loss(y, z)),
        "lovasz": float(losses.lovasz_hinge_per_class(y, z)),
        "hard": float(losses.hard_negative_bce(y, z)),
        "bestfitting": float(losses.BestfittingLoss()(y, z)),
    }
    out["d4"] = [np.asarray(tta.d4_apply(images, k)).tolist() for k in range(8)]
    model = build_densenet121(num_classes=28, input_shape=images.shape[1:], large=True)
    out["tensorflow_imported"] = tensorflow_imported
    model.load_weights(sys.argv[2])
    out["logits"] = np.asarray(model(images, training=False)).tolist()
    print(json.dumps(out))
    """
)


def test_losses_tta_and_team1_model_agree_between_tensorflow_and_jax(tmp_path):
    from hpa_zoo import losses, tta
    from zoo_models.team1_bestfitting import build_densenet121

    rng = np.random.default_rng(0)
    y = (rng.random((6, 28)) < 0.2).astype("float32")
    z = rng.normal(0, 2, (6, 28)).astype("float32")
    images = rng.integers(0, 256, (2, 64, 64, 4)).astype("float32")
    np.savez(tmp_path / "data.npz", y=y, z=z, images=images)

    model = build_densenet121(num_classes=28, input_shape=(64, 64, 4), large=True)
    weights = tmp_path / "m.weights.h5"
    model.save_weights(weights)
    tf_logits = np.asarray(model(images, training=False))

    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(tmp_path / "data.npz"), str(weights)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jax_out = json.loads(proc.stdout.strip().splitlines()[-1])

    assert not jax_out["tensorflow_imported"], "hpa_zoo/zoo_models imported TensorFlow on the JAX backend"
    np.testing.assert_allclose(jax_out["focal"], float(losses.focal_loss(y, z)), rtol=1e-5)
    np.testing.assert_allclose(jax_out["lovasz"], float(losses.lovasz_hinge_per_class(y, z)), rtol=1e-5)
    np.testing.assert_allclose(jax_out["hard"], float(losses.hard_negative_bce(y, z)), rtol=1e-5)
    np.testing.assert_allclose(jax_out["bestfitting"], float(losses.BestfittingLoss()(y, z)), rtol=1e-5)
    for k in range(8):
        np.testing.assert_array_equal(np.asarray(jax_out["d4"][k]), np.asarray(tta.d4_apply(images, k)))
    np.testing.assert_allclose(np.asarray(jax_out["logits"]), tf_logits, atol=2e-4, rtol=1e-4)
