"""PNG curves of a run: reward, accuracy, clip fractions, entropy, response length."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sspo_jax.train.logging_io import read_metrics

PANELS = (
    ("reward", ("reward/mean",)),
    ("accuracy", ("accuracy", "eval/accuracy")),
    ("clip fraction", ("policy/clip_frac_low", "policy/clip_frac_high", "policy/seg_clip_frac_low",
                       "policy/seg_clip_frac_high")),
    ("entropy", ("policy/entropy", "old_entropy_mean")),
    ("response length", ("response_length/mean",)),
    ("policy loss / grad norm", ("policy/loss", "policy/grad_norm")),
)


def plot_run(run_dir: Path, out: Optional[Path] = None) -> Path:
    """Draws the panels from ``RUN_DIR/metrics.jsonl`` into ``RUN_DIR/curves.png`` (or `out`).

    Each panel plots the `PANELS` keys that the run logged, against ``step``; missing keys are
    skipped. Needs matplotlib.

    Returns:
      The path of the PNG written.
    Raises:
      FileNotFoundError: ``metrics.jsonl`` is missing or empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"{Path(run_dir) / 'metrics.jsonl'} is missing or empty: nothing to plot")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for ax, (title, keys) in zip(axes.ravel(), PANELS):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(str(run_dir))
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
