"""Make a GX Data Docs site self-contained: no CDN at run time or view time.

GX renders its pages with Bootstrap, jQuery, bootstrap-table, Font Awesome and vega from public CDNs, a logo
from S3 and a newsletter footer. Reviewers open the reports on locked-down machines without internet, so after
each build `make_offline(site_dir)` rewrites every page of the site:

- every `<link>`, `<script src>`, `<img>`, `<iframe>`/`<source>` pointing off-machine is removed (the GX logo
  becomes a local title linking home), CSS `url(http...)` becomes `none`;
- the GX marketing footer (newsletter) is dropped, other external `<a href>` become plain text;
- inline scripts that need the removed libraries are dropped; the index page's tables (which bootstrap-table
  builds in the browser from a data literal) are rendered as static HTML tables;
- one local stylesheet, `static/offline.css` (from `include/static/data_docs_offline.css`), is linked from
  every page by a relative path, plus a tiny inline script (no network) for "Failed only" and folding.

Every step is idempotent: a page already rewritten (a run's second gate rebuilds the same site) is unchanged.
"""

from __future__ import annotations

import ast
import html
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STYLESHEET_SOURCE = Path(__file__).resolve().parent / "static" / "data_docs_offline.css"
STYLESHEET_PATH = ("static", "offline.css")  # inside the site
_STATE_DIRS = {"_gx"}  # GX state beside the site (JSON), not pages
_SCRIPT_ID = "offline-data-docs-script"
_BRAND = "Data quality report"

_FLAGS = re.DOTALL | re.IGNORECASE
# `http://`, `https://` or protocol-relative `//`: anything that is not a file of the site
_EXTERNAL = r"""\s*["']?\s*(?:https?:)?//"""
_EXTERNAL_ATTR = re.compile(rf"""\b(?:src|href|srcset|poster|data|action)\s*={_EXTERNAL}""", re.IGNORECASE)
_LINK_TAG = re.compile(r"<link\b[^>]*>", _FLAGS)
_SCRIPT_BLOCK = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", _FLAGS)
_VOID_TAG = re.compile(r"<(?:img|source|embed)\b[^>]*>", _FLAGS)
_FRAME_BLOCK = re.compile(r"<(iframe|object|video|audio)\b([^>]*)>.*?</\1\s*>", _FLAGS)
_ANCHOR = re.compile(r"<a\b([^>]*)>(.*?)</a\s*>", _FLAGS)
_FOOTER = re.compile(r"<footer\b[^>]*>.*?</footer\s*>", _FLAGS)
_CSS_URL = re.compile(rf"url\({_EXTERNAL}[^)]*\)", re.IGNORECASE)
_MARKETING = re.compile(r"greatexpectations\.io|newsletter|utm_source", re.IGNORECASE)
# Inline scripts that only drive the CDN libraries (jQuery, bootstrap-table, vega-embed).
_NEEDS_LIBRARIES = re.compile(r"\$\(|\$`|jQuery|bootstrapTable|vegaEmbed")
_BRAND_IMG = re.compile(r"<img\b[^>]*\balt=\"Great Expectations\"[^>]*>", _FLAGS)

# GX's bootstrap_table.j2: `$('#id').bootstrapTable(Object.assign({columns: [...], data: [...], toolbar: '#id-toolbar'},
# {options}));` where columns, data and options are Python reprs of lists/dicts (one line each).
_BOOTSTRAP_TABLE = re.compile(
    r"\$\('#(?P<id>[^']+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*columns:\s*(?P<columns>[^\n]*),\s*\n"
    r"\s*data:\s*(?P<data>[^\n]*),\s*\n\s*toolbar:\s*'[^']*'\s*\},\s*(?P<options>[^\n]*)\n",
)
_PAGE_LINK = re.compile(r"""['"]((?:validations|expectations)/[^'"\\]+\.html)['"]""")

