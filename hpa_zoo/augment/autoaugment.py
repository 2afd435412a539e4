"""AutoAugment policies over the RGBY-safe transforms (Team 3's search space, docs/teams.md §3.5): the op table and
its magnitude ranges, sub-policies applied with their probabilities inside tf.data (`apply_policy`), and policies as
JSON data (`load_policy` / `save_policy` / `sample_policy`)."""
from __future__ import annotations

import difflib
import functools
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from hpa_zoo.atomic import atomic_write_text
from hpa_zoo.augment.transforms import (ALBUMENTATIONS_VERSION, as_seed, blur, check_image, elastic_transform,
                                       grid_distortion, invert_img, motion_blur, randint, random_brightness,
                                       random_contrast, random_gamma, random_scale, rotate, shift_scale_rotate,
                                       split_seed, to_range, uniform)
from hpa_zoo.errors import ConfigError

__all__ = [
    "OPS", "OP_NAMES", "SEARCH_SPACE", "P_CHOICES", "PolicyOp", "SubPolicy", "Uniform", "RandInt",
    "apply_with_probability", "base_d4", "choose_sub_policy", "apply_sub_policy", "apply_policy",
    "load_policy", "save_policy", "sample_policy", "validate_magnitude",
]

POLICY_FORMAT = "hpa_zoo.augment_policy/1"


class _OpDef(NamedTuple):
    fn: Callable[..., tf.Tensor]
    defaults: Mapping[str, Any]  # albumentations 0.1.8 constructor defaults
    kinds: Mapping[str, str]  # magnitude key -> validation kind (see _validate_value)


OPS: dict[str, _OpDef] = {
    "RandomContrast": _OpDef(random_contrast, {"limit": 0.2}, {"limit": "range"}),
    "RandomBrightness": _OpDef(random_brightness, {"limit": 0.2}, {"limit": "range"}),
    "RandomGamma": _OpDef(random_gamma, {"gamma_limit": (80, 120)}, {"gamma_limit": "percent_pair"}),
    "Blur": _OpDef(blur, {"blur_limit": 7}, {"blur_limit": "kernel"}),
    "MotionBlur": _OpDef(motion_blur, {"blur_limit": 7}, {"blur_limit": "kernel"}),
    "InvertImg": _OpDef(invert_img, {}, {}),
    "Rotate": _OpDef(rotate, {"limit": 90}, {"limit": "range"}),
    "ShiftScaleRotate": _OpDef(shift_scale_rotate, {"shift_limit": 0.0625, "scale_limit": 0.1, "rotate_limit": 45},
                               {"shift_limit": "range", "scale_limit": "scale_range", "rotate_limit": "range"}),
    "RandomScale": _OpDef(random_scale, {"scale_limit": 0.1}, {"scale_limit": "scale_range"}),
    "GridDistortion": _OpDef(grid_distortion, {"num_steps": 5, "distort_limit": 0.3},
                             {"num_steps": "positive_int", "distort_limit": "scale_range"}),
    "ElasticTransform": _OpDef(elastic_transform, {"alpha": 1, "sigma": 50, "alpha_affine": 50},
                               {"alpha": "nonnegative", "sigma": "positive", "alpha_affine": "nonnegative"}),
}


OP_NAMES: tuple[str, ...] = tuple(OPS)


P_CHOICES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # teams.md §3.5: each op's p is drawn from these


class Uniform(NamedTuple):
    """A magnitude drawn uniformly from the real interval [lo, hi] (``random.uniform``)."""
    lo: float
    hi: float


class RandInt(NamedTuple):
    """A magnitude drawn uniformly from the integers lo..hi inclusive (``random.randint``)."""
    lo: int
    hi: int


