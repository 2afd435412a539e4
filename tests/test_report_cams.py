"""hpa_zoo.analysis.report_cams: the report's Fig. 3 panel and CAM relevance.

Reference: a constructed model whose Grad-CAM is, by Grad-CAM's definition, the image's green channel divided by
its maximum (a 1x1 convolution that copies green, global average pooling, positive class weights), so the pointing
game and the energy inside a mask are computed by hand in NumPy from the green channel and the mask.
"""
from __future__ import annotations

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from hpa_zoo.analysis import report_cams
from hpa_zoo.analysis.report import figure_report
from hpa_zoo.constants import CHANNELS, CLASS_NAMES
from hpa_zoo.data.labels import format_target
from hpa_zoo.errors import ConfigError, HpaDataError
from hpa_zoo.infer.ensemble import save_predictions

SIZE = 32
PANEL = [CLASS_NAMES.index(n) for n in ("Cytosol", "Nucleoli", "Mitochondria", "Plasma membrane", "Golgi apparatus")]


def _green_model(sign=1.0, name="green_cam"):
    inp = keras.Input((SIZE, SIZE, 4))
    feat = keras.layers.Conv2D(1, 1, use_bias=False, name="feat")(inp)
    pooled = keras.layers.GlobalAveragePooling2D()(feat)
    logits = keras.layers.Dense(28, use_bias=False, name="logits")(pooled)
    model = keras.Model(inp, logits, name=name)
    model.get_layer("feat").set_weights([np.array([0, 1, 0, 0], np.float32).reshape(1, 1, 4, 1)])
    model.get_layer("logits").set_weights([np.full((1, 28), sign, np.float32)])
    return model


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    ids, labels, greens, masks = [], [], [], []
    for k in range(8):
        c = PANEL[k % 5]
        lab = [c] if k < 5 else [c, 0]
        image = rng.integers(0, 40, (SIZE, SIZE, 4)).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), bool)
        y0, x0 = rng.integers(2, 20, 2)
        mask[y0:y0 + 8, x0:x0 + 8] = True
        image[..., 1][mask] += np.uint8(150) if k != 3 else np.uint8(0)   # image 3: no signal in its mask
        if k == 3:
            image[0, 0, 1] = 255                                           # ... its maximum lies outside
        image_id = f"im{k}"
        for j, colour in enumerate(CHANNELS):
            cv2.imwrite(str(tmp_path / f"{image_id}_{colour}.png"), image[..., j])
        np.savez_compressed(tmp_path / f"{image_id}.npz", classes=np.array([c]), masks=mask[None])
        ids.append(image_id)
        labels.append(lab)
        greens.append(image[..., 1].astype(np.float64))
        masks.append(mask)
    y = np.zeros((len(ids), 28), bool)
    for i, lab in enumerate(labels):
        y[i, lab] = True
    return tmp_path, ids, y, greens, masks


def test_pick_panel_images_prefers_single_label_images_and_uses_each_once():
    ids = ["a", "b", "c", "d"]
    y = np.zeros((4, 28), bool)
    y[0, [25, 2]] = True        # a: cytosol + nucleoli (multi)
    y[1, 25] = True             # b: cytosol alone
    y[2, 2] = True              # c: nucleoli alone
    y[3, [23, 0]] = True        # d: mitochondria (multi only)
    picks = report_cams.pick_panel_images(ids, y)
    assert picks == [(25, "easy", "b"), (2, "easy", "c"), (23, "hard", "d")]
    assert report_cams.pick_panel_images(ids, y, available={"a", "d"}) == [(25, "easy", "a"), (23, "hard", "d")]


def test_cam_relevance_matches_a_hand_computation(folder):
    path, ids, y, greens, masks = folder
    rows = report_cams.cam_relevance_rows([("m", _green_model())], path, path, ids, y)
    by_class = {r["class"]: r for r in rows}
    assert set(by_class) == {CLASS_NAMES[c] for c in PANEL}  # Nucleoplasm (0) has no mask in the files
    for c in PANEL:
        chosen = [i for i in range(len(ids)) if y[i, c]]
        hits = [masks[i].ravel()[np.argmax(greens[i])] for i in chosen]
        energy = [(greens[i] * masks[i]).sum() / greens[i].sum() for i in chosen]
        r = by_class[CLASS_NAMES[c]]
        assert r["n"] == len(chosen) and r["layer"] == "feat"
        assert r["pointing"] == pytest.approx(np.mean(hits))
        assert r["energy"] == pytest.approx(np.mean(energy), abs=1e-5)
        assert r["chance"] == pytest.approx(np.mean([masks[i].mean() for i in chosen]))
    assert by_class["Plasma membrane"]["pointing"] == 0.0  # image 3's maximum lies outside its mask
    with pytest.raises(HpaDataError, match="synth --masks"):
        report_cams.cam_relevance_rows([("m", _green_model())], path, path / "nowhere", ids, y)


