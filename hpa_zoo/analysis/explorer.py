"""The embedding explorer: one offline HTML page of a 2-D feature projection (``hpa-zoo embed ... --html``).

As the paper's live HPA-UMAP (Ouyang et al. 2019, Fig. 4), but a single file that needs no server and no
internet: the Plotly.js bundle that the ``plotly`` Python package ships is inlined. The page shows

* a WebGL scatter (``scattergl``; 50,000 points stay smooth) of the projection, single-location images coloured
  by class (`CLASS_COLOURS`: 28 colours at least ~17 CIEDE2000 apart), multi-location images grey;
* the legend toggles classes (click) or isolates one (double-click); a search box finds an image by id;
* on hover: the image's RGB composite thumbnail, its id, true labels and top predicted classes;
* on click (or a search hit): a larger view.

Thumbnails (JPEG, ``thumb_px``) and larger views (``large_px``) are embedded as data URIs while they fit in
``max_inline_bytes``; beyond that every image goes to a sidecar folder ``<html stem>_images/`` beside the page and
is loaded only when its point is hovered or clicked (the folder must travel with the page).

The page's data is one JSON block ``<script id="hpa-data" type="application/json">`` (ids, x, y, labels, top
predictions, image references) that the page's own script turns into traces, so tests can read it without a
browser.
"""
from __future__ import annotations

import base64
import html as html_lib
import json
import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from hpa_zoo.atomic import atomic_write_bytes, atomic_write_text
from hpa_zoo.constants import CLASS_NAMES
from hpa_zoo.errors import ConfigError
from hpa_zoo.infer.explain import CLASS_COLOURS, MARKERS, MULTI_GREY, class_colour  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

_PLOTLY_SYMBOLS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down",
                   "P": "cross", "X": "x"}


