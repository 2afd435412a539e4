"""`hpa-zoo weights verify`: the published weights, converted, against the test tensors published beside them
(Team 1's `test_input.npy` / `test_output_classes.npy` / `test_output_features.npy`). Above `weights` (download) and
`models_api` (conversion), so neither imports the other."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hpa_zoo.errors import WeightsError
from hpa_zoo.registry import WeightsSpec
from hpa_zoo.zoo.weights import fetch

log = logging.getLogger(__name__)

#: bioimage.io test-tensor file names (docs/teams.md §1.8), by role
TEST_TENSOR_FILES = {"input": "test_input.npy", "classes": "test_output_classes.npy",
                     "features": "test_output_features.npy"}
VERIFY_TOL = 1e-4  # probabilities absolute, features relative to their largest magnitude


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` measured (float maxima over the test tensor's elements).

    Attributes:
        model_name: the registry model built.
        onnx_path: the ONNX file converted.
        tensors: role -> path of the test tensors used.
        input_shape: (N, C, H, W) of ``test_input.npy``.
        onnx_vs_tensors: max |onnx - test output| per output: the ONNX file reproduces its own test tensors.
        classes_max_abs: max |sigmoid(keras logits) - test_output_classes|.
        features_max_abs / features_max_rel: max |keras features - test_output_features| and that / max |f|.
        conversion: the conversion's `hpa_zoo.zoo.onnx_convert.ConversionCheck` as a dict (empty if read from cache).
    """

    model_name: str
    onnx_path: str
    tensors: dict
    input_shape: tuple
    onnx_vs_tensors: dict
    classes_max_abs: float
    features_max_abs: float | None
    features_max_rel: float | None
    conversion: dict

    @property
    def passed(self) -> bool:
        """Keras reproduces both test outputs within `VERIFY_TOL`."""
        return self.classes_max_abs <= VERIFY_TOL and (self.features_max_rel is None
                                                       or self.features_max_rel <= VERIFY_TOL)

    def lines(self) -> list[str]:
        """The report as printable lines."""
        out = [f"model {self.model_name}: ONNX {self.onnx_path}",
               f"test input {self.tensors['input']} {tuple(self.input_shape)}"]
        out += [f"onnx vs {TEST_TENSOR_FILES[r]}: max |diff| = {d:.3g}" for r, d in self.onnx_vs_tensors.items()]
        out.append(f"keras vs {TEST_TENSOR_FILES['classes']}: max |p_keras - p_test| = {self.classes_max_abs:.3g}")
        if self.features_max_abs is not None:
            out.append(f"keras vs {TEST_TENSOR_FILES['features']}: max |f_keras - f_test| = "
                       f"{self.features_max_abs:.3g} ({self.features_max_rel:.3g} relative)")
        out.append(("PASSED" if self.passed else "FAILED") + f": tolerance {VERIFY_TOL:g} (probabilities absolute, "
                   "features relative)")
        return out


