"""The build's stages in order (see :mod:`pipeline.stages`: import ``STAGES`` from there)."""

from __future__ import annotations

from pipeline.core.harness import Stage
from pipeline.stages.crawl import CrawlPartsStage, CrawlStage
from pipeline.stages.dedup.caption import CaptionDedupStage
from pipeline.stages.dedup.decontaminate import DecontaminateStage
from pipeline.stages.dedup.exact import ExactDedupStage
from pipeline.stages.dedup.image import ImageDedupStage
from pipeline.stages.download import DownloadStage
from pipeline.stages.embed import EmbedStage
from pipeline.stages.judge import JudgeStage
from pipeline.stages.mix import MixStage
from pipeline.stages.publish import PublishStage
from pipeline.stages.sample import SampleStage

# Sources in many files are crawled a file per unit, then joined per source;
# embed follows download shard by shard; the dedup stages then run in the order their drops depend on (each
# leaves out what an earlier one dropped): exact, caption, image; decontamination compares every embedded row.
_BEFORE_JUDGE: tuple[Stage, ...] = (
    CrawlPartsStage(),
    CrawlStage(),
    DownloadStage(),
    EmbedStage(),
    ExactDedupStage(),
    CaptionDedupStage(),
    ImageDedupStage(),
    DecontaminateStage(),
)
# The judge writes the manifest; mix fits the mixing law on proxy runs over its kept rows (when the recipe asks);
# the sample stage selects the release from the kept rows, publish packs it.
STAGES: tuple[Stage, ...] = (*_BEFORE_JUDGE, JudgeStage(_BEFORE_JUDGE), MixStage(), SampleStage(), PublishStage())


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")
