"""Training beyond one device: strategies by name, global-batch checks and dataset sharding.

``make_strategy(name)`` returns what `hpa_zoo.train.trainer.train` (``strategy=``) and ``hpa-zoo train --strategy``
take, for the running Keras backend (ecosystem.md §4.2: on TensorFlow the Keras 3 trainer honours
``tf.distribute`` strategies; ``keras.distribution`` is implemented for JAX only):

==============  ==========================================================  ======================================
name            TensorFlow backend                                          JAX backend
==============  ==========================================================  ======================================
``default``     None (one device)                                           None
``mirrored``    ``tf.distribute.MirroredStrategy`` (all local GPUs, else    ``keras.distribution.DataParallel``
                the CPU; ``devices=`` to choose)                            over all local devices
``multiworker`` ``tf.distribute.MultiWorkerMirroredStrategy``; the cluster  ``DataParallel`` after
                comes from the ``TF_CONFIG`` environment variable           ``keras.distribution.initialize()``
``tpu``         ``tf.distribute.TPUStrategy`` (``tpu=`` name/address,       ``DataParallel`` over the TPU cores
                default: the local TPU / ``TPU_NAME``)
==============  ==========================================================  ======================================

The batch size given to `train` is the **global** batch: each of the N replicas computes B/N examples per step
and the gradients are summed across replicas, so one step equals a one-device step on the same B examples
(tests/test_distribute.py checks this to 1e-6). Datasets are sharded with the auto-shard policy ``DATA``
(every worker reads the file list and keeps its share of the examples): the folder and in-memory sources of
`hpa_zoo.data.pipeline` are one "file" for tf.data, so the default ``FILE`` policy could not split them.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from hpa_zoo.errors import ConfigError

#: Names accepted by `make_strategy` and ``hpa-zoo train --strategy``.
STRATEGIES = ("default", "mirrored", "multiworker", "tpu")


def make_strategy(name: Optional[str], *, devices: Optional[Sequence[str]] = None, tpu: Optional[str] = None,
                  backend: Optional[str] = None) -> Any:
    """The distribution object for ``name`` on the current (or given) Keras backend.

    Args:
        name: one of `STRATEGIES` (None = "default").
        devices: TF ``mirrored`` only: device strings, e.g. ``["/gpu:0", "/gpu:1"]`` or ``["/cpu:0", "/cpu:1"]``
            (default: all local GPUs, else the CPU). JAX: ``keras.distribution.list_devices()`` entries.
        tpu: TF ``tpu`` only: the TPU name or ``grpc://`` address (default: local TPU VM or ``$TPU_NAME``).
        backend: ``"tensorflow"`` / ``"jax"``; default ``keras.backend.backend()``.
    Returns:
        None for "default"; a ``tf.distribute.Strategy`` on TensorFlow; a ``keras.distribution.DataParallel``
        on JAX (use it with ``with dist.scope():`` around build, compile *and* fit, as `train` does).
    Raises:
        ConfigError: unknown name (lists the names), a backend without distribution support (PyTorch),
            ``multiworker`` without a valid ``TF_CONFIG``, ``tpu`` when no TPU can be found.
    """
    import keras

    name = "default" if name is None else str(name).lower()
    if name not in STRATEGIES:
        raise ConfigError(f"strategy={name!r}: use one of {', '.join(STRATEGIES)}")
    if name == "default":
        return None
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        return _tf_strategy(name, devices=devices, tpu=tpu)
    if backend == "jax":
        return _jax_data_parallel(name, devices=devices)
    raise ConfigError(f"strategy={name!r} is not available on the {backend!r} Keras backend: use "
                      f"KERAS_BACKEND=tensorflow (tf.distribute) or jax (keras.distribution.DataParallel)")


def _tf_strategy(name: str, *, devices, tpu):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if name == "multiworker":
        read_tf_config()  # validated here; TF parses TF_CONFIG itself
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        return _multi_worker_strategy_class()(communication_options=options)
    # tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        where = f"tpu={tpu!r}" if tpu else "no tpu= name, no local TPU and no $TPU_NAME"
        raise ConfigError(f"strategy='tpu': no TPU found ({where}: {type(exc).__name__}: {exc}). Run on a TPU VM, "
                          f"or pass the TPU name/grpc address; on GPUs use --strategy mirrored") from exc
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker_strategy_class():
    """``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` also takes nested structures.

    Two Keras 3.15 TF-trainer calls fail on the collective strategy (keras-team/keras#20585,
    tensorflow/tensorflow#72388): ``_maybe_symbolic_build`` reduces the whole first ``(x, y)`` batch with
    ``strategy.reduce("MEAN", batch, axis=None)`` (MirroredStrategy maps over the tuple, the collective strategy
    does not: "Attempt to convert a value (PerReplica...) ... to a Tensor"), and ``reduce_per_replica`` reduces
    the scalar step logs with ``axis=0`` ("Invalid reduction dimension 0 for input with 0 dimensions"). Here
    reduce goes leaf by leaf (one collective per leaf, issued in the same order on every worker) and a scalar
    leaf is reduced across replicas (``axis=None``), which is what both callers mean.
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            parent = super().reduce

            def one(v):
                local = self.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) \
                    else v
                rank = getattr(getattr(local, "shape", None), "rank", None)
                return parent(reduce_op, v, None if rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy


def _jax_data_parallel(name: str, *, devices):
    import keras

    if name == "multiworker":
        keras.distribution.initialize()  # reads JAX_COORDINATOR_ADDRESS / NUM_PROCESSES / PROCESS_ID
    if name == "tpu":
        tpu_devices = keras.distribution.list_devices("tpu")
        if not tpu_devices:
            raise ConfigError("strategy='tpu' on JAX: keras.distribution.list_devices('tpu') is empty; run on a "
                              "TPU VM with jax[tpu], or use --strategy mirrored")
        devices = devices or tpu_devices
    return keras.distribution.DataParallel(devices=list(devices) if devices else keras.distribution.list_devices())


def read_tf_config() -> dict:
    """The parsed ``TF_CONFIG`` of a multi-worker run, validated.

    Expected: ``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}``
    (every worker gets the same cluster and its own index; ``"chief"`` may be listed too).

    Returns:
        the dict.
    Raises:
        ConfigError: missing, not JSON, no worker list, or a task index outside the list.
    """
    raw = os.environ.get("TF_CONFIG")
    fix = ('set TF_CONFIG on every worker, e.g. TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:12345", '
           '"10.0.0.2:12345"]}, "task": {"type": "worker", "index": 0}}\' (index 1 on the second machine)')
    if not raw:
        raise ConfigError(f"strategy='multiworker' needs the cluster in the TF_CONFIG environment variable; {fix}")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}): {raw[:200]!r}; {fix}") from exc
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    workers = list(cluster.get("worker") or []) + list(cluster.get("chief") or [])
    if not workers:
        raise ConfigError(f"TF_CONFIG has no cluster.worker list: {raw[:200]!r}; {fix}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG task {task!r} does not name an entry of cluster {cluster!r}; {fix}")
    return config


def num_replicas(strategy: Any) -> int:
    """Replicas in sync: ``strategy.num_replicas_in_sync`` (TF), the device count (JAX DataParallel), 1 for None."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    mesh = getattr(strategy, "device_mesh", None)
    return int(len(mesh.devices.reshape(-1))) if mesh is not None else 1


def check_global_batch(batch_size: int, strategy: Any) -> int:
    """Validate a global batch for ``strategy`` and return the per-replica batch (``batch_size // replicas``).

    Raises:
        ConfigError: batch_size < 1, or not divisible by the number of replicas (uneven replica batches give
            a different update than one device on the same batch).
    """
    n = num_replicas(strategy)
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size={batch_size}: must be a positive integer (the global batch over all replicas)")
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        raise ConfigError(f"global batch_size={batch_size} does not split evenly over {n} replicas; use a multiple "
                          f"of {n} (e.g. {lower or upper} or {upper})")
    return batch_size // n


def shard_by_data(ds):
    """``ds`` with ``auto_shard_policy = DATA`` (each worker keeps its share of the *elements*).

    Args:
        ds: a ``tf.data.Dataset`` (e.g. batches from `hpa_zoo.data.pipeline.batch_pipeline`).
    Returns:
        the same dataset with the distribute option set; unchanged elements (B, ...).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def is_keras_distribution(obj: Any) -> bool:
    """True for a ``keras.distribution.Distribution`` (JAX), False for a ``tf.distribute.Strategy`` / None."""
    if obj is None:
        return False
    import keras

    return isinstance(obj, (keras.distribution.DataParallel, keras.distribution.ModelParallel))
