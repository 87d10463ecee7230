"""report.html: one self-contained page with every figure and picture, that a browser renders offline."""

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _References(HTMLParser):
    """Every URL-bearing attribute of the page, and the src of every image."""

    def __init__(self):
        super().__init__()
        self.urls, self.images = [], []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster", "action") and value is not None:
                self.urls.append(value)
                if tag == "img" and name == "src":
                    self.images.append(value)


def _parse(path):
    parser = _References()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_html_embeds_every_picture_and_points_nowhere_outside(exported_run):
    page = exported_run / "report" / "report.html"
    refs = _parse(page)
    assert refs.urls and all(url.startswith("data:") for url in refs.urls), refs.urls
    assert "url(" not in page.read_text() and "@import" not in page.read_text()
    sizes = []
    for src in refs.images:
        header, payload = src.split(",", 1)
        assert header == "data:image/png;base64"
        sizes.append(Image.open(io.BytesIO(base64.b64decode(payload))).size)
    # curves, confusion matrix, ROC and one picture per non-empty Grad-CAM gallery
    galleries = sorted((exported_run / "report" / "gradcam").glob("*.png"))
    assert len(refs.images) == 3 + len(galleries) and all(w > 100 and h > 100 for w, h in sizes)


def test_report_html_holds_the_headline_table_and_the_model_card(exported_run):
    text = (exported_run / "report" / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((exported_run / "report" / "metrics.json").read_text())
    lo, hi = metrics["accuracy"]["ci95"]
    assert re.search(rf"<td>Accuracy</td>\s*<td>{metrics['accuracy']['value']:.3f}</td>\s*"
                     rf"<td>\[{lo:.3f}, {hi:.3f}\]</td>", text)
    assert "<h2>Model card</h2>" in text and "safe_mode=True" in text
    for name in metrics["class_names"]:
        assert f"{name} correct" in text or f"{name} incorrect" in text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium)")
def test_report_html_renders_in_headless_chromium_with_every_image_loaded(exported_run, tmp_path):
    page = tmp_path / "report.html"
    probe = ("<script>addEventListener('load', () => { document.body.dataset.check = JSON.stringify({"
             "images: [...document.images].map(i => i.complete && i.naturalWidth > 0),"
             "fetched: performance.getEntriesByType('resource').map(e => e.name)}); });</script>")
    page.write_text((exported_run / "report" / "report.html").read_text().replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-check="([^"]*)"', result.stdout)
    assert found, result.stdout[-2000:]
    check = json.loads(found[1].replace("&quot;", '"'))
    assert check["images"] and all(check["images"]), check
    assert check["fetched"] == []