SEARCH_SPACE: dict[str, dict[str, Any]] = {
    # teams.md §3.5 "Search space" table (pudae:transforms/policy_transform.py POLICIES); constants stay fixed
    "RandomContrast": {"limit": Uniform(0.1, 0.3)},
    "RandomBrightness": {"limit": Uniform(0.1, 0.3)},
    "RandomGamma": {"gamma_limit": (RandInt(70, 90), RandInt(110, 130))},
    "Blur": {"blur_limit": RandInt(3, 5)},
    "MotionBlur": {"blur_limit": RandInt(3, 5)},
    "InvertImg": {},
    "Rotate": {"limit": RandInt(5, 45)},
    "ShiftScaleRotate": {"shift_limit": Uniform(0.03, 0.12), "scale_limit": 0.0, "rotate_limit": 0},
    "RandomScale": {"scale_limit": Uniform(0.05, 0.20)},
    "GridDistortion": {"num_steps": RandInt(3, 5), "distort_limit": Uniform(0.1, 0.5)},
    "ElasticTransform": {"alpha": 1, "sigma": RandInt(30, 70), "alpha_affine": RandInt(30, 70)},
}


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _validate_value(kind: str, value):
    """Return the normalised value or raise ValueError with a sentence saying what is expected."""
    if kind in ("range", "scale_range"):
        if _is_number(value):
            if value < 0:
                raise ValueError(f"must be >= 0 (it means the range (-v, v)), got {value}")
            if kind == "scale_range" and value >= 1:
                raise ValueError(f"must be < 1 (factors 1 ± v must stay positive), got {value}")
            return value
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
            lo, hi = value
            if lo > hi:
                raise ValueError(f"a (lo, hi) pair needs lo <= hi, got {list(value)}")
            if kind == "scale_range" and lo <= -1:
                raise ValueError(f"needs lo > -1 (factors 1 + lo must stay positive), got {list(value)}")
            return (lo, hi)
        raise ValueError(f"must be a number or a [lo, hi] pair, got {value!r}")
    if kind == "percent_pair":
        if (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                and all(float(v).is_integer() for v in value)):
            lo, hi = (int(v) for v in value)
            if not 0 < lo <= hi:
                raise ValueError(f"needs 0 < lo <= hi (gamma in percent), got {list(value)}")
            return (lo, hi)
        raise ValueError(f"must be a [lo, hi] pair of integer percentages (e.g. [80, 120]), got {value!r}")
    if kind in ("kernel", "positive_int"):
        minimum = 3 if kind == "kernel" else 1
        if _is_number(value) and float(value).is_integer() and value >= minimum:
            return int(value)
        raise ValueError(f"must be an integer >= {minimum}, got {value!r}")
    if kind in ("positive", "nonnegative"):
        if _is_number(value) and (value > 0 if kind == "positive" else value >= 0):
            return value
        raise ValueError(f"must be a {'positive' if kind == 'positive' else 'non-negative'} number, got {value!r}")
    raise AssertionError(f"unknown magnitude kind {kind}")


def validate_magnitude(op_name: str, magnitude: Mapping[str, Any] | None, where: str = "") -> dict[str, Any]:
    """Check `op_name` and its magnitude dict; return the magnitudes (0.1.8 defaults filled in, pairs as tuples).

    Raises ConfigError naming `where` (e.g. "policy.json: sub_policies[3][1]") for an unknown op (with the closest
    names), an unknown magnitude key, or a value of the wrong type/range.
    """
    prefix = f"{where}: " if where else ""
    if op_name not in OPS:
        close = difflib.get_close_matches(str(op_name), OP_NAMES, n=3)
        hint = f"did you mean {close}? " if close else ""
        raise ConfigError(f"{prefix}unknown augmentation op {op_name!r}; {hint}known ops: {list(OP_NAMES)}")
    spec = OPS[op_name]
    magnitude = dict(magnitude or {})
    unknown = sorted(set(magnitude) - set(spec.kinds))
    if unknown:
        raise ConfigError(f"{prefix}{op_name} has no magnitude {unknown}; its magnitudes are {sorted(spec.kinds)}")
    out = {}
    for key, kind in spec.kinds.items():
        value = magnitude.get(key, spec.defaults[key])
        try:
            out[key] = _validate_value(kind, value)
        except ValueError as err:
            raise ConfigError(f"{prefix}{op_name} magnitude {key!r} {err}") from None
    return out


class PolicyOp(NamedTuple):
    """One op of a sub-policy: albumentations name, probability p in [0, 1], magnitude dict (validated)."""
    name: str
    p: float
    magnitude: Mapping[str, Any]


class SubPolicy(NamedTuple):
    """Two ops applied in order, each with its own probability (an albumentations ``Compose(op1, op2)``)."""
    first: PolicyOp
    second: PolicyOp


