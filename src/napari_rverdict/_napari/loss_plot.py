"""Small matplotlib canvases embedded in the docks: live loss curves and example signals against b."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QSizePolicy, QVBoxLayout, QWidget

from napari_rverdict._napari.mpl_style import BG, FG, style_axes


class _Canvas(FigureCanvasQTAgg):
    """A figure canvas whose constrained layout runs only after a resize or :meth:`relayout`: live redraws keep the
    axes where they are. (Laying out costs more than half of a draw, and a draw competes for the GIL with the
    training thread: 0.7 s per live redraw measured on a loaded 2-core machine, 0.3 s without the layout.)"""

    def __init__(self, height: float = 2.4):
        self.figure = Figure(figsize=(4.0, height), dpi=90, layout="constrained")
        super().__init__(self.figure)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(int(height * 70))
        self._layout_due = True

    def relayout(self) -> None:
        """Lay the axes out again at the next draw (new labels, scale or data range)."""
        self._layout_due = True

    def resizeEvent(self, event):  # noqa: N802 - Qt API
        self._layout_due = True
        super().resizeEvent(event)

    def draw(self):
        if self._layout_due:
            self.figure.set_layout_engine("constrained")
            super().draw()
            self.figure.set_layout_engine("none")  # keep the positions just computed
            self._layout_due = False
        else:
            super().draw()


class LossPlot(QWidget):
    """Train and validation loss against epoch, with a best-epoch marker and a log-scale toggle.

    Train loss arrives with every batch report (x = fractional epoch), validation loss once per epoch, so the
    curves move during an epoch too. Redraws are coalesced to at most one every 150 ms.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.canvas = _Canvas()
        self.ax = self.canvas.figure.add_subplot(111)
        style_axes(self.canvas.figure, self.ax)
        self.log_scale = QCheckBox("log scale")
        self.log_scale.setToolTip("a logarithmic loss axis: late improvements stay visible")
        self.log_scale.setChecked(True)
        self.log_scale.toggled.connect(self._apply_scale)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        layout.addWidget(self.log_scale)
        (self._train_line,) = self.ax.plot([], [], color="#5fa8d3", lw=1.2, label="train")
        (self._val_line,) = self.ax.plot([], [], "o-", color="#f4a259", ms=3, lw=1.2, label="validation")
        (self._best,) = self.ax.plot([], [], "*", color="#e63946", ms=12, label="best")
        self._best_vline = self.ax.axvline(np.nan, color="#e63946", lw=0.8, ls="--")
        self.ax.set_xlabel("epoch")
        self.ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        self.ax.set_ylabel("MSE (scaled)")
        leg = self.ax.legend(fontsize=7, loc="upper right", facecolor=BG, edgecolor=FG)
        for t in leg.get_texts():
            t.set_color(FG)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self._redraw)
        self.clear()
        self._apply_scale(True)

    # ------------------------------------------------------------------ data
    def clear(self) -> None:
        self.train_x: list[float] = []
        self.train_y: list[float] = []
        self.val_x: list[float] = []
        self.val_y: list[float] = []
        self.best_epoch: int | None = None
        self._schedule()

    def add_train(self, epoch: float, loss: float) -> None:
        if loss is not None and np.isfinite(loss):
            self.train_x.append(float(epoch))
            self.train_y.append(float(loss))
            self._schedule()

    def add_val(self, epoch: float, loss: float) -> None:
        if loss is not None and np.isfinite(loss):
            self.val_x.append(float(epoch))
            self.val_y.append(float(loss))
            self._schedule()

    def set_best(self, epoch: int | None) -> None:
        self.best_epoch = epoch
        self._schedule()

    def set_history(self, history: dict | None) -> None:
        """Show a finished run's curves (``history`` = {'train_loss': [...], 'val_loss': [...], 'best_epoch': k}).

        Epochs are 1-based; ``best_epoch`` is taken as 1-based too.
        """
        self.clear()
        if not history:
            return
        for i, v in enumerate(history.get("train_loss") or [], start=1):
            self.add_train(i, v)
        for i, v in enumerate(history.get("val_loss") or [], start=1):
            self.add_val(i, v)
        best = history.get("best_epoch")
        self.set_best(int(best) if best is not None else None)

    def set_ylabel(self, text: str) -> None:
        """Name the loss axis (the loss the run uses)."""
        if self.ax.get_ylabel() != text:
            self.ax.set_ylabel(text)
            self.canvas.relayout()
            self._schedule()

    # ------------------------------------------------------------------ drawing
    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Draw now (tests and screenshots)."""
        self._timer.stop()
        self._redraw()

    def _apply_scale(self, _=None) -> None:
        if not any(y > 0 for y in self.train_y + self.val_y):
            self.ax.set_ylim(1e-3, 1.0)  # log scale needs a positive range even before any data
        self.ax.set_yscale("log" if self.log_scale.isChecked() else "linear")
        self._schedule()

    def _redraw(self) -> None:
        self._train_line.set_data(self.train_x, self.train_y)
        self._val_line.set_data(self.val_x, self.val_y)
        if self.best_epoch is not None and self.val_x:
            xs = np.asarray(self.val_x)
            hit = np.flatnonzero(np.isclose(xs, self.best_epoch))
            y = self.val_y[hit[0]] if hit.size else min(self.val_y)
            self._best.set_data([self.best_epoch], [y])
            self._best_vline.set_xdata([self.best_epoch, self.best_epoch])
        else:
            self._best.set_data([], [])
            self._best_vline.set_xdata([np.nan, np.nan])
        ys = [y for y in self.train_y + self.val_y if y > 0]
        xs = self.train_x + self.val_x
        if xs and ys:
            self.ax.set_xlim(0, max(max(xs), 1.0) * 1.02)
            lo, hi = min(ys), max(ys)
            if self.log_scale.isChecked():
                self.ax.set_ylim(lo / 1.3, hi * 1.3)
            else:
                pad = 0.05 * (hi - lo or hi or 1.0)
                self.ax.set_ylim(max(0.0, lo - pad), hi + pad)
        else:
            self.ax.set_xlim(0, 1)
            self.ax.set_ylim(1e-3, 1.0) if self.log_scale.isChecked() else self.ax.set_ylim(0.0, 1.0)
        key = (self.log_scale.isChecked(), *(int(np.floor(np.log10(max(v, 1e-30)))) for v in self.ax.get_ylim()),
               int(np.log10(max(self.ax.get_xlim()[1], 1.0))))
        if key != getattr(self, "_layout_key", None):  # other tick labels: lay the axes out again
            self._layout_key = key
            self.canvas.relayout()
        self.canvas.draw_idle()


class SignalPlot(QWidget):
    """A few example signals against b (one marker style per series, so each series' b = 0 is visible)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.canvas = _Canvas(height=2.0)
        self.ax = self.canvas.figure.add_subplot(111)
        style_axes(self.canvas.figure, self.ax)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax.set_xlabel("b (s/mm²)")
        self.ax.set_ylabel("normalised signal")
        self.canvas.draw_idle()

    def show_signals(self, b, signals, series=None, title: str = "") -> None:
        """``b`` (n_meas,) s/mm²; ``signals`` (k, n_meas); ``series`` (n_meas,) ints: lines join a series."""
        self.canvas.relayout()
        self.ax.cla()
        style_axes(self.canvas.figure, self.ax)
        b = np.asarray(b, dtype=float)
        series = np.zeros(b.size, dtype=int) if series is None else np.asarray(series)
        colors = ["#5fa8d3", "#f4a259", "#8cb369", "#e63946", "#bc4b51", "#c77dff"]
        for k, s in enumerate(np.atleast_2d(signals)):
            c = colors[k % len(colors)]
            for sid in np.unique(series):
                idx = np.flatnonzero(series == sid)
                idx = idx[np.argsort(b[idx])]
                self.ax.plot(b[idx], s[idx], "o-", color=c, ms=3, lw=0.8, alpha=0.9)
        self.ax.set_xlabel("b (s/mm²)")
        self.ax.set_ylabel("normalised signal")
        if title:
            self.ax.set_title(title, fontsize=8)
        self.canvas.draw_idle()