_INLINE_SCRIPT = f"""<script id="{_SCRIPT_ID}">
/* Offline Data Docs (no network): "Failed only" filter and folding of "Show more" blocks, plain DOM. */
function offlineFilter(hide) {{
  document.querySelectorAll(".hide-succeeded-validation-target-child").forEach(function (e) {{
    e.parentElement.hidden = hide;
  }});
  document.querySelectorAll(".hide-succeeded-validation-target").forEach(function (e) {{ e.hidden = hide; }});
  document.querySelectorAll(".hide-succeeded-validations-column-section-target-child").forEach(function (e) {{
    var section = e.parentElement && e.parentElement.parentElement;
    if (!section) return;
    section.hidden = hide;
    if (section.id) document.querySelectorAll('a[href="#' + section.id + '"]').forEach(function (a) {{
      a.hidden = hide;
    }});
  }});
}}
function showAllValidations() {{ offlineFilter(false); }}
function hideSucceededValidations() {{ offlineFilter(true); }}
document.addEventListener("click", function (event) {{
  var link = event.target.closest && event.target.closest('a[data-toggle="collapse"]');
  if (!link) return;
  var target = document.getElementById((link.getAttribute("href") || "").slice(1));
  if (target) {{ event.preventDefault(); target.classList.toggle("offline-collapsed"); }}
}});
</script>
"""


def make_offline(site_dir: Path) -> list[Path]:
    """Rewrite every HTML page of a Data Docs site for offline viewing; returns the pages rewritten."""
    site_dir = Path(site_dir)
    stylesheet = site_dir.joinpath(*STYLESHEET_PATH)
    stylesheet.parent.mkdir(parents=True, exist_ok=True)
    stylesheet.write_text(STYLESHEET_SOURCE.read_text(encoding="utf-8"), encoding="utf-8")
    for css in site_dir.joinpath("static").rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="replace")
        cleaned = _CSS_URL.sub("none", text)
        if cleaned != text:
            css.write_text(cleaned, encoding="utf-8")
    changed = []
    for page in site_pages(site_dir):
        text = page.read_text(encoding="utf-8")
        rewritten = offline_page(text, stylesheet_href(site_dir, page))
        if rewritten != text:
            page.write_text(rewritten, encoding="utf-8")
            changed.append(page)
    log.debug("Data Docs made offline: %d of the pages of %s rewritten", len(changed), site_dir)
    return changed


def site_pages(site_dir: Path) -> Iterable[Path]:
    for page in sorted(Path(site_dir).rglob("*.html")):
        if not _STATE_DIRS.intersection(page.relative_to(site_dir).parts[:-1]):
            yield page


def stylesheet_href(site_dir: Path, page: Path) -> str:
    """The offline stylesheet relative to a page (`static/offline.css`, `../../../../static/offline.css`)."""
    relative = os.path.relpath(Path(site_dir).joinpath(*STYLESHEET_PATH), Path(page).parent)
    return Path(relative).as_posix()


def offline_page(text: str, stylesheet: str) -> str:
    """One page without off-machine references, with the offline stylesheet and script."""
    text = _render_index_tables(text) if "bootstrapTable(" in text else text
    text = _BRAND_IMG.sub(f'<span class="offline-brand">{_BRAND}</span>', text)
    text = _LINK_TAG.sub(lambda match: "" if _is_external(match.group(0)) else match.group(0), text)
    text = _SCRIPT_BLOCK.sub(_keep_script, text)
    text = _VOID_TAG.sub(lambda match: "" if _is_external(match.group(0)) else match.group(0), text)
    text = _FRAME_BLOCK.sub(lambda match: "" if _is_external(match.group(2)) else match.group(0), text)
    text = _FOOTER.sub(lambda match: "" if _MARKETING.search(match.group(0)) else match.group(0), text)
    text = _ANCHOR.sub(_neutralise_anchor, text)
    text = _CSS_URL.sub("none", text)
    text = _mark_failed_rows(text)
    if "offline.css" not in text:
        link = f'<link rel="stylesheet" href="{html.escape(stylesheet)}" data-offline="true">\n'
        text = _insert_before(text, "</head>", link)
    if _SCRIPT_ID not in text:
        text = _insert_before(text, "</body>", _INLINE_SCRIPT)
    return text


# --- tags ---------------------------------------------------------------------------------------------------


def _is_external(tag: str) -> bool:
    return bool(_EXTERNAL_ATTR.search(tag))


def _keep_script(match: re.Match[str]) -> str:
    attributes, body = match.group(1), match.group(2)
    if _is_external(attributes) or (_SCRIPT_ID not in attributes and _NEEDS_LIBRARIES.search(body)):
        return ""
    return match.group(0)