def verify(model_name: str = "team1_densenet121_1024", weights: str = "hpa", *, spec: WeightsSpec | None = None,
           onnx_path: str | os.PathLike | None = None, tensors_dir: str | os.PathLike | None = None,
           progress: bool = True) -> VerifyReport:
    """Prove a published ONNX conversion on the package's own test tensors.

    Fetches (or uses the cached) ONNX file of ``model_name``'s ``weights`` set and its test tensors
    (``test_input.npy`` (1, 4, H, W) float32 already /255, ``test_output_classes.npy`` (1, K),
    ``test_output_features.npy`` (1, F)), checks that the ONNX file reproduces them (which authenticates tensors
    without a pinned sha256), converts the file into the Keras model as `hpa_zoo.load` does (numeric check,
    cached), runs Keras on ``255 * test_input`` (NHWC) and measures the differences to both outputs.

    Args:
        model_name: registry row (builds the Keras model at the test input's spatial size).
        weights: the row's published set (``"hpa"``).
        spec: use this `WeightsSpec` instead of the row's set (a mirror of your own).
        onnx_path: a local ONNX file instead of the download (not sha256-checked: the numbers are the check).
        tensors_dir: a folder holding the three test tensors under their bioimage.io names, instead of the
            download.
        progress: download progress lines on stderr.

    Returns:
        `VerifyReport` (``.passed``, ``.lines()``).

    Raises:
        WeightsError: no such set or no test tensors for it, a download or file problem, test tensors that the
            ONNX file itself does not reproduce (downloaded copies are then removed from the cache), or a
            conversion the numeric check refuses.
    """
    import numpy as np

    from hpa_zoo.zoo.models_api import build_from_onnx, converted_cache_path
    from hpa_zoo.zoo.onnx_convert import run_onnx
    from hpa_zoo.registry import get_spec

    mspec = get_spec(model_name)
    wspec = spec if spec is not None else mspec.weights_spec(weights)
    if wspec is None and onnx_path is None:
        sets = ", ".join(repr(w.name) for w in mspec.weights) or "none"
        raise WeightsError(f"model {model_name!r} has no weights {weights!r} (published sets: {sets})")
    if onnx_path is not None:
        onnx_file, cache = Path(onnx_path), None
    else:
        onnx_file = fetch(wspec, progress=progress)
        cache = converted_cache_path(onnx_file, mspec.name)
    tensors, downloaded = _test_tensors(wspec, tensors_dir, progress)
    arrays = {role: _load_npy(path) for role, path in tensors.items()}
    x = arrays["input"].astype(np.float32)
    if x.ndim != 4 or x.shape[0] != 1:
        raise WeightsError(f"{tensors['input']}: shape {x.shape}; expected (1, C, H, W) float32 in [0, 1]")
    onnx_out = run_onnx(onnx_file, x)
    onnx_vs = {}
    for role in ("classes", "features"):
        if role in arrays:
            got = onnx_out.get(role)
            if got is None or got.shape != arrays[role].shape:
                raise WeightsError(f"{onnx_file}: has no output {role!r} of shape {arrays[role].shape} to compare "
                                   f"with {tensors[role]} (outputs {({k: v.shape for k, v in onnx_out.items()})})")
            onnx_vs[role] = float(np.max(np.abs(got.astype(np.float64) - arrays[role])))
    bad = {r: d for r, d in onnx_vs.items() if d > VERIFY_TOL * (1 if r == "classes" else
                                                                max(1.0, float(np.max(np.abs(arrays[r])))))}
    if bad:
        bad = {role: float(f"{d:.3g}") for role, d in bad.items()}
        for role in downloaded:
            tensors[role].unlink(missing_ok=True)
        raise WeightsError(f"the test tensors do not match the ONNX file's own outputs ({onnx_file} on "
                           f"{tensors['input']}: max |diff| {bad}); they belong to another file or are corrupted"
                           + (" and were removed from the cache; download them again" if downloaded else ""))
    model, check = build_from_onnx(mspec.name, onnx_file, input_shape=(x.shape[2], x.shape[3], x.shape[1]),
                                   cache=cache)
    import keras

    from hpa_zoo.zoo.models_api import feature_extractor

    nhwc = np.transpose(x, (0, 2, 3, 1)) * 255.0
    logits = np.asarray(keras.ops.convert_to_numpy(model(nhwc, training=False)), np.float64)
    probs = 1.0 / (1.0 + np.exp(-logits))
    classes_diff = float(np.max(np.abs(probs - arrays["classes"])))
    f_abs = f_rel = None
    if "features" in arrays:
        feats = np.asarray(keras.ops.convert_to_numpy(feature_extractor(model)(nhwc, training=False)), np.float64)
        f_abs = float(np.max(np.abs(feats - arrays["features"])))
        f_rel = f_abs / max(float(np.max(np.abs(arrays["features"]))), 1e-12)
    report = VerifyReport(mspec.name, str(onnx_file), {r: str(p) for r, p in tensors.items()}, tuple(x.shape),
                          onnx_vs, classes_diff, f_abs, f_rel, check.as_dict() if check is not None else {})
    for line in report.lines():
        log.debug("%s", line)
    return report


def _test_tensors(wspec: WeightsSpec | None, tensors_dir, progress: bool) -> tuple[dict, list]:
    """role -> path of the test tensors, and the roles downloaded without a sha256 (to remove if they fail)."""
    if tensors_dir is not None:
        folder = Path(tensors_dir)
        paths = {role: folder / name for role, name in TEST_TENSOR_FILES.items() if (folder / name).is_file()}
        if "input" not in paths or "classes" not in paths:
            raise WeightsError(f"{folder}: expected the bioimage.io test tensors {TEST_TENSOR_FILES['input']} and "
                               f"{TEST_TENSOR_FILES['classes']} (and {TEST_TENSOR_FILES['features']}) there")
        return paths, []
    specs = {t.name: t for t in (wspec.test_tensors if wspec is not None else ())}
    if "input" not in specs or "classes" not in specs:
        raise WeightsError(f"weights {getattr(wspec, 'name', None)!r} list no test tensors; pass tensors_dir= (a "
                           f"folder with {', '.join(TEST_TENSOR_FILES.values())})")
    paths, downloaded = {}, []
    for role, tspec in specs.items():
        paths[role] = fetch(tspec, progress=progress, unhashed=True)
        if not tspec.sha256:  # authenticated only by the ONNX run: removed from the cache if that fails
            downloaded.append(role)
    return paths, downloaded


def _load_npy(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read test tensor {path}: {exc}; download it again") from exc
