"""hpa_zoo.train.distribute: strategies by name, the global batch, data sharding, and what they compute.

TensorFlow can only be given logical devices before it initialises, so each distributed run is a fresh
``python -m tests.test_distribute <role>`` process (``_worker`` below) that writes its weights to an .npz:

* MirroredStrategy over 2 logical CPUs: the first SGD step on a global batch of 8 equals the one-device step on
  the same 8 examples (weights to 1e-6), fed through ``model.fit`` on a DATA-sharded tf.data pipeline;
* MultiWorkerMirroredStrategy, 2 worker processes on 127.0.0.1 ports (TF_CONFIG): 3 steps; both workers end with
  the same weights, equal to one process on the same global batches (to 1e-5). This needs the Keras 3.15
  workaround in `hpa_zoo.train.distribute._multi_worker_strategy_class` (keras-team/keras#20585).
"""
from __future__ import annotations

import json
import os
import socket
import sys

import numpy as np
import pytest

from tests._subprocess import Children, finish, start

GLOBAL_BATCH, STEPS, LR = 8, 3, 0.1


# ---------------------------------------------------------------------------------------------- worker
def _data():
    """(x (24, 6) float32, y (24, 3) float32): fixed examples, 3 global batches of 8."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(24, 6)).astype("float32"), (rng.random((24, 3)) > 0.5).astype("float32")


def _tiny_model():
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation="tanh", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def _fit(strategy, steps: int):
    """Fit the tiny model for ``steps`` global batches under ``strategy`` (None = one device); weights list."""
    import tensorflow as tf

    from hpa_zoo.train import distribute

    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    if strategy is not None:
        distribute.check_global_batch(GLOBAL_BATCH, strategy)
        ds = distribute.shard_by_data(ds)
        with strategy.scope():
            model = _tiny_model()
    else:
        model = _tiny_model()
    model.fit(ds.repeat(), epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return [np.asarray(w) for w in model.get_weights()], int(np.asarray(model.optimizer.iterations))


def _worker(role: str, out: str) -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf

    from hpa_zoo.train import distribute

    if role == "mirrored":  # also the one-device references of both tests (one TF start fewer)
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
        mirrored, iters = _fit(strategy, 1)
        single, _ = _fit(None, 1)
        single3, _ = _fit(None, STEPS)
        np.savez(out, replicas=strategy.num_replicas_in_sync, iterations=iters,
                 **{f"mirrored_{i}": w for i, w in enumerate(mirrored)},
                 **{f"single_{i}": w for i, w in enumerate(single)},
                 **{f"w_{i}": w for i, w in enumerate(single3)})
    elif role == "multiworker":
        strategy = distribute.make_strategy("multiworker")
        weights, iters = _fit(strategy, STEPS)
        np.savez(out, replicas=strategy.num_replicas_in_sync, iterations=iters,
                 **{f"w_{i}": w for i, w in enumerate(weights)})
    else:
        raise SystemExit(f"unknown role {role}")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# ---------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The mirrored process and the two multi-worker processes, started together; their .npz results."""
    tmp = tmp_path_factory.mktemp("distribute")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    tf_env = {"KERAS_BACKEND": "tensorflow"}
    children = Children()
    try:
        procs = [children.start(["-m", "tests.test_distribute", "mirrored", str(tmp / "mirrored.npz")], env=tf_env)]
        procs += [children.start(["-m", "tests.test_distribute", "multiworker", str(tmp / f"worker{i}.npz")],
                                 env={**tf_env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                         "task": {"type": "worker", "index": i}})})
                  for i in range(2)]
        for p in procs:
            finish(p, timeout=300, check=True)
    finally:
        children.close()
    return {name: np.load(tmp / f"{name}.npz") for name in ("mirrored", "worker0", "worker1")}


def test_mirrored_over_two_cpus_gives_the_one_device_first_step(runs):
    res = runs["mirrored"]
    assert int(res["replicas"]) == 2 and int(res["iterations"]) == 1
    n = len([k for k in res.files if k.startswith("single_")])
    assert n == 4
    init = [np.asarray(w) for w in _tiny_model().get_weights()]
    moved = max(float(np.max(np.abs(res[f"single_{i}"] - init[i]))) for i in range(n))
    assert moved > 1e-3  # the step did something
    for i in range(n):
        np.testing.assert_allclose(res[f"mirrored_{i}"], res[f"single_{i}"], atol=1e-6, rtol=0)


def test_multiworker_two_processes_on_loopback_end_with_the_same_weights(runs):
    w0, w1, ref = runs["worker0"], runs["worker1"], runs["mirrored"]
    assert int(w0["replicas"]) == int(w1["replicas"]) == 2
    assert int(w0["iterations"]) == int(w1["iterations"]) == STEPS
    keys = sorted(k for k in w0.files if k.startswith("w_"))
    assert len(keys) == 4
    for k in keys:
        np.testing.assert_array_equal(w0[k], w1[k])
        # the two workers together did the one-process steps on the same global batches
        np.testing.assert_allclose(w0[k], ref[k], atol=1e-5, rtol=0)


def test_make_strategy_names_and_errors(monkeypatch):
    from hpa_zoo.train import distribute
    from hpa_zoo.errors import ConfigError

    assert distribute.make_strategy(None) is None and distribute.make_strategy("default") is None
    with pytest.raises(ConfigError, match="strategy='horovod': use one of default, mirrored, multiworker, tpu"):
        distribute.make_strategy("horovod")
    with pytest.raises(ConfigError, match="torch.*KERAS_BACKEND=tensorflow"):
        distribute.make_strategy("mirrored", backend="torch")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG environment variable"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ConfigError, match="does not name an entry"):
        distribute.make_strategy("multiworker")
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ConfigError, match="strategy='tpu': no TPU found"):
        distribute.make_strategy("tpu")


def test_global_batch_must_split_evenly_over_replicas():
    from hpa_zoo.train import distribute
    from hpa_zoo.errors import ConfigError

    class Four:
        num_replicas_in_sync = 4

    assert distribute.check_global_batch(32, Four()) == 8
    assert distribute.check_global_batch(5, None) == 5
    with pytest.raises(ConfigError, match="batch_size=30 does not split evenly over 4 replicas.*28 or 32"):
        distribute.check_global_batch(30, Four())
    with pytest.raises(ConfigError, match="positive"):
        distribute.check_global_batch(0, Four())


def test_shard_by_data_sets_the_data_policy():
    import tensorflow as tf

    from hpa_zoo.train import distribute

    ds = distribute.shard_by_data(tf.data.Dataset.range(4))
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert list(ds.as_numpy_iterator()) == [0, 1, 2, 3]


def test_jax_backend_gets_keras_data_parallel():
    """In a JAX process (the backend is fixed at import): DataParallel over the local devices."""
    code = ("import keras; from hpa_zoo.train import distribute as d; s = d.make_strategy('mirrored'); "
            "print(type(s).__name__, d.num_replicas(s), d.is_keras_distribution(s))")
    text = finish(start(["-c", code], env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}), timeout=120, check=True)
    assert text.split()[-3:] == ["DataParallel", "1", "True"]


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
