"""Screenshots of ``hpa-zoo report``'s ``report.html`` and ``hpa-zoo embed --html``'s explorer, for docs/.

Drives the system Chromium (the distribution's ``chromium`` package; Playwright's own browser download is not
needed) headless through Playwright, the same way ``tests/test_explorer.py::test_in_headless_chromium`` does.
The explorer shot hovers over one point first, so the thumbnail panel is shown as a user sees it.

    python docs/make_screenshots.py --report runs/report/report.html --explorer hpa_zoo_demo/explorer.html \
        --out docs/

Writes ``<out>/report.png`` (the top of the report), ``<out>/report_fig3.png`` (the Grad-CAM panel, when the
report has one) and ``<out>/explorer.png``. Fails with the reason when no browser or Playwright is there.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def system_chromium() -> Optional[str]:
    """Path of a system Chromium (``$HPA_ZOO_CHROMIUM`` first, then the usual names on PATH), or None."""
    for name in (os.environ.get("HPA_ZOO_CHROMIUM"), *BROWSERS):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _hover_a_point(page) -> None:
    """Move the mouse onto the first plotted point, so the explorer's hover panel shows its thumbnail."""
    page.wait_for_function("window.hpaReady !== undefined")
    page.evaluate("window.hpaReady")
    x, y = page.evaluate("""() => { const gd = document.getElementById('plot'), L = gd._fullLayout;
        const t = gd.data.find(d => d.x.length > 0), r = gd.getBoundingClientRect();
        return [r.left + L.margin.l + L.xaxis.l2p(t.x[0]), r.top + L.margin.t + L.yaxis.l2p(t.y[0])]; }""")
    page.mouse.move(x - 20, y - 20)
    page.mouse.move(x, y)
    page.wait_for_selector("#info-id", timeout=10_000)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, help="a report.html written by hpa-zoo report")
    parser.add_argument("--explorer", type=Path, help="an explorer page written by hpa-zoo embed --html")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    browser_path = system_chromium()
    if browser_path is None:
        print("no system Chromium on PATH (install the distribution's chromium package, or set HPA_ZOO_CHROMIUM)",
              file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed: pip install playwright (its browser download is not needed)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, headless=True,
                                     args=["--use-gl=swiftshader", "--enable-webgl", "--ignore-gpu-blocklist"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        if args.report:
            page.goto(args.report.resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(args.out / "report.png"))
            panel = page.locator("img[src^='data:image/png']").nth(0)
            cam = page.locator("img[alt*='Grad-CAM'], img[alt*='fig3'], img[alt*='Fig. 3']")
            if cam.count():
                cam.first.scroll_into_view_if_needed()
                cam.first.screenshot(path=str(args.out / "report_fig3.png"))
            elif panel.count():
                print("no Fig. 3 image in the report (no CAM models?): only report.png", file=sys.stderr)
            print(f"wrote {args.out / 'report.png'}")
        if args.explorer:
            page.goto(args.explorer.resolve().as_uri())
            _hover_a_point(page)
            page.screenshot(path=str(args.out / "explorer.png"))
            print(f"wrote {args.out / 'explorer.png'}")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
