"""Metric sinks: ``RUN_DIR/metrics.jsonl`` (one object per step with a ``step`` key), TensorBoard
event files (tensorboardX) and a console progress bar (tqdm). In a multi-process job only process
0 writes (the metrics are global, the same in every process)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import jax


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN/inf become strings so the file stays strict JSON."""
    value = float(value) if hasattr(value, "__float__") and not isinstance(value, (bool, int)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends per-step metrics to JSONL and TensorBoard. `truncate_after(step)` drops lines of
    steps later than `step` (used on resume, so replayed steps are not logged twice).

    `enabled`: None (default) writes in process 0 only (every process of a single-process job is
    process 0); False writes nothing.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, enabled: Optional[bool] = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops the JSONL lines of steps later than `step` (and a torn last line), atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash
        tmp = self.path.with_name(self.path.name + ".tmp")  # a crash mid-rewrite must not lose the log
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one record ``{"step": step, **metrics}`` (NaN/inf as strings) and its scalars to TensorBoard."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in sorted(metrics.items())}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer (the JSONL file is closed after every write)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``RUN_DIR/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
