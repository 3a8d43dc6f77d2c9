"""Open checkpoint files without letting them run code: ``torch.load(weights_only=True)`` plus a tiny allowlist.

Every checkpoint this project reads (DALIP resume and evaluation, the embed stage's local CLIP weights) goes
through :func:`load_checkpoint_safely`. Beyond tensors and plain containers, DALIP checkpoints hold each rank's
``np.random.get_state()`` (an ``ndarray`` of ``uint32``), so exactly the globals that pickle needs are allowed,
and only for the duration of the load. Anything else a file asks to import or call is refused with
:class:`UnsafeCheckpoint`, before it runs.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

# What np.random.get_state()'s MT19937 key array pickles to, taken from numpy itself so the names match the
# installed numpy (numpy._core.multiarray._reconstruct on numpy 2, numpy.core... on numpy 1).
_MT19937_KEY = np.zeros(1, dtype=np.uint32)
NUMPY_RNG_GLOBALS = (_MT19937_KEY.__reduce__()[0], np.ndarray, np.dtype, type(_MT19937_KEY.dtype))

# torch's safe_globals context edits one process-wide set; the lock keeps concurrent loads from
# removing each other's entries mid-load.
_allowlist_lock = threading.Lock()

_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


class UnsafeCheckpoint(ValueError):
    """The file is not a checkpoint we can open without running code from it."""


def load_checkpoint_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with the numpy RNG allowlist; unsafe files raise ``UnsafeCheckpoint``."""
    try:
        with _allowlist_lock:
            # Entries someone allowed process-wide stay allowed: the context removes what it added on exit.
            missing = [g for g in NUMPY_RNG_GLOBALS if g not in torch.serialization.get_safe_globals()]
            with torch.serialization.safe_globals(missing):
                return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(
            f"{path} is not a safe checkpoint: {_reason(err)} "
            "(only tensors, plain containers and numpy RNG states are loaded; nothing in the file was run)"
        ) from err


def _reason(err: pickle.UnpicklingError) -> str:
    # torch wraps the one useful line ("Unsupported global: GLOBAL posix.system ...") in advice to switch the
    # weights-only mode off, which is exactly what we must not suggest.
    parts = []
    for line in str(err).splitlines():
        line = line.split("WeightsUnpickler error:")[-1].split(" Please use")[0].strip()
        if line and not line.startswith(_TORCH_BOILERPLATE):
            parts.append(line)
    return " ".join(parts) or "the weights-only unpickler refused it"
