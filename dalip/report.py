"""Where the trainer's numbers go: ``metrics.jsonl`` always; TensorBoard and wandb when asked (``--report-to``).

The flag and its values are open_clip_train's (``--report-to tensorboard,wandb``). TensorBoard event files go to
``<output-dir>/tensorboard`` (``tensorboard --logdir <output-dir>/tensorboard``), wandb's run files under
``<output-dir>/wandb`` (``WANDB_MODE=offline`` works without a network; ``wandb sync`` uploads later). On resume
all three drop what was logged past the checkpoint's step: those steps are about to be run again (the JSONL
lines are rewritten, TensorBoard purges its events, wandb continues the same run id).
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

TARGETS = ("tensorboard", "wandb")


def parse_report_to(value: str | None) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ``("tensorboard", "wandb")``; ``""`` / ``None`` / ``"none"`` -> ``()``."""
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"--report-to: unknown target(s) {unknown}; expected a comma list of {', '.join(TARGETS)}")
    return names


class TrainReport:
    """One place the training loop hands its records to, on the main rank only."""

    def __init__(
        self, out_dir: Path, step: int, report_to: tuple[str, ...] = (), config: dict[str, Any] | None = None,
        wandb_project: str = "dalip",
    ) -> None:  # fmt: skip
        self.jsonl = _open_jsonl(out_dir / "metrics.jsonl", step)
        self.tensorboard = _tensorboard(out_dir / "tensorboard", step) if "tensorboard" in report_to else None
        self.wandb = _wandb(out_dir, config or {}, wandb_project) if "wandb" in report_to else None

    def step(self, step: int, record: dict[str, Any]) -> None:
        """A training step's numbers (loss terms, lr, logit scale, throughput)."""
        self._write({"step": step, **record})
        scalars = {f"train/{k}": v for k, v in record.items() if _is_number(v)}
        if self.tensorboard:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb:
            self.wandb.log(scalars, step=step)

    def event(self, step: int, record: dict[str, Any]) -> None:
        """A non-step record (an epoch's skipped images), shown at the step it happened."""
        self._write(record)
        scalars = {f"data/{k}": v for k, v in record.items() if _is_number(v) and k not in ("epoch", "step")}
        if self.tensorboard:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tensorboard:
            self.tensorboard.close()
        if self.wandb:
            self.wandb.finish()

    def _write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tensorboard:
            self.tensorboard.flush()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _open_jsonl(path: Path, step: int) -> Any:
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in kept) if step else "")
    return path.open("a")


def _tensorboard(folder: Path, step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exn:  # torch's module needs the tensorboard package
        message = f"--report-to tensorboard needs the tensorboard package (pip install tensorboard): {exn}"
        raise RuntimeError(message) from exn
    return SummaryWriter(str(folder), purge_step=step + 1 if step else None)  # events past the checkpoint


def _wandb(out_dir: Path, config: dict[str, Any], project: str) -> Any:
    try:
        import wandb
    except ImportError as exn:
        raise RuntimeError(f"--report-to wandb needs the wandb package (pip install wandb): {exn}") from exn
    id_file = out_dir / "wandb_run_id"  # a resumed run continues the same wandb run
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return wandb.init(project=project, id=run_id, resume="allow", dir=str(out_dir), config=config)
