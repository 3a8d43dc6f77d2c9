"""What the build shows in Prefect's UI: per-stage tables of counts, progress bars and the build's summary.

Artifacts are created from the flow run (so they attach to it) from the records the harness writes; keys are
``plantmix-<build>-<stage>`` so each build's history of a stage lines up across runs.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from pipeline.core.harness import Build, Stage, read_marker, stage_report
from pipeline.core.io import exists, join, open_input, read_json
from pipeline.query.summary import EXAMPLE_QUERY


def artifact_key(build: Build, what: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"plantmix-{build.recipe.name}-{what}".lower()).strip("-")


class Progress:
    """A progress artifact for one stage's units, updated as units finish."""

    def __init__(self, build: Build, stage: Stage, total: int) -> None:
        self.total, self.done, self.stage = total, 0, stage
        self.id: UUID | None = None
        if total:
            self.id = create_progress_artifact(
                0.0, key=artifact_key(build, f"{stage.name}-progress"), description=self._text()
            )

    def _text(self) -> str:
        return f"{self.stage.name}: {self.done} of {self.total} units finished"

    def advance(self) -> None:
        self.done += 1
        if self.id is not None:
            update_progress_artifact(self.id, 100.0 * self.done / self.total, description=self._text())


def publish_stage(build: Build, stage: Stage) -> dict[str, Any]:
    """A table of rows per status over the stage's finished units, and what its global step counted."""
    report = stage_report(stage, build)
    reduced = (read_marker(stage.dir(build), "_reduce") or {}).get("stats") or {}
    table = [{"status": status, "rows": n} for status, n in report["status"].items()]
    if report["units"]:
        table.append({"status": "(all)", "rows": report["rows"]})
    table += [{"status": key, "rows": value} for key, value in sorted(reduced.items()) if isinstance(value, int)]
    if table and stage.name != "judge":  # the judge publishes its own tables (publish_summary)
        create_table_artifact(
            table,
            key=artifact_key(build, stage.name),
            description=f"**{stage.name}**: {report['units']} units, {report['rows']} rows, per status; global step",
        )
    return report


def publish_summary(build: Build, summary: dict[str, Any]) -> None:
    """The judged build: rows per status and drop reason, and a Markdown card with where to query it."""
    table = [
        {"domain": domain, "drop_reason": reason, "rows": n}
        for domain, reasons in summary["by_rule"].items()
        for reason, n in reasons.items()
    ]
    create_table_artifact(
        table, key=artifact_key(build, "judge"), description="rows per domain and drop reason (first failing rule)"
    )
    by_status = " + ".join(f"{n} {status}" for status, n in summary["by_status"].items())
    markdown = "\n".join(
        [
            f"# {build.recipe.name}",
            "",
            f"**{summary['candidates']}** candidates = {by_status}; **{summary['kept']}** kept.",
            "",
            f"Manifest: `{build.layout.manifest}`",
            "",
            "Query it:",
            "",
            "```",
            f'plantmix sql "{EXAMPLE_QUERY}" --build {build.layout.root}',
            "```",
            "",
            "| source | candidates | per status |",
            "|---|---|---|",
            *(
                f"| {source} | {sum(counts.values())} | {', '.join(f'{s} {n}' for s, n in counts.items())} |"
                for source, counts in summary["by_source"].items()
            ),
        ]
    )
    create_markdown_artifact(markdown, key=artifact_key(build, "summary"), description="build summary")


def publish_release(build: Build) -> dict[str, Any] | None:
    """The release card as a Markdown artifact and the release's counts per domain and source as a table."""
    release_json = join(build.layout.release, "release.json")
    if not exists(release_json):
        return None
    release = read_json(release_json)
    counts = release["counts"]
    table = [{"by": "domain", "name": d, "target": release["target"].get(d), "released": n}
             for d, n in counts["by_domain"].items()]  # fmt: skip
    table += [{"by": "source", "name": s, "target": None, "released": n} for s, n in counts["by_source"].items()]
    table += [
        {"by": "release", "name": k, "target": None, "released": counts[k]} for k in ("packed", "url_only", "shards")
    ]
    create_table_artifact(
        table, key=artifact_key(build, "release"), description="released samples per domain and source"
    )
    with open_input(join(build.layout.release, "RELEASE.md"), "r") as f:
        card = f.read()
    header = f"Release folder: `{build.layout.release}` (plots under `plots/`)\n\n"
    create_markdown_artifact(header + card, key=artifact_key(build, "release-card"), description="release card")
    return release