def apply_with_probability(op: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], p: float, seed
                           ) -> Callable[[tf.Tensor], tf.Tensor]:
    """Wrap ``op(image, seed) -> image`` so that it runs with probability `p` (albumentations' per-op ``p``).

    Returns ``f(image) -> image`` (same shape/dtype). `seed` (2,) int is split into the coin's seed and the op's
    seed; p == 0 and p == 1 are decided statically (no coin). Bind magnitudes first, e.g.
    ``apply_with_probability(functools.partial(rotate, limit=26), 0.75, seed)(image)``.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"probability p must be in [0, 1], got {p}")

    def wrapped(image):
        image = check_image(image)
        if p == 0.0:
            return image
        coin_seed, op_seed = split_seed(seed, 2)
        if p == 1.0:
            return op(image, op_seed)
        apply = uniform(coin_seed, 0.0, 1.0) < p
        return tf.cond(apply, lambda: op(image, op_seed), lambda: image)

    return wrapped


def base_d4(image, seed) -> tf.Tensor:
    """pudae's base transform: RandomRotate90, Flip, Transpose, each with p=0.5 (teams.md §3.5 step 1).

    Verified (0.1.x): RandomRotate90 = ``np.rot90(img, randint(0, 3))``; Flip = ``cv2.flip(img, d)`` with
    d ~ randint(-1, 1) (0 vertical, 1 horizontal, -1 both); Transpose swaps H and W. Not uniform over the 8 D4
    elements (as in the original). image (H, W, C) (square for a static shape), seed (2,) int -> same dtype.
    """
    image = check_image(image)
    s = split_seed(seed, 5)

    def rot90(x, sd):
        return tf.image.rot90(x, k=randint(sd, 0, 3))

    def flip(x, sd):
        d = randint(sd, -1, 1)
        x = tf.cond(d <= 0, lambda: tf.reverse(x, axis=[0]), lambda: x)  # 0 and -1 flip rows
        return tf.cond(d != 0, lambda: tf.reverse(x, axis=[1]), lambda: x)  # 1 and -1 flip columns

    def transpose(x, sd):
        del sd
        return tf.transpose(x, [1, 0, 2])

    for op, sd in ((rot90, s[0]), (flip, s[1]), (transpose, s[2])):
        image = apply_with_probability(op, 0.5, sd)(image)
    return image


def _bound(policy_op: PolicyOp) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    fn = OPS[policy_op.name].fn
    magnitude = dict(policy_op.magnitude)
    return lambda image, seed: fn(image, seed, **magnitude)


def apply_sub_policy(image, sub_policy: SubPolicy, seed) -> tf.Tensor:
    """Apply a sub-policy's two ops in order, each with its own p. image (H, W, C), seed (2,) int -> same shape/dtype."""
    s = split_seed(seed, len(sub_policy))
    for policy_op, sd in zip(sub_policy, s):
        image = apply_with_probability(_bound(policy_op), policy_op.p, sd)(image)
    return image


def choose_sub_policy(seed, n: int) -> tf.Tensor:
    """int32 scalar index in [0, n), uniform (``random.choice`` over the sub-policies). seed (2,) int."""
    return randint(as_seed(seed), 0, int(n) - 1)


_N_PARAMS = 6


_PACKING: dict[str, tuple[Callable[[Mapping], list], Callable[[tf.Tensor, Mapping], dict]]] = {
    "RandomContrast": (lambda m: [*to_range(m["limit"])], lambda v, b: {"limit": v[0:2]}),
    "RandomBrightness": (lambda m: [*to_range(m["limit"])], lambda v, b: {"limit": v[0:2]}),
    "RandomGamma": (lambda m: [*m["gamma_limit"]], lambda v, b: {"gamma_limit": v[0:2]}),
    "Blur": (lambda m: [m["blur_limit"]],
             lambda v, b: {"blur_limit": v[0], "max_blur_limit": b["blur_limit"]}),
    "MotionBlur": (lambda m: [m["blur_limit"]],
                   lambda v, b: {"blur_limit": v[0], "max_blur_limit": b["blur_limit"]}),
    "InvertImg": (lambda m: [], lambda v, b: {}),
    "Rotate": (lambda m: [*to_range(m["limit"])], lambda v, b: {"limit": v[0:2]}),
    "ShiftScaleRotate": (
        lambda m: [*to_range(m["shift_limit"]), *to_range(m["scale_limit"]), *to_range(m["rotate_limit"])],
        lambda v, b: {"shift_limit": v[0:2], "scale_limit": v[2:4], "rotate_limit": v[4:6]}),
    "RandomScale": (lambda m: [*to_range(m["scale_limit"])], lambda v, b: {"scale_limit": v[0:2]}),
    "GridDistortion": (lambda m: [m["num_steps"], *to_range(m["distort_limit"])],
                       lambda v, b: {"num_steps": v[0], "distort_limit": v[1:3], "max_num_steps": b["num_steps"]}),
    "ElasticTransform": (lambda m: [m["alpha"], m["sigma"], m["alpha_affine"]],
                         lambda v, b: {"alpha": v[0], "sigma": v[1], "alpha_affine": v[2]}),
}


