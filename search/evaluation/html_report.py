"""report.html: the evaluation report as one self-contained page a browser opens offline.

Rendered from ``report.md`` (Python-Markdown, the library TensorBoard already
depends on), with every picture embedded as a ``data:`` URI, the Grad-CAM
gallery links turned into the pictures themselves, and, once the model is
exported, its model card. Nothing in the page points outside the file.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import markdown

HTML_FILE = "report.html"
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; }
figure { margin: 1rem 0; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }
"""
_LINKED_PICTURE = re.compile(r'<a href="([^"]+\.png)">([^<]*)</a>')
_SOURCE = re.compile(r'src="([^"]+)"')


def write_report_html(report_dir, card: dict | None = None) -> Path:
    """Writes ``report_dir/report.html`` from ``report_dir/report.md`` and its pictures.

    Args:
        report_dir: The folder `evaluate` wrote (``report.md`` and its PNGs).
        card: The exported model's card (``model_card.json``), shown at the end.

    Raises:
        FileNotFoundError: A picture the report names is missing.
    """
    report_dir = Path(report_dir)
    text = (report_dir / "report.md").read_text(encoding="utf-8")
    title = text.splitlines()[0].lstrip("# ").strip()
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    body = _LINKED_PICTURE.sub(lambda m: f'<figure><img alt="{m[2]}" src="{m[1]}"><figcaption>{m[2]}'
                                         "</figcaption></figure>", body)
    body = _SOURCE.sub(lambda m: f'src="{_data_uri(report_dir / html.unescape(m[1]))}"', body)
    if card is not None:
        body += _card_section(card)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
    path = report_dir / HTML_FILE
    path.write_text(page, encoding="utf-8")
    return path


def refresh(layout) -> Path | None:
    """Re-renders the run's ``report.html`` after its ``report.md`` changed (with the card if exported)."""
    if not (layout.report / "report.md").is_file():
        return None
    card_file = layout.export / "model_card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else None
    return write_report_html(layout.report, card)


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}[path.suffix.lower()]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _card_section(card: dict) -> str:
    thresholds = card.get("thresholds") or {}
    rows = [("Findings" if thresholds else "Classes", ", ".join(card["class_names"])),
            *([("Thresholds (chosen on validation)", ", ".join(f"{n} {t:.4f}" for n, t in thresholds.items()))]
              if thresholds else []),
            ("Input", f"{card['input']['shape']} {card['input']['dtype']}: {card['input']['meaning']}"),
            ("Output", card["output"]["meaning"]),
            ("Preprocessing inside the model", str(card["preprocessing"]["inside_model"])),
            *((f"Load ({name})", how) for name, how in card["loading"].items())]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    full = html.escape(json.dumps(card, indent=2))
    return (f"\n<h2>Model card</h2>\n<table>{table}</table>\n"
            f"<details><summary>model_card.json</summary><pre>{full}</pre></details>\n")
