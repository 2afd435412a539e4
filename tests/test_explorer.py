"""hpa_zoo.analysis.explorer: the offline embedding explorer page.

Without a browser: the page's data block against the inputs (points, labels, top predictions from NumPy's
argsort), the embedded thumbnails decoded and compared with an OpenCV downscale of the RGB composite, the sidecar
mode, no network script, 50,000 points, and the 28 class colours' CIEDE2000 distances (scikit-image).
With a browser (headless Chromium, driven by Playwright at the system's executable): the page loads without
console errors, renders N points, and a hover over a known point shows its thumbnail and labels; a screenshot
is kept. That test skips, saying why, where no Chromium (or no Playwright) is installed.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import warnings

import cv2
import numpy as np
import pytest

from hpa_zoo.analysis import explorer
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.infer import explain


def _fixture(n=40, size=48, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 160, (n, 6, 6, 4)).astype(np.float32)   # smooth fields: JPEG keeps them faithfully
    images = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in coarse])
    images = np.clip(images, 0, 255).astype(np.uint8)
    xy = rng.normal(size=(n, 2))
    xy[0] = (8.0, 8.0)  # point 0 stands alone (the browser test hovers it)
    labels = [[int(rng.integers(28))] if i % 3 else [3, 17] for i in range(n)]
    labels[1] = []
    probs = rng.uniform(size=(n, 28))
    ids = [f"id-{i:03d}" for i in range(n)]
    return ids, xy, labels, probs, images


def _decode(uri):
    assert uri.startswith("data:image/jpeg;base64,")
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def test_page_holds_every_point_its_labels_predictions_and_thumbnails(tmp_path):
    ids, xy, labels, probs, images = _fixture()
    out = explorer.build_explorer(xy, ids, labels, tmp_path / "e.html", images=iter(images), probabilities=probs,
                                  thumb_px=32, large_px=96, data_label="synthetic data — not an HPA result")
    assert out["n_points"] == 40 and out["inline"] and out["sidecar"] is None
    data = explorer.read_explorer_data(tmp_path / "e.html")
    assert data["ids"] == ids and len(data["x"]) == len(data["y"]) == 40
    np.testing.assert_allclose(np.c_[data["x"], data["y"]], xy, atol=1e-5)
    assert data["labels"][2] == labels[2] and data["labels"][0] == [3, 17] and data["labels"][1] == []
    ref_top = np.argsort(-probs, axis=1)[:, :3]
    assert [[c for c, _ in t] for t in data["top"]] == ref_top.tolist()
    assert data["top"][5][0][1] == pytest.approx(probs[5, ref_top[5, 0]], abs=1e-4)
    for i in (0, 7):
        thumb, big = _decode(data["thumbs"][i]), _decode(data["large"][i])
        assert thumb.shape == (32, 32, 3) and big.shape == (96, 96, 3)
        ref = cv2.resize(explain.rgby_to_rgb(images[i]), (32, 32), interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(thumb.astype(float) - ref).mean() < 6  # JPEG error only
        other = cv2.resize(explain.rgby_to_rgb(images[i + 1]), (32, 32), interpolation=cv2.INTER_AREA)
        assert np.abs(thumb.astype(float) - other).mean() > 2 * np.abs(thumb.astype(float) - ref).mean()
    text = (tmp_path / "e.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", text, re.I)  # offline: no CDN
    assert "scattergl" in text and "Plotly.newPlot" in text and len(text) > 3_000_000  # Plotly.js inlined
    assert "synthetic data — not an HPA result" in text
    assert data["colours"] == list(explorer.CLASS_COLOURS)


def test_large_sets_go_to_a_lazily_loaded_sidecar_folder(tmp_path):
    ids, xy, labels, probs, images = _fixture(n=30)
    ids[4] = "../evil/id"
    out = explorer.build_explorer(xy, ids, labels, tmp_path / "page.html", images=iter(images),
                                  max_inline_bytes=20_000)
    assert not out["inline"] and out["sidecar"] == str(tmp_path / "page_images")
    data = explorer.read_explorer_data(tmp_path / "page.html")
    assert data["thumbs"][0] == "page_images/t/id-000.jpg" and data["large"][29] == "page_images/l/id-029.jpg"
    assert data["thumbs"][4] == "page_images/t/image_0000004.jpg"  # a path-like id never leaves the folder
    for rel in data["thumbs"] + data["large"]:
        assert (tmp_path / rel).is_file()
    thumb = cv2.imread(str(tmp_path / data["thumbs"][3]))[..., ::-1]
    ref = cv2.resize(explain.rgby_to_rgb(images[3]), (64, 64), interpolation=cv2.INTER_LINEAR).astype(float)
    assert np.abs(thumb - ref).mean() < 6
    assert "data:image/jpeg" not in (tmp_path / "page.html").read_text()


def test_fifty_thousand_points_and_mismatches_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    n = 50_000
    labels = [[int(c)] for c in rng.integers(0, 28, n)]
    out = explorer.build_explorer(rng.normal(size=(n, 2)), [f"p{i}" for i in range(n)], labels,
                                  tmp_path / "big.html")
    assert out["n_points"] == n and out["bytes"] < 12_000_000
    assert len(explorer.read_explorer_data(tmp_path / "big.html")["x"]) == n
    from hpa_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="2 images for 3 points"):
        explorer.build_explorer(np.zeros((3, 2)), ["a", "b", "c"], [[0]] * 3, tmp_path / "x.html",
                                images=iter(np.zeros((2, 8, 8, 4), np.uint8)))
    with pytest.raises(ConfigError, match=r"expected \(3, 28\)"):
        explorer.build_explorer(np.zeros((3, 2)), ["a", "b", "c"], [[0]] * 3, tmp_path / "x.html",
                                probabilities=np.zeros((3, 5)))


def test_the_28_class_colours_are_distinguishable():
    from skimage.color import deltaE_ciede2000, rgb2lab

    rgb = np.array([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)] for c in explorer.CLASS_COLOURS])
    assert len(rgb) == len(CLASS_NAMES) == len(set(explorer.CLASS_COLOURS))
    lab = rgb2lab(rgb[None])[0]
    pair = [deltaE_ciede2000(lab[i], lab[j]) for i in range(28) for j in range(i)]
    assert min(pair) > 15
    grey = rgb2lab(np.array([[[0xa0 / 255] * 3]]))[0, 0]
    assert min(deltaE_ciede2000(lab[i], grey) for i in range(28)) > 15
    # Nucleoplasm and Nuclear membrane shared one dark blue in the old tab20 scatter
    assert explorer.class_colour(0) != explorer.class_colour(1)


def test_static_embedding_plot_uses_the_same_colours(tmp_path):
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    xy = np.random.default_rng(0).normal(size=(56, 2))
    labels = [[k % 28] for k in range(56)]
    fig = explain.plot_embedding(xy, labels, tmp_path / "e.png")
    cols = {c.get_label(): mcolors.to_hex(c.get_facecolor()[0]) for c in fig.axes[0].collections}
    plt.close(fig)
    assert cols["Nucleoplasm"] == explorer.CLASS_COLOURS[0] and cols["Nuclear membrane"] == explorer.CLASS_COLOURS[1]
    assert len(set(cols.values())) == 28


# ---------------------------------------------------------------------------------------------- browser
def _system_chromium():
    for name in (os.environ.get("HPA_ZOO_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable", "chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_in_headless_chromium(tmp_path):
    """Page loads without console errors, renders N points, hover on point 0 shows its thumbnail and labels."""
    browser_path = _system_chromium()
    if browser_path is None:
        pytest.skip("no system Chromium (chromium / chromium-browser / google-chrome on PATH, or HPA_ZOO_CHROMIUM): "
                    "install the distribution's chromium package to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                                 "playwright; its own browser download is not needed)")
    ids, xy, labels, probs, images = _fixture()
    explorer.build_explorer(xy, ids, labels, tmp_path / "e.html", images=iter(images), probabilities=probs)
    data = explorer.read_explorer_data(tmp_path / "e.html")
    errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, headless=True,
                                     args=["--use-gl=swiftshader", "--enable-webgl", "--ignore-gpu-blocklist"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "e.html").as_uri())
        page.wait_for_function("window.hpaReady !== undefined")
        page.evaluate("window.hpaReady")
        n = page.evaluate("document.getElementById('plot').data.filter(t => t.name !== 'search hit')"
                          ".reduce((s, t) => s + t.x.length, 0)")
        assert n == len(ids)
        x, y = page.evaluate("""() => { const gd = document.getElementById('plot'), L = gd._fullLayout;
            const r = gd.getBoundingClientRect();
            return [r.left + L.margin.l + L.xaxis.l2p(8.0), r.top + L.margin.t + L.yaxis.l2p(8.0)]; }""")
        page.mouse.move(x - 20, y - 20)
        page.mouse.move(x, y)
        page.wait_for_selector("#info-id", timeout=5000)
        assert page.inner_text("#info-id") == ids[0]
        assert page.inner_text("#info-true") == f"{CLASS_NAMES[3]}, {CLASS_NAMES[17]}"
        assert page.get_attribute("#thumb", "src") == data["thumbs"][0]
        page.screenshot(path=str(tmp_path / "explorer.png"))
        browser.close()
    assert not errors, errors
    assert (tmp_path / "explorer.png").stat().st_size > 10_000


_NODE_HARNESS = r"""
const fs = require('fs');
const html = fs.readFileSync(process.argv[2], 'utf8');
const data = html.split('<script id="hpa-data" type="application/json">')[1].split('</script>')[0];
const script = html.split('<script type="text/javascript">').pop().split('</script>')[0];
const els = {}, handlers = {};
function el(id) {
  return els[id] = els[id] || {id, textContent: id === 'hpa-data' ? data : '', innerHTML: '', value: '',
    style: {}, on: (ev, f) => { handlers[ev] = f; }};
}
global.document = {getElementById: el};
global.window = global;
let plotted = null, restyled = null;
global.Plotly = {newPlot: (gd, traces, layout, config) => { plotted = {traces, layout}; return Promise.resolve(gd); },
                 restyle: (gd, update, idx) => { restyled = {update, idx}; }};
