"""PRED/index.html: one page to go through a folder of predictions, sorted by what needs a look.

Self-contained: inline CSS and a few lines of plain JavaScript, no server, no network; the
thumbnails are the overlays themselves (`overlays/<case>.png`, relative links), each linking to
the full picture, and each case's name links its viewer page (`viewer/<case>.html`, viewer.py).
One row per case: thumbnail, volumes per class, ABC/2, confidence, flags and the postprocessing
applied. Clicking a column header sorts by it (again: the other way); the page
also sorts on load when its address says so, `index.html?sort=confidence&order=asc`, so a link
can open it "least confident first". Cases without a value (no lesion, no TTA) sort last.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ichseg.fileio import atomic_write_text

REPORT = "index.html"
VIEWER_DIR = "viewer"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
p.note { color: #555; margin: .2em 0 1em; }
table { border-collapse: collapse; }
th, td { padding: .35em .7em; border-bottom: 1px solid #ddd; text-align: right; vertical-align: middle; }
th { background: #f3f3f3; position: sticky; top: 0; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable:hover { background: #e4e4e4; }
th[data-order="asc"]::after { content: " \\25B2"; }
th[data-order="desc"]::after { content: " \\25BC"; }
td.case, th.case { text-align: left; font-weight: 600; }
td.thumb img { height: 120px; display: block; border-radius: 3px; }
td.flags { text-align: left; }
span.flag { display: inline-block; padding: 0 .45em; border-radius: 3px; font-size: .85em;
            background: #fde2e1; color: #a4161a; margin-right: .3em; }
span.flag.quiet { background: #eee; color: #555; }
"""

_SCRIPT = """
(function () {
  var table = document.getElementById("cases");
  var body = table.tBodies[0];
  function value(row, key) {
    var raw = row.querySelector('td[data-key="' + key + '"]').getAttribute("data-value");
    if (raw === "") return null;
    var number = Number(raw);
    return isNaN(number) ? raw : number;
  }
  function sortBy(key, order) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, key), y = value(b, key);
      if (x === null || y === null) return (x === null) - (y === null);
      var c = x < y ? -1 : x > y ? 1 : 0;
      return order === "desc" ? -c : c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      if (cell.getAttribute("data-key") === key) cell.setAttribute("data-order", order);
      else cell.removeAttribute("data-order");
    });
    table.setAttribute("data-sorted", key + " " + order);
  }
  Array.prototype.forEach.call(table.querySelectorAll("th.sortable"), function (cell) {
    cell.addEventListener("click", function () {
      var key = cell.getAttribute("data-key");
      var order = cell.getAttribute("data-order") === "desc" ? "asc" : "desc";
      sortBy(key, order);
    });
  });
  var query = new URLSearchParams(window.location.search);
  if (query.get("sort")) sortBy(query.get("sort"), query.get("order") === "asc" ? "asc" : "desc");
})();
"""


def format_number(value: Any, digits: int) -> tuple[str, str]:
    """(data-value, shown text) of a number that may be missing."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "", "&ndash;"
    return repr(float(value)), f"{float(value):.{digits}f}"


def number_columns(class_names: Mapping[int, str]) -> list[tuple[str, str, int]]:
    """(row key, header, digits) of the sortable number columns."""
    per_class = [(f"{name}_ml", f"{name} mL", 2) for name in class_names.values()] \
        if len(class_names) > 1 else []
    return [("hemorrhage_ml", "hemorrhage mL", 2), *per_class, ("abc2_ml", "ABC/2 mL", 2),
            ("abc2_lesion_ml", "its lesion mL", 2), ("confidence", "confidence", 3),
            ("volume_spread_ml", "TTA spread mL", 2)]


def flags_html(row: Mapping[str, Any]) -> str:
    flags = []
    if row.get("unstable"):
        flags.append('<span class="flag">unstable</span>')
    if row.get("empty"):
        flags.append('<span class="flag quiet">no hemorrhage</span>')
    return "".join(flags)


def case_href(folder: str, case: str, suffix: str) -> str:
    """A relative link to a case's file in `folder`: the case id percent-encoded, so that any
    name (`#`, `?`, `%`, spaces) reaches its own file."""
    return f"{folder}/{quote(case)}{suffix}"


def report_html(rows: Sequence[Mapping[str, Any]], class_names: Mapping[int, str],
                overlays: str = "overlays") -> str:
    """The page for these volumes.csv rows (as predict builds them)."""
    columns = number_columns(class_names)
    header = ['<th class="thumb">overlay</th>', '<th class="case sortable" data-key="case">case</th>']
    header += [f'<th class="sortable" data-key="{key}">{html.escape(title)}</th>'
               for key, title, _ in columns]
    header += ['<th class="flags">flags</th>', "<th>basis</th>"]
    body = []
    for row in rows:
        case = str(row["case"])
        picture = html.escape(case_href(overlays, case, ".png"), quote=True)
        name = html.escape(case)
        if row.get("viewer"):
            name = (f'<a class="viewer" href="{html.escape(case_href(VIEWER_DIR, case, ".html"), quote=True)}"'
                    f' title="scroll through every slice">{name}</a>')
        cells = [f'<td class="thumb"><a href="{picture}"><img src="{picture}" '
                 f'alt="overlay of {html.escape(case)}" loading="lazy"></a></td>',
                 f'<td class="case" data-key="case" data-value="{html.escape(case, quote=True)}">'
                 f'{name}</td>']
        for key, _, digits in columns:
            data, shown = format_number(row.get(key), digits)
            cells.append(f'<td data-key="{key}" data-value="{data}">{shown}</td>')
        cells.append(f'<td class="flags">{flags_html(row)}</td>')
        cells.append(f'<td class="flags">{html.escape(str(row.get("confidence_basis") or ""))}</td>')
        body.append(f'<tr data-case="{html.escape(case, quote=True)}">{"".join(cells)}</tr>')
    applied = sorted({str(row.get("postprocessing") or "none") for row in rows})
    note = (f"{len(rows)} case(s). Postprocessing applied: {html.escape(', '.join(applied))}. "
            "Click a case's name to scroll through it in the viewer, a column to sort; ABC/2 is the bedside estimate of the largest "
            "intraparenchymal lesion (any lesion for a binary model), beside that lesion's "
            "voxel volume; confidence is the agreement of the test-time-augmentation passes, or "
            "the mean probability over the prediction without them.")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>ichseg predictions</title>"
            f"<style>{_STYLE}</style></head><body>"
            f"<h1>ichseg predictions</h1><p class=\"note\">{note}</p>"
            f"<table id=\"cases\"><thead><tr>{''.join(header)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            f"<script>{_SCRIPT}</script></body></html>\n")


def write_report(out_dir: str | Path, rows: Sequence[Mapping[str, Any]],
                 class_names: Mapping[int, str]) -> Path:
    """Write (atomically) OUT/index.html for the cases done so far; return its path."""
    return atomic_write_text(Path(out_dir) / REPORT, report_html(rows, class_names))
