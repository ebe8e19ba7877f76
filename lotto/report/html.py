"""What `lotto compare --out DIR` writes: the frame, the tables, the figures and `report.html`.

- `compare.parquet`: every metrics row of the runs with the differing config keys as columns;
- `runs.csv` / `runs.md`: the runs, their status and differing config;
- `<section>.csv` (numbers: mean, `_std`, `_lo`/`_hi`, `seeds`) and `<section>.md` (as printed);
- `<section>.png` and `<section>.svg`: the command's figure;
- `report.html`: all of it in one self-contained page (figures inlined as PNG data URIs), which
  opens in a browser without a server.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lotto.files import replace_atomically as _atomic
from lotto.report.aggregate import Comparison, Section, parquet_safe
from lotto.report.plots import save

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .note { color: #a05000; } code { background: #f4f4f4; }
"""


def markdown(frame: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    def esc(v: object) -> str:
        text = "" if v is None or (isinstance(v, float) and v != v) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(esc(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_report(out: Path, cmp: Comparison, sections: list[Section],
                 figures: dict[str, Figure | None], runs: pd.DataFrame) -> list[Path]:
    """Write everything under `out`; returns the files written."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    frame = parquet_safe(cmp.frame)
    _atomic(out / "compare.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    written.append(out / "compare.parquet")
    _atomic(out / "runs.csv", lambda tmp: runs.to_csv(tmp, index=False))
    _write_text(out / "runs.md", markdown(runs))
    written += [out / "runs.csv", out / "runs.md"]
    images: dict[str, str] = {}
    for sec in sections:
        _atomic(out / f"{sec.name}.csv", lambda tmp, t=sec.table: t.to_csv(tmp, index=False))
        _write_text(out / f"{sec.name}.md", f"{sec.title}\n\n{markdown(sec.shown)}")
        written += [out / f"{sec.name}.csv", out / f"{sec.name}.md"]
        fig = figures.get(sec.name)
        if fig is not None:
            written += save(fig, [out / f"{sec.name}.png", out / f"{sec.name}.svg"])
            images[sec.name] = base64.b64encode((out / f"{sec.name}.png").read_bytes()).decode()
    _write_text(out / "report.html", page(cmp, sections, images, runs))
    written.append(out / "report.html")
    return written


def page(cmp: Comparison, sections: list[Section], images: dict[str, str],
         runs: pd.DataFrame) -> str:
    e = html.escape
    names = ", ".join(cmp.id(r) for r in cmp.runs)
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
        f"<title>lotto compare: {e(names)}</title><style>{CSS}</style></head><body>",
        f"<h1>lotto compare: {len(cmp.runs)} runs ({e(', '.join(cmp.commands))})</h1>",
        f"<p>Written {e(time.strftime('%Y-%m-%d %H:%M %Z'))}. Mean ± std over seeds, "
        "[95% Student-t interval of the mean] with 3 seeds or more (n: each table's seeds or "
        "runs column). "
        "Every row is in <code>compare.parquet</code>.</p>",
        "<h2>Runs</h2>", runs.to_html(index=False, escape=True, na_rep="-"),
    ]
    if cmp.by:
        parts.append(f"<p>Grouped by {e(', '.join(cmp.by))}.</p>")
    if cmp.notes:
        parts.append("<h2>Left out</h2><ul>" + "".join(
            f"<li class='note'>{e(n)}</li>" for n in cmp.notes) + "</ul>")
    for sec in sections:
        parts.append(f"<h2>{e(sec.name)}</h2><p>{e(sec.title)}</p>")
        if sec.name in images:
            parts.append(f"<img alt='{e(sec.name)} figure' "
                         f"src='data:image/png;base64,{images[sec.name]}'>")
        parts.append(sec.shown.to_html(index=False, escape=True, na_rep="-"))
        parts.append(f"<p>Numbers: <code>{e(sec.name)}.csv</code>.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
