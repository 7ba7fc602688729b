"""The Explore dock's drawings on plain matplotlib axes (no Qt here, so the redraw benchmark runs headless).

:class:`CurveArtists` draws signal against b: per series the total (solid, markers at the measured b), each
compartment's contribution (intracellular dashed, EES dotted, vascular dash-dot) for one series or all, an optional
Rician noise band, and a voxel's measured (×) and predicted (○) signal. Artists are made once per model/protocol
(:meth:`CurveArtists.setup`) and a slider move only replaces their data (:meth:`CurveArtists.update`); the data
artists are animated and :meth:`CurveArtists.render` blits them over a cached background (axes, ticks, legend),
since drawing text is most of matplotlib's cost. The y range moves in steps of 0.1, so it rarely forces a full draw.
:func:`draw_comparison` draws the what-if bars.
"""

from __future__ import annotations

import numpy as np

from napari_rverdict._napari.mpl_style import BG, FG, style_axes

SERIES_COLORS = ("#5fa8d3", "#f4a259", "#8cb369", "#e63946", "#c77dff", "#ffd166", "#4ecdc4", "#bc4b51")
COMPARTMENT_STYLES = {"f_ic": ("--", "intracellular"), "f_ees": (":", "EES"), "f_vasc": ("-.", "vascular")}
ALL_SERIES = -1


def _legend(ax, handles, **kw):
    leg = ax.legend(handles=handles, fontsize=7, facecolor=BG, edgecolor=FG, framealpha=0.8, **kw)
    for t in leg.get_texts():
        t.set_color(FG)
    return leg


class CurveArtists:
    """Signal-vs-b artists on ``ax``. ``compartments_of``: :data:`ALL_SERIES`, a series index, or None (none)."""

    def __init__(self, ax):
        self.ax = ax
        self.fig = ax.figure
        self.series_lines: list = []
        self.point_lines: list = []
        self.compartment_lines: list[dict] = []
        self.bands: list = []
        self.compartments_of: int | None = ALL_SERIES
        (self.measured,) = ax.plot([], [], "x", color="white", ms=7, mew=1.6, label="voxel: measured", zorder=5,
                                   animated=True)
        (self.predicted,) = ax.plot([], [], "o", mfc="none", mec="#ff4fa3", ms=8, mew=1.5,
                                    label="voxel: predicted from its maps", zorder=5, animated=True)
        self._signature = None
        self._background = None
        self._top = 1.0
        self.fig.canvas.mpl_connect("draw_event", self._on_draw)
        style_axes(self.fig, ax)
        ax.set_xlabel("b (s/mm²)")
        ax.set_ylabel("normalised signal")

    # ------------------------------------------------------------------ structure
    def setup(self, curves) -> None:
        """(Re)make the artists for ``curves``' series (a new model or protocol)."""
        ax = self.ax
        for line in self.series_lines + self.point_lines + [ln for d in self.compartment_lines for ln in d.values()]:
            line.remove()
        self.series_lines, self.point_lines, self.compartment_lines = [], [], []
        self._clear_bands()
        for i, s in enumerate(curves.series):
            c = SERIES_COLORS[i % len(SERIES_COLORS)]
            (line,) = ax.plot([], [], "-", color=c, lw=1.6, label=s.label, zorder=3, animated=True)
            (pts,) = ax.plot([], [], "o", color=c, ms=4, zorder=4, animated=True)
            self.series_lines.append(line)
            self.point_lines.append(pts)
            self.compartment_lines.append({k: ax.plot([], [], ls, color=c, lw=1.0, alpha=0.85, zorder=2,
                                                      animated=True)[0]
                                           for k, (ls, _) in COMPARTMENT_STYLES.items()})
        from matplotlib.lines import Line2D

        # legend proxies: the data artists are animated, and the legend would copy that (and not draw them)
        series = [Line2D([], [], color=ln.get_color(), lw=1.6, label=ln.get_label()) for ln in self.series_lines]
        styles = [Line2D([], [], ls=ls, color=FG, lw=1.0, label=name) for ls, name in COMPARTMENT_STYLES.values()]
        voxel = [Line2D([], [], ls="", marker=a.get_marker(), mfc=a.get_markerfacecolor(), mec=a.get_markeredgecolor(),
                        ms=a.get_markersize(), mew=a.get_markeredgewidth(), label=a.get_label())
                 for a in (self.measured, self.predicted)]
        _legend(ax, series + styles + voxel, loc="upper right", ncol=1)
        b_max = max(float(s.b.max()) for s in curves.series) if curves.series else 1.0
        ax.set_xlim(-0.02 * b_max, 1.04 * b_max if b_max > 0 else 1.0)
        self._signature = self.signature(curves)
        self._background = None

    @staticmethod
    def signature(curves) -> tuple:
        """What decides the artists: the model and the series (a change needs :meth:`setup`)."""
        return (curves.model.name, tuple((s.label, s.b.size) for s in curves.series))

    # ------------------------------------------------------------------ data
    def update(self, curves, band=None) -> None:
        """Put ``curves`` (and ``band``, a NoiseBand or None) into the artists; remake them when needed."""
        if self._signature != self.signature(curves):
            self.setup(curves)
        top = 1.0
        for i, s in enumerate(curves.series):
            self.series_lines[i].set_data(s.b, s.total)
            self.point_lines[i].set_data(curves.b[s.index], curves.total[s.index])
            show = self.compartments_of == ALL_SERIES or self.compartments_of == i
            for k, line in self.compartment_lines[i].items():
                line.set_data(s.b, s.compartments[k]) if show else line.set_data([], [])
            top = max(top, float(s.total.max()))
        self._clear_bands()
        if band is not None:
            for i, (s, (_, low, high)) in enumerate(zip(curves.series, band.series)):
                self.bands.append(self.ax.fill_between(s.b, low, high, color=SERIES_COLORS[i % len(SERIES_COLORS)],
                                                       alpha=0.18, lw=0, zorder=1, animated=True))
                top = max(top, float(high.max()))
        self._top = top
        self._apply_ylim()

    def set_voxel(self, qa) -> None:
        """Overlay a VoxelQA's measured and predicted signal (None clears)."""
        if qa is None:
            self.measured.set_data([], [])
            self.predicted.set_data([], [])
        else:
            self.measured.set_data(qa.b, qa.measured)
            if qa.predicted is None:
                self.predicted.set_data([], [])
            else:
                self.predicted.set_data(qa.b, qa.predicted)
        self._apply_ylim()

    def _apply_ylim(self) -> None:
        top = self._top
        for line in (self.measured, self.predicted):
            y = np.asarray(line.get_ydata(), dtype=float)
            if y.size and np.isfinite(y).any():
                top = max(top, float(np.nanmax(y)))
        new = float(np.ceil(top * 1.04 * 10.0) / 10.0)
        if self.ax.get_ylim() != (0.0, new):
            self.ax.set_ylim(0.0, new)
            self._background = None  # the ticks changed: the background must be drawn again

    # ------------------------------------------------------------------ drawing
    def animated(self) -> list:
        lines = self.series_lines + self.point_lines + [ln for d in self.compartment_lines for ln in d.values()]
        return self.bands + lines + [self.measured, self.predicted]

    def _on_draw(self, event=None) -> None:
        """After a full draw (first show, resize, new axes): keep the background, put the data on top."""
        canvas = self.fig.canvas
        self._background = canvas.copy_from_bbox(self.fig.bbox)
        for artist in self.animated():
            self.ax.draw_artist(artist)

    def render(self) -> None:
        """Show the current data: blit the data artists over the cached background (a full draw when the
        background is stale)."""
        canvas = self.fig.canvas
        if self._background is None:
            canvas.draw()  # fires draw_event → _on_draw
        else:
            canvas.restore_region(self._background)
            for artist in self.animated():
                self.ax.draw_artist(artist)
        canvas.blit(self.fig.bbox)

    def _clear_bands(self) -> None:
        for b in self.bands:
            b.remove()
        self.bands = []


