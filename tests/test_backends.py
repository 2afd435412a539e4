"""The model, loss and TTA code is backend-agnostic: the same weights and inputs give the same numbers on the
TensorFlow backend (this process) and on the JAX backend (a subprocess with KERAS_BACKEND=jax).

The JAX process is started first and builds, initialises and saves the model while this process builds its own
copy (the functional build of DenseNet121 is single-threaded Python, so the two builds share the 2 cores); this
process then loads the JAX-saved weights. The JAX forward runs through ``model.predict`` (one XLA compilation of
the whole network instead of one per op shape in eager mode), and XLA compiles without its expensive LLVM
optimisations (`FAST_XLA_COMPILE`): on JAX every weight initialiser shape is a separate XLA compilation, and
that compile time, not arithmetic, is most of the JAX process. The optimisation level does not change what is
computed; the logits are still compared at atol 2e-4.

hpa-zoo's model, loss and TTA modules must not import TensorFlow on the JAX backend: the GPU machine has none.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from tests._subprocess import Children, finish, last_json_line

pytest.importorskip("jax")
import keras

#: XLA_FLAGS of the JAX process: faster compilation of the same computation (see the module docstring).
FAST_XLA_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

_JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from keras import ops
    from hpa_zoo.infer import tta
    from hpa_zoo.nn import losses
    from zoo_models.teams.team1_bestfitting import build_densenet121

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
    keras.utils.set_random_seed(0)
    model = build_densenet121(num_classes=28, input_shape=images.shape[1:], large=True)
    out["tensorflow_imported"] = tensorflow_imported
    model.save_weights(sys.argv[2])  # the TensorFlow side loads these
    out["logits"] = np.asarray(model.predict(images, batch_size=len(images), verbose=0)).tolist()
    print(json.dumps(out))
    """
)


def test_losses_tta_and_team1_model_agree_between_tensorflow_and_jax(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((6, 28)) < 0.2).astype("float32")
    z = rng.normal(0, 2, (6, 28)).astype("float32")
    images = rng.integers(0, 256, (2, 64, 64, 4)).astype("float32")
    np.savez(tmp_path / "data.npz", y=y, z=z, images=images)
    weights = tmp_path / "m.weights.h5"
    children = Children()
    try:
        proc = children.start(["-c", _JAX_SCRIPT, str(tmp_path / "data.npz"), str(weights)],
                              env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_XLA_COMPILE})

        from hpa_zoo.infer import tta
        from hpa_zoo.nn import losses
        from zoo_models.teams.team1_bestfitting import build_densenet121

        keras.utils.set_random_seed(1)  # other initial weights than the JAX side's: the load must replace them
        model = build_densenet121(num_classes=28, input_shape=(64, 64, 4), large=True)
        before = np.asarray(model(images, training=False))
        jax_out = last_json_line(finish(proc, timeout=600, check=True))
    finally:
        children.close()
    model.load_weights(weights)
    tf_logits = np.asarray(model(images, training=False))
    assert np.abs(tf_logits - before).max() > 1e-3  # the JAX-saved weights were loaded, not the TF init kept

    assert not jax_out["tensorflow_imported"], "hpa_zoo/zoo_models imported TensorFlow on the JAX backend"
    np.testing.assert_allclose(jax_out["focal"], float(losses.focal_loss(y, z)), rtol=1e-5)
    np.testing.assert_allclose(jax_out["lovasz"], float(losses.lovasz_hinge_per_class(y, z)), rtol=1e-5)
    np.testing.assert_allclose(jax_out["hard"], float(losses.hard_negative_bce(y, z)), rtol=1e-5)
    np.testing.assert_allclose(jax_out["bestfitting"], float(losses.BestfittingLoss()(y, z)), rtol=1e-5)
    for k in range(8):
        np.testing.assert_array_equal(np.asarray(jax_out["d4"][k]), np.asarray(tta.d4_apply(images, k)))
    np.testing.assert_allclose(np.asarray(jax_out["logits"]), tf_logits, atol=2e-4, rtol=1e-4)
