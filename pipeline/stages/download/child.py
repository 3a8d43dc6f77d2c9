"""The download worker child's entry point: :func:`.job.run_job`, imported without torch.

Only a download worker child (:mod:`pipeline.core.workers`, ``JOB_HANDLER``) imports this module. Nothing the
child runs uses torch, but img2dataset's writer imports webdataset, which imports torch for its DataLoader
classes unless torch is absent (it has fallbacks for that, ``webdataset.pytorch``): 2 s of each worker's ~4 s
start-up. Marking torch absent in this process (``sys.modules["torch"] = None``, Python's documented way to
make an import fail) skips it; anything that did need torch here would fail loudly with ModuleNotFoundError.
"""

from __future__ import annotations

import sys

if "torch" not in sys.modules:
    sys.modules["torch"] = None  # type: ignore[assignment]

from pipeline.stages.download.job import run_job  # noqa: E402 - after torch is marked absent

__all__ = ["run_job"]