def _run_packed(name: str, image, seed, vector, *, bounds: Mapping[str, int]) -> tf.Tensor:
    """Run op `name` with magnitudes unpacked from a (_N_PARAMS,) float32 `vector` (see `_PACKING`)."""
    out = OPS[name].fn(image, seed, **_PACKING[name][1](vector, bounds))
    out.set_shape(image.shape)
    return out


def apply_policy(image, policy: Sequence[SubPolicy], seed) -> tf.Tensor:
    """pudae's training augmentation: `base_d4`, then ONE sub-policy chosen uniformly, each op with its own p.

    image (H, W, C) uint8/float32 [0,255]; policy: list of `SubPolicy` (e.g. ``load_policy("team3")``; an empty
    list applies only the D4 base); seed (2,) int32/int64. Returns the same dtype (and shape for square images).
    Resize and normalisation (steps 3-4 of teams.md §3.5) are the pipeline's job.

    Equivalent to ``apply_sub_policy(base_d4(image, s_d4), policy[choose_sub_policy(s_choice, n)], s_ops)`` with
    ``s_d4, s_choice, s_ops = split(seed, 3)``, but the graph holds each op type once per slot (a `tf.switch_case`
    over op types, magnitudes gathered from a constant table), so tracing cost does not grow with the policy.
    """
    image = check_image(image)
    d4_seed, choice_seed, op_seed = split_seed(seed, 3)
    image = base_d4(image, d4_seed)
    if not policy:
        return image
    policy = [SubPolicy(*(PolicyOp(op.name, float(op.p), validate_magnitude(op.name, op.magnitude, f"policy[{i}]"))
                          for op in sub)) for i, sub in enumerate(policy)]
    names = sorted({op.name for sub in policy for op in sub if op.p > 0}, key=OP_NAMES.index)
    if not names:
        return image
    # static bounds for ops whose magnitude fixes a static size
    bounds = {key: max([int(op.magnitude[key]) for sub in policy for op in sub if key in op.magnitude] or [3])
              for key in ("blur_limit", "num_steps")}
    op_ids, probs, params = [], [], []
    for sub in policy:
        op_ids.append([names.index(op.name) if op.p > 0 else 0 for op in sub])
        probs.append([float(op.p) for op in sub])
        params.append([(_PACKING[op.name][0](op.magnitude) + [0.0] * _N_PARAMS)[:_N_PARAMS] for op in sub])
    index = choose_sub_policy(choice_seed, len(policy))
    op_ids = tf.gather(tf.constant(op_ids, tf.int32), index)
    probs = tf.gather(tf.constant(probs, tf.float32), index)
    params = tf.gather(tf.constant(params, tf.float32), index)
    for slot, slot_seed in enumerate(split_seed(op_seed, 2)):
        coin_seed, seed_for_op = split_seed(slot_seed, 2)  # same derivation as apply_with_probability
        branches = [functools.partial(_run_packed, name, image, seed_for_op, params[slot], bounds=bounds)
                    for name in names]
        apply = uniform(coin_seed, 0.0, 1.0) < probs[slot]
        static_shape = image.shape
        image = tf.cond(apply, lambda br=branches, i=op_ids[slot]: tf.switch_case(i, br), lambda x=image: x)
        image.set_shape(static_shape)
    return image


def _policy_op_from_json(entry, where: str) -> PolicyOp:
    if not isinstance(entry, Mapping) or "op" not in entry or "p" not in entry:
        raise ConfigError(f"{where}: expected an object {{\"op\": name, \"p\": probability, \"magnitude\": {{...}}}}, "
                          f"got {entry!r}")
    extra = sorted(set(entry) - {"op", "p", "magnitude"})
    if extra:
        raise ConfigError(f"{where}: unexpected keys {extra}; an op entry has only 'op', 'p', 'magnitude'")
    name, p = entry["op"], entry["p"]
    if not _is_number(p) or not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{where} ({name}): p must be a number in [0, 1], got {p!r}")
    magnitude = entry.get("magnitude", {})
    if not isinstance(magnitude, Mapping):
        raise ConfigError(f"{where} ({name}): 'magnitude' must be an object, got {magnitude!r}")
    return PolicyOp(str(name), float(p), validate_magnitude(name, magnitude, where=f"{where} ({name})"))


