"""Out of memory: a batch that does not fit makes TensorFlow raise a real ``ResourceExhaustedError`` (here on the
CPU allocator: a model whose activations are ~1 TB), which `train` turns into a ConfigError naming the batch size
to try — an error, not a hang or a crash."""
from __future__ import annotations

import re
import time

import keras
import pytest

from hpa_zoo.errors import ConfigError
from tests.test_training import SIZE, synthetic_data  # noqa: F401 (fixture)

HUGE = "tiny_huge_activations"


def build_huge(num_classes=28, input_shape=None, weights=None, **kw):
    """(B, S, S, 4) -> logits through a 2000x upsampling: one image's activation alone needs > 1 TB."""
    inputs = keras.Input(shape=input_shape or (SIZE, SIZE, 4), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.UpSampling2D(2000)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32", name="logits")(x), name=HUGE)


@pytest.fixture
def huge_model():
    from hpa_zoo import registry

    registry.get_spec("team1_densenet121_512")
    registry.register(registry.ModelSpec(name=HUGE, team="test", builder="tests.test_oom:build_huge", input_size=SIZE,
                                         recipe="tests.test_training:make_recipe", classifier="logits"))
    yield HUGE
    registry.unregister(HUGE)


def test_train_out_of_memory_names_a_batch_size_to_try(huge_model, synthetic_data, tmp_path):
    """The real OOM error (TF's CPU allocator waits ~10 s for memory before it gives up: one OOM per test)."""
    from hpa_zoo.checks import out_of_memory_error
    from hpa_zoo.train.trainer import train

    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"train: out of memory at batch size 8 \(ResourceExhaustedError: .*OOM "
                                          r"when allocating tensor.*\); try --batch-size 4") as info:
        train(huge_model, synthetic_data, out_dir=tmp_path / "run", epochs=1, steps_per_epoch=1, batch_size=8,
              verbose=0)
    real = info.value.__cause__
    assert type(real).__name__ == "ResourceExhaustedError"
    assert time.monotonic() - start < 120
    # the same error at batch size 1 says that no batch size helps; other errors are left alone
    assert re.search(r"predict: out of memory at batch size 1 \(ResourceExhaustedError: .*\); it does not fit even "
                     r"at batch size 1", str(out_of_memory_error(real, what="predict", batch_size=1)))
    assert out_of_memory_error(ValueError("shapes differ"), what="predict", batch_size=1) is None
