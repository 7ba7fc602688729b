"""matplotlib in napari's dark theme, for every plot the docks draw (no Qt here, so headless benchmarks can use it)."""

from __future__ import annotations

BG = "#262930"  # napari's dark theme
FG = "#d6d0ce"


def style_axes(fig, ax) -> None:
    """napari's dark colours on a figure and its axes."""
    fig.patch.set_facecolor(BG)
    ax.set_facecolor(BG)
    for spine in ax.spines.values():
        spine.set_color(FG)
    ax.tick_params(colors=FG, labelsize=8)
    ax.xaxis.label.set_color(FG)
    ax.yaxis.label.set_color(FG)
    ax.title.set_color(FG)


__all__ = ["BG", "FG", "style_axes"]
