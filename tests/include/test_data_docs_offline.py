"""Data Docs work with no internet: after a real validation run no page loads anything off-machine, every page
links our local stylesheet by a correct relative path, and the GX content (suites, expectations, results,
our names and severities) is all still there."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from include import quality, report_assets
from include.extract import extract_month
from include.quality import validate_charges, validate_plan
from include.warehouse import Warehouse
from sandbox.dataset import build_universe
from tests.bss_sources import ListSource

MONTH = "2026-10"
RUN_ID = "manual__2026-11-01T00:00:00+00:00"
SUITES = ("bss_charges_raw", "charge_lines", "autotask_snapshot", "change_plan")
FAILED = "subscription_quantity_follows_changes"
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its inline scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def parse(page: Path) -> Tags:
    tags = Tags()
    tags.feed(page.read_text(encoding="utf-8"))
    return tags


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both gates of one real run over a month with one failing check (a hold: so failures are rendered too)."""
    work = tmp_path_factory.mktemp("offline_docs")
    universe = build_universe(customers=20, subscriptions_per_customer=3, seed=7)
    records = [dict(record) for record in universe.charges_for_month(MONTH)]
    victim = next(index for index, record in enumerate(records) if record["action"] == "QuantityIncrease")
    records[victim]["subscriptionQuantity"] += 4
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BILLING_DATA_DOCS_DIR", str(work / "data_docs"))
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        warehouse = Warehouse(f"sqlite:///{work / 'warehouse.db'}")
        warehouse.migrate()
        try:
            extract_month(ListSource(records), warehouse, MONTH, RUN_ID)
            charges = validate_charges(warehouse, MONTH, RUN_ID)
            plan = validate_plan(warehouse, MONTH, RUN_ID)
        finally:
            warehouse.dispose()
    assert [failure.name for failure in charges.holds] == [FAILED] and charges.critical == []
    assert plan.data_docs_index == charges.data_docs_index
    return Path(charges.data_docs_index).parent


def pages(site: Path) -> list[Path]:
    found = list(report_assets.site_pages(site))
    assert site / "index.html" in found
    assert any("validations" in page.parts for page in found) and any("expectations" in page.parts for page in found)
    return found


def test_no_page_loads_or_links_anything_off_machine(site: Path) -> None:
    for page in pages(site):
        tags = parse(page)
        for tag, attributes in tags.tags:
            for name in ("src", "href", "srcset", "data", "action", "poster"):
                value = attributes.get(name, "")
                assert not EXTERNAL.match(value), (page.relative_to(site), tag, name, value)
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE), page
        assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", text, re.IGNORECASE), page
        for marketing in ("greatexpectations.io", "newsletter", "utm_source"):
            assert marketing not in text, (page.relative_to(site), marketing)
        for script in tags.scripts:
            assert not re.search(r"\$\(|jQuery|bootstrapTable|vegaEmbed", script), page
    for css in (site / "static").rglob("*.css"):
        assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", css.read_text(encoding="utf-8")), css


def test_every_page_links_the_one_offline_stylesheet_by_a_working_relative_path(site: Path) -> None:
    stylesheet = site / "static" / "offline.css"
    assert stylesheet.is_file()
    css = stylesheet.read_text(encoding="utf-8")
    assert ".collapse" in css and "display: block" in css and "nth-child(even)" in css and "fa-times" in css
    for page in pages(site):
        sheets = [
            attributes["href"]
            for tag, attributes in parse(page).tags
            if tag == "link" and "stylesheet" in attributes.get("rel", "")
        ]
        assert len(sheets) == 1, (page.relative_to(site), sheets)
        assert not sheets[0].startswith("/")
        target = (page.parent / unquote(sheets[0])).resolve()
        assert target == stylesheet.resolve() and target.is_file(), (page.relative_to(site), sheets[0])


def test_local_links_between_pages_still_resolve(site: Path) -> None:
    for page in pages(site):
        for tag, attributes in parse(page).tags:
            href = attributes.get("href", "") if tag == "a" else ""
            if href and not href.startswith("#"):
                path = unquote(urlsplit(href).path)
                assert (page.parent / path).exists(), (page.relative_to(site), href)


def test_pages_keep_the_suites_expectations_and_results(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    for suite in SUITES:
        assert f'href="expectations/{suite}.html"' in index
        assert re.search(rf'href="validations/{suite}/[^"]+\.html"', index), suite
    failed_rows = re.findall(r'<tr class="offline-failed">(.*?)</tr>', index, re.DOTALL)
    assert len(failed_rows) == 1 and "charge_lines" in failed_rows[0] and "Failed" in failed_rows[0]

    for suite in SUITES:
        names = [expectation["meta"]["name"] for expectation in quality.load_suite_definition(suite)["expectations"]]
        suite_page = (site / "expectations" / f"{suite}.html").read_text(encoding="utf-8")
        [validation] = list((site / "validations" / suite).rglob("*.html"))
        result_page = validation.read_text(encoding="utf-8")
        for name in names:
            assert name in suite_page and name in result_page, (suite, name)
        assert suite in result_page
        assert re.search(r"\((?:critical|warning): ", result_page), suite

    lines = next((site / "validations" / "charge_lines").rglob("*.html")).read_text(encoding="utf-8")
    failed = re.findall(r'<tr class="offline-failed"[^>]*>(.*?)</tr>', lines, re.DOTALL)
    assert len(failed) == 1 and f"hold: {FAILED}" in failed[0] and "fa-times" in failed[0]
    assert "unexpected values found" in lines and "Subscription quantity equals the previous total" in lines
    assert 'class="card card-body collapse m-2"' in lines  # shown by offline.css, folded by the inline script


def test_rewriting_is_idempotent_and_depth_aware(site: Path) -> None:
    before = {page: page.read_text(encoding="utf-8") for page in pages(site)}
    assert report_assets.make_offline(site) == []
    assert {page: page.read_text(encoding="utf-8") for page in before} == before
    assert report_assets.stylesheet_href(site, site / "index.html") == "static/offline.css"
    assert (
        report_assets.stylesheet_href(site, site / "a" / "b" / "c" / "d" / "p.html") == "../../../../static/offline.css"
    )


def test_offline_page_removes_cdn_tags_and_neutralises_external_links() -> None:
    page = (
        "<html><head><link rel='stylesheet' href='https://cdn.example/x.css'><link href=//cdn.example/y.css>"
        '<script src="https://code.jquery.com/jquery.js"></script><script>$(".x").hide()</script>'
        "<style>a { background: url('https://s3.example/logo.png') }</style></head><body>"
        '<img src="https://s3.example/a.png" alt="x"><img src="static/local.png">'
        '<a href="https://example.com/docs">docs</a> <a href="../index.html">Home</a>'
        '<footer><a href="https://greatexpectations.io/newsletter">Subscribe</a></footer></body></html>'
    )
    offline = report_assets.offline_page(page, "../static/offline.css")
    assert "//" not in offline.replace("/*", "")
    assert '<span class="offline-external">docs</span>' in offline and '<a href="../index.html">Home</a>' in offline
    assert 'src="static/local.png"' in offline and "Subscribe" not in offline
    assert offline.count('href="../static/offline.css"') == 1 and "url(none" not in offline
    assert report_assets.offline_page(offline, "../static/offline.css") == offline