def _neutralise_anchor(match: re.Match[str]) -> str:
    attributes, content = match.group(1), match.group(2)
    if not _is_external(attributes):
        return match.group(0)
    return f'<span class="offline-external">{content}</span>'


def _insert_before(text: str, closing_tag: str, snippet: str) -> str:
    position = text.lower().rfind(closing_tag)
    return text + snippet if position < 0 else text[:position] + snippet + text[position:]


_TR_OPEN = re.compile(r"<tr(\s[^>]*)?>(?=(?:(?!<tr\b|</tr>|<table\b).)*?\bfa-times\b)", _FLAGS)


def _mark_failed_rows(text: str) -> str:
    """Tint table rows whose own cells (not a nested table) show GX's failure icon."""

    def mark(match: re.Match[str]) -> str:
        attributes = match.group(1) or ""
        if "offline-failed" in attributes:
            return match.group(0)
        if re.search(r"\bclass=\"", attributes):
            return "<tr" + re.sub(r'\bclass="', 'class="offline-failed ', attributes, count=1) + ">"
        return f'<tr class="offline-failed"{attributes}>'

    return _TR_OPEN.sub(mark, text)


# --- the index page's tables -------------------------------------------------------------------------------


def _render_index_tables(text: str) -> str:
    """Draw the tables bootstrap-table would build in the browser (the index page) as static HTML."""
    for found in list(_BOOTSTRAP_TABLE.finditer(text)):
        table_id = found.group("id")
        try:
            columns = ast.literal_eval(found.group("columns"))
            rows = ast.literal_eval(found.group("data"))
            options = ast.literal_eval(found.group("options"))
            table = render_table(table_id, columns, rows, options)
        except (ValueError, SyntaxError, TypeError, AttributeError) as error:
            log.warning("Data Docs table %s shown as a list of links: %s", table_id, error)
            links = sorted(set(_PAGE_LINK.findall(found.group("data"))))
            items = "".join(f'<li><a href="{html.escape(link)}">{html.escape(link)}</a></li>' for link in links)
            table = f'<ul id="{html.escape(table_id)}" class="offline-links">{items}</ul>'
        quoted = re.escape(table_id)
        empty = re.compile(rf"""<table\s+id=["']{quoted}["'][^>]*>\s*</table\s*>""", _FLAGS)
        text = empty.sub(lambda _match, table=table: table, text, count=1)
        toolbar = re.compile(rf"""<div\s+id=["']{quoted}-toolbar["'][^>]*>.*?</div\s*>""", _FLAGS)
        text = toolbar.sub("", text, count=1)
    return text


def render_table(
    table_id: str, columns: list[Mapping[str, Any]], rows: list[Mapping[str, Any]], options: Mapping[str, Any]
) -> str:
    """A static HTML table of bootstrap-table `columns`/`data` (cells are GX-rendered HTML already)."""
    sort_field = options.get("sortName")
    if sort_field:
        column = next((column for column in columns if column.get("field") == sort_field), {})
        key = column.get("sortName", sort_field)
        rows = sorted(
            rows,
            key=lambda row: str(row.get(key, "")) if not _is_number(row.get(key)) else row[key],
            reverse=str(options.get("sortOrder", "asc")).lower() == "desc",
        )
    head = "".join(f"<th>{html.escape(str(column.get('title', column.get('field', ''))))}</th>" for column in columns)
    body = []
    for row in rows:
        link = row.get("_table_row_link_path")
        failed = "_validation_success_text" in row and str(row["_validation_success_text"]).lower() != "success"
        cells = []
        for column in columns:
            field = column.get("field", "")
            cell = str(row.get(field, ""))
            if field == "validation_success" and "_validation_success_text" in row:
                text = html.escape(str(row["_validation_success_text"]))
                cell = f'<span class="offline-status">{cell.strip()} {text}</span>'
            if link and "<a " not in cell:
                cell = f'<a href="{html.escape(str(link))}">{cell.strip()}</a>'
            cells.append(f"<td>{cell}</td>")
        row_class = ' class="offline-failed"' if failed else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return (
        f'<table id="{html.escape(table_id)}" class="table table-sm offline-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
