"""The build's stages, declared once and in order: the flow, the runner, the tests and the benchmarks all run
this list. Adding a stage is one module implementing :class:`pipeline.core.harness.Stage` and one entry in
:mod:`.registry`.

``STAGES`` and ``stage_named`` are loaded on first use, so that a process which needs one stage's modules (a
download worker child importing ``pipeline.stages.download.job``) does not import every stage's libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.stages.registry import STAGES, stage_named

__all__ = ["STAGES", "stage_named"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.registry"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
