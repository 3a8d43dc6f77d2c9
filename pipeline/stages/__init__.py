"""The build's stages, declared once and in order: the flow, the runner, the tests and the benchmarks all run
this list. Adding a stage is one module implementing :class:`pipeline.core.harness.Stage` and one entry here.
"""

from __future__ import annotations

from pipeline.core.harness import Stage
from pipeline.stages.crawl import CrawlStage
from pipeline.stages.download import DownloadStage
from pipeline.stages.embed import EmbedStage
from pipeline.stages.judge import JudgeStage

_BEFORE_JUDGE: tuple[Stage, ...] = (CrawlStage(), DownloadStage(), EmbedStage())
STAGES: tuple[Stage, ...] = (*_BEFORE_JUDGE, JudgeStage(_BEFORE_JUDGE))


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")
