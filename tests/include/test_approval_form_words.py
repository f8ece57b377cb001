"""The approval form for a person (`include.approval.render_body`): what a re-run with nothing to load says, and where
to look as links, never as paths on the server."""

from __future__ import annotations

from include.approval import ApprovalSummary, render_body
from include.identifiers import OPTION_APPROVE, OPTION_APPROVE_WITH_FLAGGED
from include.sync_settings import SyncSettings


def test_a_rerun_with_nothing_to_load_says_so_instead_of_loading_zero_lines() -> None:
    summary = ApprovalSummary(month="2026-10", run_id="2026-10__manual__2026-12-07T10:00:00+00:00")
    summary.by_status = {"applied": 12}
    body = render_body(summary, SyncSettings())
    assert f"**{OPTION_APPROVE}**: nothing to load: no line is proposed" in body
    assert "closes the month without writing to Autotask" in body
    assert f"**{OPTION_APPROVE_WITH_FLAGGED}**: nothing to load either" in body
    assert "loads these 0" not in body and "loads the 0" not in body


def test_where_to_look_links_the_files_and_names_no_server_path() -> None:
    summary = ApprovalSummary(month="2026-10", run_id="run-1", report_dir="/tmp/x/var/data_docs/2026-10/run-1")
    without_address = render_body(summary, SyncSettings())
    assert "/tmp/" not in without_address and "Billing months" in without_address
    summary.files_link = "/billing/files/2026-10/run-1"
    summary.months_link = "/billing/months"
    linked = render_body(summary, SyncSettings())
    assert "/tmp/" not in linked
    assert "Data Docs): not written yet" in linked  # no quality result recorded: no link to a missing page
    assert "[the Billing months page](/billing/months)" in linked
