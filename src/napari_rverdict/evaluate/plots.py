"""Figures of an evaluation (predicted against true, per map), drawn with matplotlib's Agg canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_rverdict.evaluate.metrics import EvaluationReport


def plot_predicted_vs_true(report: EvaluationReport, path, max_points: int = 5000, *, overwrite: bool = False
                           ) -> Path:
    """A PNG of predicted vs true scatter plots, one panel per parameter (matplotlib, Agg backend). An existing file
    is refused (InputError, before drawing) unless ``overwrite=True``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg without touching the global backend
    from matplotlib.figure import Figure

    from napari_rverdict.files import atomic_path, check_output_files

    path = Path(path)
    check_output_files([path], overwrite=overwrite, what="plot file")

    names = list(report.rows)
    ncol = min(4, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig = Figure(figsize=(3.2 * ncol, 3.0 * nrow), dpi=100)
    FigureCanvasAgg(fig)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        t, p = report.true[name][:max_points], report.pred[name][:max_points]
        ax.scatter(t, p, s=2, alpha=0.3)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        unit = report.rows[name]["unit"]
        ax.set_title(f"{name} (r = {report.rows[name]['r']:.2f})", fontsize=9)
        ax.set_xlabel(f"true {unit}".strip(), fontsize=8)
        ax.set_ylabel(f"predicted {unit}".strip(), fontsize=8)
    fig.suptitle(report.description, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path