def load_policy(path_or_name: str | os.PathLike = "team3") -> list[SubPolicy]:
    """Read and validate a policy JSON file (or a packaged name, e.g. ``"team3"``) -> list of `SubPolicy`.

    File format (`POLICY_FORMAT`): ``{"format": ..., "sub_policies": [[op, op], ...]}`` with each op
    ``{"op": name, "p": float, "magnitude": {...}}``. Errors (ConfigError) name the file and the entry
    (``sub_policies[i][j]``) and say what is expected.
    """
    from hpa_zoo.augment.policies import POLICY_FILES, policy_path

    if isinstance(path_or_name, str) and path_or_name in POLICY_FILES:
        path = policy_path(path_or_name)
    else:
        path = Path(path_or_name)
    if not path.is_file():
        raise ConfigError(f"policy file {path} not found; give a JSON policy path or one of the packaged names "
                          f"{sorted(POLICY_FILES)}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("sub_policies"), list):
        raise ConfigError(f"{path}: expected an object with a 'sub_policies' list (format {POLICY_FORMAT})")
    if doc.get("format", POLICY_FORMAT) != POLICY_FORMAT:
        raise ConfigError(f"{path}: unsupported format {doc.get('format')!r}; this version reads {POLICY_FORMAT}")
    policy = []
    for i, sub in enumerate(doc["sub_policies"]):
        where = f"{path}: sub_policies[{i}]"
        if not isinstance(sub, list) or len(sub) != 2:
            raise ConfigError(f"{where}: a sub-policy is a list of exactly 2 ops, got {sub!r}")
        policy.append(SubPolicy(*(_policy_op_from_json(e, f"{where}[{j}]") for j, e in enumerate(sub))))
    if not policy:
        raise ConfigError(f"{path}: 'sub_policies' is empty")
    return policy


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def save_policy(policy: Sequence[SubPolicy], path: str | os.PathLike, *, description: str = "") -> Path:
    """Write `policy` (list of `SubPolicy` or (op, op) pairs of `PolicyOp`) to `path` as JSON, atomically.

    Every op is validated first (ConfigError on a bad entry). Returns the path. `load_policy` reads it back.
    """
    subs = []
    for i, sub in enumerate(policy):
        ops = []
        for j, policy_op in enumerate(sub):
            policy_op = PolicyOp(*policy_op)
            where = f"policy[{i}][{j}]"
            if not 0.0 <= float(policy_op.p) <= 1.0:
                raise ConfigError(f"{where} ({policy_op.name}): p must be in [0, 1], got {policy_op.p}")
            magnitude = validate_magnitude(policy_op.name, policy_op.magnitude, where=where)
            ops.append({"op": policy_op.name, "p": float(policy_op.p),
                        "magnitude": {k: _jsonable(v) for k, v in magnitude.items()}})
        subs.append(ops)
    doc = {"format": POLICY_FORMAT, "description": description, "semantics": f"albumentations {ALBUMENTATIONS_VERSION}",
           "sub_policies": subs}
    return atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _sample_value(spec, rng: np.random.Generator):
    if isinstance(spec, Uniform):
        return float(rng.uniform(spec.lo, spec.hi))
    if isinstance(spec, RandInt):
        return int(rng.integers(spec.lo, spec.hi + 1))
    if isinstance(spec, tuple):
        return tuple(_sample_value(s, rng) for s in spec)
    return spec


def sample_policy(rng: np.random.Generator | int | None, n_subpolicies: int = 5) -> list[SubPolicy]:
    """One random-search candidate (teams.md §3.5): `n_subpolicies` sub-policies of 2 DISTINCT ops from the 11.

    Each op's p is drawn from `P_CHOICES` = {0, .25, .5, .75}; magnitudes uniformly from `SEARCH_SPACE` (reals with
    ``uniform``, integers inclusive). rng: ``numpy.random.Generator`` or an int seed (same seed -> same policy).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    policy = []
    for _ in range(int(n_subpolicies)):
        ops = []
        for index in rng.choice(len(OP_NAMES), size=2, replace=False):
            name = OP_NAMES[int(index)]
            magnitude = {key: _sample_value(spec, rng) for key, spec in SEARCH_SPACE[name].items()}
            p = float(P_CHOICES[int(rng.integers(len(P_CHOICES)))])
            ops.append(PolicyOp(name, p, validate_magnitude(name, magnitude)))
        policy.append(SubPolicy(*ops))
    return policy
