"""What the Prefect UI shows of an audit: its progress, the report's headline and a table per
metric, and the comparison with a baseline."""

from __future__ import annotations

import os
import time
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from salaudit.report.compare import Comparison
from salaudit.report.html import Report
from salaudit.report.tables import artifact_rows, headline_table

PROGRESS_SECONDS = 5.0
HEADLINE_NOTE = (
    "Means over samples; ↑ higher is better, ↓ lower is better; * beats its reference "
    "(one-sided paired t-test, Holm-corrected p < 0.05)."
)


class Progress:
    """The progress artifact of an audit's units, updated at most every `every` seconds (one
    API call each), and at the end."""

    def __init__(self, total: int, url: str, every: float = PROGRESS_SECONDS):
        self.total, self.every, self.shown = max(1, total), every, time.monotonic()
        self.id: UUID = create_progress_artifact(
            0.0, key="salaudit-progress", description=f"units of the audit into {url}"
        )

    def update(self, finished: int, final: bool = False) -> None:
        if final or time.monotonic() - self.shown >= self.every:
            update_progress_artifact(self.id, 100.0 * finished / self.total)
            self.shown = time.monotonic()


def report_artifacts(report: Report, url: str) -> None:
    """The headline as markdown and a table per metric."""
    create_markdown_artifact(
        headline_markdown(report), key="salaudit-report", description=f"the audit of {url}"
    )
    for metric, rows in artifact_rows(report.tables).items():
        create_table_artifact(
            rows,
            key=f"salaudit-{metric.replace('_', '-')}",
            description=f"{metric}: per method mean, standard error and paired tests",
        )


def headline_markdown(report: Report) -> str:
    lines = [f"# salaudit audit\n\nReport: `{report.location}`\n"]
    table = headline_table(report.headline)
    if table is not None:
        lines += [table.markdown(), "\n" + HEADLINE_NOTE]
    for section, why in report.missing.items():
        lines.append(f"\n- {section}: {why}")
    return "\n".join(lines)


def comparison_artifact(comparison: Comparison, url: str) -> None:
    create_markdown_artifact(
        comparison.markdown(),
        key="salaudit-comparison",
        description=f"{url} against the baseline {comparison.baseline}",
    )


def flow_run() -> dict[str, Any]:
    """The current flow run's id, name and UI link, for the audit's record: no link where
    the API is a temporary server, gone once the audit ends."""
    from prefect.runtime import flow_run as current

    from salaudit.flows.server import TEMPORARY

    url = None if os.environ.get(TEMPORARY) else current.ui_url
    return {"id": current.id, "name": current.name, "url": url}