eval(script);
handlers.plotly_hover({points: [{customdata: 0}]});
const hover = el('info').innerHTML;
handlers.plotly_click({points: [{customdata: 2}]});
const big = el('big').src, modal = el('modal').style.display;
el('search').value = 'id-005';
window.hpaFind();
console.log(JSON.stringify({traces: plotted.traces.map(t => ({name: t.name, type: t.type, n: t.x.length,
  color: t.marker.color, idx: t.customdata})), hover, big, modal, searchBig: el('big').src,
  searchInfo: el('info').innerHTML, restyled}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="no node.js to run the page's script")
def test_the_page_script_builds_the_traces_and_shows_hovered_points(tmp_path):
    """The page's own JavaScript run by node.js against a stub DOM and a stub Plotly (no rendering)."""
    import json
    import subprocess

    ids, xy, labels, probs, images = _fixture()
    explorer.build_explorer(xy, ids, labels, tmp_path / "e.html", images=iter(images), probabilities=probs)
    data = explorer.read_explorer_data(tmp_path / "e.html")
    (tmp_path / "h.js").write_text(_NODE_HARNESS)
    res = subprocess.run(["node", str(tmp_path / "h.js"), str(tmp_path / "e.html")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    traces = [t for t in out["traces"] if t["name"] != "search hit"]
    assert all(t["type"] == "scattergl" for t in out["traces"])
    assert sum(t["n"] for t in traces) == len(ids)
    by_name = {t["name"]: t for t in traces}
    multi = [i for i, lab in enumerate(labels) if len(lab) > 1]
    assert sorted(by_name["multi-location"]["idx"]) == multi and by_name["multi-location"]["color"] == "#a0a0a0"
    assert by_name["unlabelled"]["idx"] == [1]
    for i, lab in enumerate(labels):
        if len(lab) == 1:
            t = by_name[CLASS_NAMES[lab[0]]]
            assert i in t["idx"] and t["color"] == explorer.CLASS_COLOURS[lab[0]]
    hover = out["hover"]
    assert f'src="{data["thumbs"][0]}"' in hover and ids[0] in hover
    assert f"{CLASS_NAMES[3]}, {CLASS_NAMES[17]}" in hover
    top = np.argsort(-probs[0])[:3]
    assert all(CLASS_NAMES[c] in hover for c in top)
    assert out["big"] == data["large"][2] and out["modal"] == "flex"
    assert ids[5] in out["searchInfo"] and out["searchBig"] == data["large"][5] and out["restyled"]["update"]["x"] == [[data["x"][5]]]
