"""PNG figures of a comparison, drawn from summary.json alone (matplotlib, Agg, dpi 100).

- accuracy.png: held-out accuracy over steps per label: mean over seeds, band = min..max over seeds;
- clip_fractions.png: policy/clip_frac_low and policy/clip_frac_high over steps, mean over seeds;
- entropy.png: old-policy token entropy (old_entropy_mean) over steps, mean over seeds;
- response_length.png: mean response length over steps, mean over seeds.

Failed runs contribute the steps they logged; a non-finite value is left out of the mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sspo_jax.tools.compare.summary import as_float

DPI = 100
FIGURES = {
    "accuracy": "accuracy.png",
    "clip_fractions": "clip_fractions.png",
    "entropy": "entropy.png",
    "response_length": "response_length.png",
}


def curve(per_seed: list[dict[str, Any]], key: str, where: str = "series") -> tuple[list[int], list[float],
                                                                                    list[float], list[float]]:
    """(steps, mean, min, max) over seeds of `key` in each seed's `where` series, at every step
    that at least one seed logged a finite value for."""
    values: dict[int, list[float]] = {}
    for rec in per_seed:
        s = rec.get(where) or {}
        for step, v in zip(s.get("step", []), s.get(key, [])):
            f = as_float(v)
            if f is not None and f == f and abs(f) != float("inf"):
                values.setdefault(int(step), []).append(f)
    steps = sorted(values)
    return (steps, [sum(values[s]) / len(values[s]) for s in steps], [min(values[s]) for s in steps],
            [max(values[s]) for s in steps])


def _axes(title: str, ylabel: str, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), constrained_layout=True, squeeze=False)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig, axes[0]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_all(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Writes the four figures into `out_dir`; returns {figure: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = summary["labels"]
    colors = _colors(len(labels))
    key = summary["spec"]["accuracy_key"]
    n_seeds = len(summary["spec"]["seeds"])
    paths = {}

    fig, (ax,) = _axes(f"held-out {key}: mean over {n_seeds} seed(s), band = min..max", "accuracy")
    for lab, color in zip(labels, colors):
        steps, mid, lo, hi = curve(lab["per_seed"], key, "evals")
        if steps:
            ax.plot(steps, mid, marker="o", markersize=3, color=color, label=lab["label"])
            ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
    thr = summary["spec"].get("accuracy_threshold")
    if thr is not None:
        ax.axhline(thr, color="gray", linestyle=":", linewidth=1, label=f"threshold {thr:g}")
    _legend(ax)
    paths["accuracy"] = _save(fig, out_dir / FIGURES["accuracy"])

    fig, axes = _axes("token clip fractions, mean over seeds", "fraction of valid tokens", ncols=2)
    for ax, (metric, side) in zip(axes, (("policy/clip_frac_low", "low (A < 0)"),
                                         ("policy/clip_frac_high", "high (A > 0)"))):
        for lab, color in zip(labels, colors):
            steps, mid, _, _ = curve(lab["per_seed"], metric)
            if steps:
                ax.plot(steps, mid, color=color, label=lab["label"])
        ax.set_title(f"clipped {side}", fontsize=10)
        _legend(ax)
    paths["clip_fractions"] = _save(fig, out_dir / FIGURES["clip_fractions"])

    for name, metric, title, ylabel in (
            ("entropy", "old_entropy_mean", "old-policy token entropy, mean over seeds", "nats"),
            ("response_length", "response_length/mean", "mean response length, mean over seeds", "tokens")):
        fig, (ax,) = _axes(title, ylabel)
        for lab, color in zip(labels, colors):
            steps, mid, _, _ = curve(lab["per_seed"], metric)
            if steps:
                ax.plot(steps, mid, color=color, label=lab["label"])
        _legend(ax)
        paths[name] = _save(fig, out_dir / FIGURES[name])
    return paths


def _legend(ax, loc: Optional[str] = None) -> None:
    if ax.lines:
        ax.legend(fontsize=8, loc=loc or "best")