def test_report_draws_fig3_for_each_model_and_the_relevance_table(folder):
    path, ids, y, _, _ = folder
    probs = np.clip(y * 0.8 + 0.1, 0, 1)
    csvs = [save_predictions(path / f"{n}.csv", ids, probs, model_name=n, fold=0) for n in ("good", "inverse")]
    pd.DataFrame({"Id": ids, "Target": [format_target(np.flatnonzero(r)) for r in y]}).to_csv(path / "l.csv",
                                                                                              index=False)
    models = [("good", _green_model()), ("inverse", _green_model(-1.0, "inverse_cam"))]
    summary = figure_report(csvs, path / "l.csv", out_dir=path / "rep", data_label="synthetic", cam_models=models,
                            images_dir=path, masks_dir=path)
    assert [p["id"] for p in summary["cam_panel"]] == ["im0", "im1", "im2", "im3", "im4"]
    assert summary["cam_layers"] == {"good": "feat", "inverse": "feat"}
    png = cv2.imread(str(path / "rep" / "fig3_gradcam.png"))
    assert png is not None and png.shape[0] > png.shape[1]  # 5 rows x 3 columns
    table = pd.read_csv(path / "rep" / "cam_relevance.csv")
    assert set(table["model"]) == {"good", "inverse"} and len(table) == 10
    good = table[table["model"] == "good"]["energy"].mean()
    inverse = table[table["model"] == "inverse"]["energy"].mean()  # negative weights: all-zero CAMs, energy 0
    assert good > 3 * table["chance"].mean() and inverse == 0.0
    html = (path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "CAM relevance" in html and "pointing" in html


def test_report_inputs_accept_run_folders_and_check_the_models(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_predictions(run / "val_predictions.csv", ["a"], np.full((1, 28), 0.5), model_name="m", fold=0)
    (run / "preset").mkdir()
    csvs, models = report_cams.resolve_report_inputs([run], load_models=False)
    assert csvs == [run / "val_predictions.csv"] and models == []
    with pytest.raises(ConfigError, match="val_predictions.csv"):
        report_cams.resolve_report_inputs([tmp_path])
    with pytest.raises(ConfigError, match="2 models for 1 inputs"):
        report_cams.resolve_report_inputs([run], ["x", "y"])


def test_benchmark_table_means_over_classes():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cam_relevance.py"
    spec = importlib.util.spec_from_file_location("cam_relevance_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"model": m, "class": c, "n": 4, "pointing": p, "energy": e, "chance": 0.1, "layer": "x"}
            for m, c, p, e in (("a", "Cytosol", 1.0, 0.5), ("a", "Nucleoli", 0.5, 0.25),
                               ("b", "Cytosol", 0.0, 0.1), ("b", "Nucleoli", 0.25, 0.2))]
    text = bench.table({"cam_relevance": rows})
    assert "| Cytosol | 4 | 1.00 | 0.500 | 0.00 | 0.100 | 0.100 |" in text
    assert "| mean over 2 classes | | **0.750** | **0.375** | **0.125** | **0.150** | 0.100 |" in text


def test_cam_options_without_models_are_refused(tmp_path, capsys):
    from hpa_zoo.cli import main

    csv = save_predictions(tmp_path / "p.csv", ["a"], np.full((1, 28), 0.5), model_name="m", fold=0)
    pd.DataFrame({"Id": ["a"], "Target": ["0"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(ConfigError, match="--masks"):
        figure_report([csv], tmp_path / "l.csv", out_dir=tmp_path / "r", data_label="x", masks_dir=tmp_path)
    assert main(["report", str(csv), "--labels", str(tmp_path / "l.csv"), "--out", str(tmp_path / "r"),
                 "--images", str(tmp_path)]) == 1
    assert "no input names a model" in capsys.readouterr().err


def _green_then_blur_model(name):
    """``feat`` copies green; ``late`` is a 3x3 box blur of it. Grad-CAM at ``feat`` is green / max (the gradient
    reaching it is positive everywhere: every position feeds the pooled logit), at ``late`` the blurred green /
    max; the last 4-D layer (the fallback without a registry row) is ``late``."""
    inp = keras.Input((SIZE, SIZE, 4))
    feat = keras.layers.Conv2D(1, 1, use_bias=False, name="feat")(inp)
    late = keras.layers.Conv2D(1, 3, padding="same", use_bias=False, name="late")(feat)
    logits = keras.layers.Dense(28, use_bias=False, name="logits")(keras.layers.GlobalAveragePooling2D()(late))
    model = keras.Model(inp, logits, name=name)
    model.get_layer("feat").set_weights([np.array([0, 1, 0, 0], np.float32).reshape(1, 1, 4, 1)])
    model.get_layer("late").set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32)])
    model.get_layer("logits").set_weights([np.full((1, 28), 1.0, np.float32)])
    return model


def test_fig3_panel_uses_the_registry_cam_layer_and_names_it(folder):
    from hpa_zoo import registry
    from hpa_zoo.infer.explain import default_cam_layer

    path, ids, y, greens, _ = folder
    registry.list_models()
    registry.register(registry.ModelSpec(name="fig3_row_test", team="test", builder="x:y", input_size=SIZE,
                                         cam_layer="feat"))
    try:
        model = _green_then_blur_model("fig3_row_test")
        unregistered = _green_then_blur_model("fig3_no_row")
        assert default_cam_layer(unregistered) == "late"  # so "feat" below can only come from the registry row
        cams = report_cams.cam_sections([("m", model)], ids, y, images_dir=path, out_dir=path / "c",
                                        save=lambda fig, stem: None)
        assert cams["layers"] == {"m": "feat"} and "m at <code>feat</code>" in cams["html"]
        assert len(cams["cams"]) == 5
        for (name, image_id), cam in cams["cams"].items():
            green = greens[ids.index(image_id)]
            np.testing.assert_allclose(cam, green / green.max(), atol=1e-5)  # by hand, at feat
            blurred = cv2.blur(green, (3, 3), borderType=cv2.BORDER_CONSTANT)
            assert np.abs(cam - blurred / blurred.max()).max() > 0.05  # not the late layer's map

        probs = np.clip(y * 0.8 + 0.1, 0, 1)
        csv = save_predictions(path / "reg.csv", ids, probs, model_name="reg", fold=0)
        pd.DataFrame({"Id": ids, "Target": [format_target(np.flatnonzero(r)) for r in y]}).to_csv(path / "l.csv",
                                                                                                  index=False)
        summary = figure_report([csv], path / "l.csv", out_dir=path / "rep", data_label="synthetic",
                                cam_models=[("reg", model)], images_dir=path)
        assert summary["cam_layers"] == {"reg": "feat"}
        assert "reg at <code>feat</code>" in (path / "rep" / "report.html").read_text()
        override = figure_report([csv], path / "l.csv", out_dir=path / "rep2", data_label="synthetic",
                                 cam_models=[("reg", model)], images_dir=path, cam_layers={"reg": "late"})
        assert override["cam_layers"] == {"reg": "late"}
    finally:
        registry.unregister("fig3_row_test")


def test_cli_report_names_each_models_layer_and_takes_an_override(folder, tiny_registry_model, capsys):
    from hpa_zoo.cli import main

    path, ids, y, _, _ = folder
    csv = save_predictions(path / "t.csv", ids, np.clip(y * 0.8 + 0.1, 0, 1), model_name="tiny", fold=0)
    pd.DataFrame({"Id": ids, "Target": [format_target(np.flatnonzero(r)) for r in y]}).to_csv(path / "l.csv",
                                                                                              index=False)
    args = ["report", str(csv), "--labels", str(path / "l.csv"), "--images", str(path), "--models",
            tiny_registry_model, "--data-label", "synthetic"]
    assert main(args + ["--out", str(path / "a")]) == 0
    assert "tiny: Grad-CAM at pool2" in capsys.readouterr().out  # a row without cam_layer: its last 4-D layer
    assert main(args + ["--out", str(path / "b"), "--cam-layer", "tiny=conv1_conv"]) == 0
    assert "tiny: Grad-CAM at conv1_conv" in capsys.readouterr().out
    assert "tiny at <code>conv1_conv</code>" in (path / "b" / "report.html").read_text()
    assert main(args + ["--out", str(path / "c"), "--cam-layer", "other=conv1_conv"]) == 1
    assert "not one of the models ['tiny']" in capsys.readouterr().err
    assert main(args + ["--out", str(path / "c"), "--cam-layer", "conv1_conv"]) == 1
    assert "MODEL=LAYER" in capsys.readouterr().err