def _jpeg(rgb: np.ndarray, side: int, quality: int = 85) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes of the image resized (area) so its longer side is ``side``."""
    import cv2

    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale != 1:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ConfigError(f"could not encode a {rgb.shape} image as JPEG")
    return buf.tobytes()


def _safe_name(image_id: str, index: int) -> str:
    """A file name for an image id (ids with path characters get their index instead)."""
    ok = image_id and all(ch.isalnum() or ch in "-_." for ch in image_id) and not image_id.startswith(".")
    return image_id if ok else f"image_{index:07d}"


def build_explorer(xy, ids: Sequence[str], labels: Sequence[Sequence[int]], out_html, *,
                   images: Optional[Iterable] = None, probabilities=None, class_names: Sequence[str] = CLASS_NAMES,
                   title: str = "hpa-zoo embedding explorer", data_label: str = "your images",
                   thumb_px: int = 64, large_px: int = 256, top_k: int = 3,
                   max_inline_bytes: int = 20_000_000, progress: bool = False) -> dict:
    """Write the explorer page (module docstring) and return what it holds.

    Args:
        xy: (N, 2) float projection (e.g. `hpa_zoo.infer.explain.umap_projection`).
        ids: N image ids; labels: N lists of true class ids (one: single-location, coloured; several: grey;
            none: "unlabelled", grey crosses).
        out_html: the ``.html`` file (written atomically).
        images: optional iterable of N images in the same order, each (H, W, 4) RGBY or (H, W, 3) RGB in
            [0, 255] (uint8 or float; a tf.data iterator works); consumed once, streamed.
        probabilities: optional (N, K) float predicted probabilities, for the top ``top_k`` classes on hover.
        class_names: the K names; title: page title; data_label: what the images are (shown on the page:
            say "synthetic data — not an HPA result" for synthetic images).
        thumb_px, large_px: longer side of the hover thumbnail and of the click view, pixels.
        max_inline_bytes: images are embedded while their encoded total stays below this; otherwise all go to
            the sidecar folder ``<stem>_images/`` (``t/`` thumbnails, ``l/`` large views).
        progress: log progress every 1,000 images.

    Returns:
        dict: ``html`` (path), ``n_points``, ``n_images``, ``inline`` (bool), ``sidecar`` (folder or None),
        ``bytes`` (page size).

    Raises:
        ConfigError: shapes that disagree, fewer / more images than points, the plotly package missing.
    """
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        raise ConfigError("the explorer inlines Plotly.js from the plotly package: pip install plotly "
                          "(or 'hpa-zoo[explain]')") from exc
    from hpa_zoo.infer.explain import rgby_to_rgb

    xy = np.asarray(xy, np.float64)
    n = len(ids)
    if xy.shape != (n, 2):
        raise ConfigError(f"xy has shape {xy.shape}; expected ({n}, 2) for {n} ids")
    labels = [sorted({int(c) for c in lab}) for lab in labels]
    if len(labels) != n:
        raise ConfigError(f"{len(labels)} label lists for {n} ids")
    k = len(class_names)
    bad = sorted({c for lab in labels for c in lab if not 0 <= c < k})
    if bad:
        raise ConfigError(f"class ids {bad[:5]} outside 0..{k - 1} (class_names has {k} names)")
    top: list = [[] for _ in range(n)]
    if probabilities is not None:
        p = np.asarray(probabilities, np.float64)
        if p.shape != (n, k):
            raise ConfigError(f"probabilities have shape {p.shape}; expected ({n}, {k})")
        order = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
        top = [[[int(c), round(float(p[i, c]), 4)] for c in order[i]] for i in range(n)]
    out_html = Path(out_html)
    sidecar = out_html.parent / f"{out_html.stem}_images"
    thumbs: list = [None] * n
    large: list = [None] * n
    inline, held, count = True, 0, 0
    if images is not None:
        for i, image in enumerate(images):
            if i >= n:
                raise ConfigError(f"more images than the {n} points")
            rgb = rgby_to_rgb(np.asarray(image))
            pair = (_jpeg(rgb, thumb_px), _jpeg(rgb, large_px))
            count += 1
            if inline and held + sum(map(len, pair)) * 4 // 3 > max_inline_bytes:
                inline = False  # switch: everything held so far goes to the sidecar too
                for j in range(i):
                    _write_pair(sidecar, _safe_name(ids[j], j), (thumbs[j], large[j]))
            if inline:
                thumbs[i], large[i] = pair
                held += sum(map(len, pair)) * 4 // 3
            else:
                _write_pair(sidecar, _safe_name(ids[i], i), pair)
            if progress and count % 1000 == 0:
                log.info("explorer: %d / %d images encoded", count, n)
        if count != n:
            raise ConfigError(f"{count} images for {n} points: pass the images of every point, in order")
        if inline:
            thumbs = [f"data:image/jpeg;base64,{base64.b64encode(b).decode()}" for b in thumbs]
            large = [f"data:image/jpeg;base64,{base64.b64encode(b).decode()}" for b in large]
        else:
            rel = sidecar.name
            thumbs = [f"{rel}/t/{_safe_name(ids[i], i)}.jpg" for i in range(n)]
            large = [f"{rel}/l/{_safe_name(ids[i], i)}.jpg" for i in range(n)]
    data = {"ids": [str(i) for i in ids], "x": [round(float(v), 5) for v in xy[:, 0]],
            "y": [round(float(v), 5) for v in xy[:, 1]], "labels": labels, "top": top, "thumbs": thumbs,
            "large": large, "class_names": list(class_names), "colours": [class_colour(c) for c in range(k)],
            "symbols": [_PLOTLY_SYMBOLS[MARKERS[c % len(MARKERS)]] for c in range(k)], "grey": MULTI_GREY,
            "data_label": data_label}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = _PAGE.format(title=html_lib.escape(title), data_label=html_lib.escape(data_label), n=n,
                        plotly=get_plotlyjs(), data=payload, script=_SCRIPT)
    atomic_write_text(out_html, page)
    size = out_html.stat().st_size
    log.info("explorer: %d points, %d images (%s) -> %s (%.1f MB)", n, count,
             "inline" if inline else f"sidecar {sidecar}", out_html, size / 1e6)
    return {"html": str(out_html), "n_points": n, "n_images": count, "inline": bool(inline and count),
            "sidecar": None if inline or not count else str(sidecar), "bytes": size}


def _write_pair(folder: Path, name: str, pair: tuple) -> None:
    atomic_write_bytes(folder / "t" / f"{name}.jpg", pair[0])
    atomic_write_bytes(folder / "l" / f"{name}.jpg", pair[1])


def read_explorer_data(path) -> dict:
    """The JSON data block of an explorer page (what `build_explorer` embedded), for tests and scripts."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index('<script id="hpa-data" type="application/json">') + len(
        '<script id="hpa-data" type="application/json">')
    return json.loads(text[start:text.index("</script>", start)])


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:sans-serif;margin:0;display:flex;height:100vh}}
#plot{{flex:1;min-width:0}}
#side{{width:300px;padding:8px;border-left:1px solid #ccc;overflow:auto;font-size:13px}}
#side img{{image-rendering:auto;border:1px solid #888}}
#thumb{{width:128px;height:128px}}
#modal{{display:none;position:fixed;inset:0;background:rgba(0,0,0,.7);align-items:center;justify-content:center}}
#modal div{{background:#fff;padding:10px;max-width:90vw}}
#modal img{{width:min(512px,80vw)}}
.data{{color:#a00}}
</style>
<script type="text/javascript">{plotly}</script>
</head><body>
<div id="plot"></div>
<div id="side">
<h3>{title}</h3>
<p class="data">Data: {data_label}. {n} points.</p>
<p><input id="search" placeholder="search an image id" size="28"> <button id="go">find</button>
<span id="found"></span></p>
<div id="info"><p>Hover over a point to see the image; click for a larger view. Click a legend entry to hide
a class, double-click to show it alone.</p></div>
</div>
<div id="modal"><div><img id="big" alt="larger view"><p id="bigcap"></p></div></div>
<script id="hpa-data" type="application/json">{data}</script>
<script type="text/javascript">{script}</script>
</body></html>
"""

_SCRIPT = r"""
(function () {
  var D = JSON.parse(document.getElementById('hpa-data').textContent);
  var n = D.ids.length, byId = {};
  for (var i = 0; i < n; i++) byId[D.ids[i]] = i;
  function names(list) { return list.map(function (c) { return D.class_names[c]; }).join(', ') || '(none)'; }
  function group(i) { var l = D.labels[i]; return l.length === 1 ? l[0] : (l.length ? -1 : -2); }
  var groups = {};
  for (var i = 0; i < n; i++) { var g = group(i); (groups[g] = groups[g] || []).push(i); }
  var traces = [];
  function trace(g, idx) {
    var single = g >= 0;
    return {type: 'scattergl', mode: 'markers', x: idx.map(function (i) { return D.x[i]; }),
      y: idx.map(function (i) { return D.y[i]; }), customdata: idx, hoverinfo: 'none',
      name: single ? D.class_names[g] : (g === -1 ? 'multi-location' : 'unlabelled'),
      marker: {size: single ? 6 : 5, color: single ? D.colours[g] : D.grey,
               symbol: single ? D.symbols[g] : (g === -1 ? 'circle' : 'x'), opacity: single ? 0.9 : 0.6}};
  }
  [-1, -2].forEach(function (g) { if (groups[g]) traces.push(trace(g, groups[g])); });
  Object.keys(groups).map(Number).filter(function (g) { return g >= 0; }).sort(function (a, b) { return a - b; })
    .forEach(function (g) { traces.push(trace(g, groups[g])); });
  traces.push({type: 'scattergl', mode: 'markers', x: [], y: [], name: 'search hit', hoverinfo: 'none',
               showlegend: false, marker: {size: 18, color: 'rgba(0,0,0,0)', line: {width: 3, color: '#000'}}});
  var plot = document.getElementById('plot');
  window.hpaReady = Plotly.newPlot(plot, traces, {
      hovermode: 'closest', dragmode: 'pan', margin: {l: 40, r: 10, t: 30, b: 40},
      xaxis: {title: 'UMAP 1', zeroline: false}, yaxis: {title: 'UMAP 2', zeroline: false},
      legend: {itemsizing: 'constant', font: {size: 10}}, title: {text: D.data_label, font: {size: 12}}},
    {responsive: true, scrollZoom: true, displaylogo: false});
  function show(i) {
    var top = D.top[i].map(function (t) { return D.class_names[t[0]] + ' ' + t[1].toFixed(2); }).join('<br>');
    var img = D.thumbs[i] ? '<img id="thumb" alt="thumbnail" src="' + D.thumbs[i] + '">' : '<p>(no image)</p>';
    document.getElementById('info').innerHTML = img + '<p><b>id</b> <span id="info-id">' + D.ids[i] +
      '</span></p><p><b>true</b> <span id="info-true">' + names(D.labels[i]) + '</span></p>' +
      (top ? '<p><b>predicted</b><br><span id="info-pred">' + top + '</span></p>' : '');
    window.hpaShown = i;
  }
  function enlarge(i) {
    if (!D.large[i]) return;
    document.getElementById('big').src = D.large[i];
    document.getElementById('bigcap').textContent = D.ids[i] + ' - ' + names(D.labels[i]);
    document.getElementById('modal').style.display = 'flex';
  }
  document.getElementById('modal').onclick = function () { this.style.display = 'none'; };
  plot.on('plotly_hover', function (ev) { var p = ev.points[0]; if (p && p.customdata !== undefined) show(p.customdata); });
  plot.on('plotly_click', function (ev) { var p = ev.points[0]; if (p && p.customdata !== undefined) enlarge(p.customdata); });
  function find() {
    var q = document.getElementById('search').value.trim(), i = byId[q];
    if (i === undefined) {
      var hits = D.ids.filter(function (s) { return q && s.indexOf(q) >= 0; });
      i = hits.length === 1 ? byId[hits[0]] : undefined;
      document.getElementById('found').textContent = q ? (hits.length ? hits.length + ' ids match' : 'no such id') : '';
      if (i === undefined) return;
    }
    document.getElementById('found').textContent = 'found';
    Plotly.restyle(plot, {x: [[D.x[i]]], y: [[D.y[i]]]}, [traces.length - 1]);
    show(i); enlarge(i);
  }
  document.getElementById('go').onclick = find;
  document.getElementById('search').onkeydown = function (e) { if (e.key === 'Enter') find(); };
  window.hpaShow = show; window.hpaFind = find;
})();
"""

