"""The old flat import paths keep working for one release: each is a re-export of its new home that warns once
with a `DeprecationWarning` naming the new path (run in a fresh interpreter, so the first import is observed)."""
from __future__ import annotations

from tests._subprocess import finish, start

CASES = {
    "hpa_zoo.pipeline": ("hpa_zoo.data.image_ops", "resize", "hpa_zoo.data.sources", "folder_dataset"),
    "hpa_zoo.metrics": ("hpa_zoo.nn.metrics", "macro_f1", "hpa_zoo.nn.metrics", "MacroF1"),
    "hpa_zoo.losses": ("hpa_zoo.nn.losses", "focal_loss", "hpa_zoo.nn.losses", "BestfittingLoss"),
    "zoo_models.team1_bestfitting": ("zoo_models.teams.team1_bestfitting", "build_team1_densenet121_512",
                                     "zoo_models.teams.team1_bestfitting", "make_recipe"),
}


def _check_code(old: str) -> str:
    new1, name1, new2, name2 = CASES[old]
    return (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"assert old.{name1} is importlib.import_module({new1!r}).{name1}\n"
        f"assert old.{name2} is importlib.import_module({new2!r}).{name2}\n"
        "dep = [w for w in caught if issubclass(w.category, DeprecationWarning) and "
        f"{old!r} in str(w.message)]\n"
        "assert len(dep) == 1, [str(w.message) for w in caught]\n"
        f"assert {new1!r} in str(dep[0].message)\n"
        "print('ok')\n"
    )


def test_old_paths_reexport_the_new_objects_and_warn():
    children = {old: start(["-c", _check_code(old)]) for old in sorted(CASES)}  # in parallel: one TF start each
    for old, child in children.items():
        out = finish(child, timeout=240, check=True)
        assert out.strip().endswith("ok"), (old, out)
