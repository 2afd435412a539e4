"""Every public module, class, function and method of the library has a docstring (read with `ast`, nothing imported).

Public means: not ``_``-prefixed, defined at module level or in a public class (functions nested in functions are
local helpers). Methods that implement a framework's hook (Keras layers, metrics and callbacks, Beam's
``ModelHandler``, TFDS feature connectors) are documented by that framework and are exempt, by name, in `HOOKS`.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpa_zoo", "zoo_models", "tfds_hpa")

#: Framework hook names a subclass overrides with the framework's documented meaning.
HOOKS = {
    # keras.layers.Layer / keras.Model / keras.metrics.Metric / keras.losses.Loss
    "call", "build", "get_config", "from_config", "compute_output_shape", "compute_output_spec", "get_build_config",
    "build_from_config", "update_state", "result", "reset_state", "train_step", "test_step", "predict_step",
    # apache_beam.ml.inference.base.ModelHandler
    "load_model", "run_inference", "get_metrics_namespace", "batch_elements_kwargs", "share_model_across_processes",
    "model_copies", "update_model_path", "get_num_bytes",
    # tfds.features.FeatureConnector
    "get_tensor_info", "get_serialized_info", "encode_example", "decode_example", "from_json_content",
    "to_json_content",
}


def _is_hook(name: str) -> bool:
    return name in HOOKS or name.startswith("on_")  # keras.callbacks.Callback.on_* hooks


def _library_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if not p.name.endswith("_test.py"))


def undocumented(source: str) -> list[str]:
    """The public names in ``source`` (Python text) without a docstring, as ``"line qualname"`` strings."""
    tree = ast.parse(source)
    missing = [] if ast.get_docstring(tree) else ["1 <module>"]

    def walk(node: ast.AST, prefix: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_") or (in_class and _is_hook(child.name)):
                    continue
                if ast.get_docstring(child) is None:
                    missing.append(f"{child.lineno} {prefix}{child.name}")
            elif isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                if ast.get_docstring(child) is None:
                    missing.append(f"{child.lineno} {prefix}{child.name}")
                walk(child, f"{prefix}{child.name}.", True)

    walk(tree, "", False)
    return missing


def test_the_checker_finds_what_is_missing_and_skips_what_is_exempt():
    source = '''"""Module."""
def public(): pass
def _private(): pass
def documented():
    """Yes."""
    def nested(): pass
class Layer:
    """A layer."""
    def call(self, x): return x
    def on_epoch_end(self, epoch, logs=None): pass
    def extra(self): pass
    @property
    def size(self): return 1
class Bare:
    pass
'''
    assert undocumented(source) == ["2 public", "11 Layer.extra", "13 Layer.size", "14 Bare"]
    assert undocumented("x = 1\n") == ["1 <module>"]


def test_every_public_name_of_the_library_has_a_docstring():
    files = _library_files()
    assert len(files) > 50, files  # the walk really sees the packages
    missing = [f"{p.relative_to(REPO)}:{entry}" for p in files for entry in undocumented(p.read_text())]
    assert not missing, ("public names without a docstring (say what it does, with shapes and dtypes):\n  "
                         + "\n  ".join(missing))