RATIO_CAP = 1.5  # bars above this (cellularity's heavy tail) are cut there and labelled with their value


def draw_comparison(ax, comparison, labels=("starting", "edited")) -> None:
    """Grouped bars per map: Bayes-limit RMSE ÷ prior RMSE (lower: the protocol pins the map down better) for the
    starting (A) and the edited (B) protocol; each B bar is annotated with √CRLB B ÷ A."""
    ax.cla()
    style_axes(ax.figure, ax)
    rows = comparison.rows
    names = list(rows)
    x = np.arange(len(names))
    w = 0.38
    a = np.array([rows[n]["ratio_a"] for n in names], dtype=float)
    b = np.array([rows[n]["ratio_b"] for n in names], dtype=float)
    ax.bar(x - w / 2, np.minimum(a, RATIO_CAP), w, color="#8a8f98", label=labels[0])
    bars = ax.bar(x + w / 2, np.minimum(b, RATIO_CAP), w, color="#5fa8d3", label=labels[1])
    for xi, va, vb in zip(x, a, b):
        for off, v in ((-w / 2, va), (w / 2, vb)):
            if v > RATIO_CAP:
                ax.annotate(f"{v:.3g}↑", (xi + off, RATIO_CAP * 0.9), ha="center", fontsize=6, color=BG,
                            rotation=90)
    for rect, n in zip(bars, names):
        r = rows[n]
        ratio = r["crlb_b"] / r["crlb_a"] if r["crlb_a"] > 0 and np.isfinite(r["crlb_a"]) else float("nan")
        if np.isfinite(ratio):
            ax.annotate(f"{ratio:.2f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=6, color=FG)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("Bayes RMSE / prior RMSE", fontsize=8)
    ax.set_ylim(0, RATIO_CAP * 1.08)
    ax.axhline(1.0, color=FG, lw=0.6, ls=":")
    leg = ax.legend(fontsize=7, facecolor=BG, edgecolor=FG, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2,
                    title="numbers on the bars: √CRLB edited ÷ starting", title_fontsize=6, frameon=False)
    for t in leg.get_texts() + [leg.get_title()]:
        t.set_color(FG)
