"""Small pieces the docks share: a message line, layer pickers, a thread-safe progress relay, a lifetime guard."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFrame,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_rverdict.threads import using_torch_threads

ERROR_STYLE = "color: #ff6b6b;"
OK_STYLE = "color: #8cd17d;"
WARN_STYLE = "color: #f4a259;"
INFO_STYLE = ""


class Message(QLabel):
    """A wrapped one-paragraph message: info, ok (green), warning (orange) or error (red)."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.kind = "info"

    def info(self, text: str) -> None:
        self.kind = "info"
        self.setStyleSheet(INFO_STYLE)
        self.setText(text)

    def ok(self, text: str) -> None:
        self.kind = "ok"
        self.setStyleSheet(OK_STYLE)
        self.setText(text)

    def warn(self, text: str) -> None:
        """Something the user should know, that did not stop the work (orange)."""
        self.kind = "warning"
        self.setStyleSheet(WARN_STYLE)
        self.setText(text)

    def error(self, text: str) -> None:
        self.kind = "error"
        self.setStyleSheet(ERROR_STYLE)
        self.setText(text)


def hint(text: str) -> QLabel:
    """A grey explanatory line at the top of a dock."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #9aa0a6; font-size: 11px;")
    return label


def separator() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    line.setFrameShadow(QFrame.Shadow.Sunken)
    return line


class LayerWatch:
    """Calls ``on_change(renamed)`` whenever the viewer's layer list changes (a layer inserted, removed or moved:
    ``renamed`` is {}) or a layer is renamed (``renamed`` is {old name: new name}), so a picker that shows layer
    names can follow a rename and keep its choice.

    Every layer's ``events.name`` is followed: connected for the layers present now and on insert, disconnected
    on removal; :meth:`close` drops every connection (the owner calls it when it goes away). The one place the
    docks' layer pickers learn of layer changes."""

    LIST_EVENTS = ("inserted", "removed", "reordered")

    def __init__(self, viewer, on_change: Callable[[dict], None]):
        self.layers = getattr(viewer, "__wrapped__", viewer).layers  # the real list behind napari's proxy
        self.on_change = on_change
        self._names: dict[int, tuple] = {}  # id(layer) → (layer, its last known name)
        self._closed = False
        for layer in self.layers:
            self._follow(layer)
        for name in self.LIST_EVENTS:
            getattr(self.layers.events, name).connect(self._list_changed)

    def _follow(self, layer) -> None:
        if id(layer) not in self._names:
            self._names[id(layer)] = (layer, layer.name)
            layer.events.name.connect(self._renamed)

    def _unfollow(self, layer) -> None:
        if self._names.pop(id(layer), None) is not None:
            try:
                layer.events.name.disconnect(self._renamed)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _list_changed(self, event) -> None:
        if event.type == "inserted":
            self._follow(event.value)
        elif event.type == "removed":
            self._unfollow(event.value)
        self.on_change({})

    def _renamed(self, event) -> None:
        layer = event.source
        old = self._names.get(id(layer), (layer, None))[1]
        self._names[id(layer)] = (layer, layer.name)
        self.on_change({old: layer.name} if old is not None and old != layer.name else {})

    def close(self) -> None:
        """Stop following the layer list and every layer's name."""
        if self._closed:
            return
        self._closed = True
        for name in self.LIST_EVENTS:
            try:
                getattr(self.layers.events, name).disconnect(self._list_changed)
            except Exception:  # noqa: BLE001 - the viewer may be gone already
                pass
        for layer, _name in list(self._names.values()):
            self._unfollow(layer)


def show_bad_input(message, text: str) -> None:
    """A bad input: ``text`` in the dock's :class:`Message` line and as a napari notification; nothing else
    changes."""
    from napari.utils.notifications import show_warning

    message.error(text)
    show_warning(text)


def find_data(combo: QComboBox, data) -> int:
    """Index of the entry whose data is ``data`` (a tuple such as ``("layer", name)``), or -1: QComboBox.findData
    cannot compare Python tuples."""
    if data is None:
        return -1
    for i in range(combo.count()):
        item = combo.itemData(i)
        if item is not None and tuple(item) == tuple(data):
            return i
    return -1


def fill_protocol_sources(combo: QComboBox, layers, file_protocol, renamed: dict | None = None) -> bool:
    """List where a protocol can come from in ``combo``: the INNOVATE preset ``("preset", "innovate")``, every image
    layer with a protocol ``("layer", name)``, the file chosen (``file_protocol``: (path, protocol) or None)
    ``("file", path)``; keep the current choice (across a rename: ``renamed`` {old: new name}), else the preset.
    Signals are blocked while filling; returns whether the choice changed (its entry is gone)."""
    import napari

    from napari_rverdict._napari.reader import layer_protocol

    current = combo.currentData()
    if current is not None and current[0] == "layer":
        current = ("layer", (renamed or {}).get(current[1], current[1]))
    combo.blockSignals(True)
    combo.clear()
    combo.addItem("INNOVATE preset (10 direction-averaged)", ("preset", "innovate"))
    for layer in reversed(list(layers)):  # top of the layer list first, as napari shows it
        if isinstance(layer, napari.layers.Image) and layer_protocol(layer) is not None:
            combo.addItem(f"from layer '{layer.name}'", ("layer", layer.name))
    if file_protocol is not None:
        combo.addItem(f"file {file_protocol[0]}", ("file", file_protocol[0]))
    index = find_data(combo, current)
    combo.setCurrentIndex(max(index, 0))
    combo.blockSignals(False)
    return current is not None and index < 0


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers that pass ``accept``, kept in sync with the layer list and with the
    layers' names (:class:`LayerWatch`: a renamed layer stays chosen under its new name).

    ``none_text`` adds a first entry meaning "no layer". :meth:`layer` returns the chosen layer object.
    """

    def __init__(self, viewer, accept: Callable, none_text: str | None = None, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.accept = accept
        self.none_text = none_text
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        watch = self.layer_watch = LayerWatch(viewer, self.refresh)
        self.destroyed.connect(lambda *_: watch.close())
        self.refresh()

    def refresh(self, renamed: dict | None = None) -> None:
        """List the layers again; ``renamed`` ({old: new name}) carries the choice over a rename."""
        current = self.currentText()
        current = (renamed or {}).get(current, current)
        self.blockSignals(True)
        self.clear()
        if self.none_text is not None:
            self.addItem(self.none_text)
        for layer in reversed(list(self.viewer.layers)):  # top of the layer list first, as napari shows it
            try:
                ok = self.accept(layer)
            except Exception:  # noqa: BLE001 - a picker must never break on an odd layer
                ok = False
            if ok:
                self.addItem(layer.name)
        idx = self.findText(current)
        if idx >= 0:
            self.setCurrentIndex(idx)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        name = self.currentText()
        if not name or name == self.none_text or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def select(self, name: str) -> None:
        idx = self.findText(name)
        if idx >= 0:
            self.setCurrentIndex(idx)


class JobStopped(Exception):
    """Raised inside a worker (by :func:`stoppable`) when its dock asked it to stop: a quiet end, not an error."""


def stoppable(callback: Callable, stop_event) -> Callable:
    """Wrap a worker's progress callback so that the worker stops (raises :class:`JobStopped`) at its next
    progress report once ``stop_event`` is set; the callback itself is not called after that."""

    def report(*args):
        if stop_event.is_set():
            raise JobStopped("stopped")
        return callback(*args)

    return report


class Relay(QObject):
    """Carries values from a worker thread to the GUI thread (Qt queues the signal across threads)."""

    value = Signal(object)


def release_worker(dock, signals=("returned", "errored", "finished", "warned")) -> None:
    """End a dock's worker run: close its napari progress bar (``dock._pbar``), forget ``dock.worker`` and drop
    every connection the worker holds to the dock, and delete its progress relay (``dock._relay``, if any)."""
    if getattr(dock, "_pbar", None) is not None:
        dock._pbar.close()
        dock._pbar = None
    worker, dock.worker = dock.worker, None
    for sig in signals:
        try:
            getattr(worker, sig).disconnect()
        except (TypeError, RuntimeError, AttributeError):
            pass
    relay = getattr(dock, "_relay", None)
    if relay is not None:
        try:
            relay.value.disconnect()
        except (TypeError, RuntimeError):
            pass
        relay.deleteLater()
        dock._relay = None


class LifetimeGuard(QObject):
    """Calls ``on_end`` once when ``widget`` leaves its dock or its viewer window closes.

    napari's "close dock" un-parents the widget (no destroy), and closing the viewer closes the main window: both
    are watched, plus the widget's own destruction.
    """

    def __init__(self, widget: QWidget, on_end: Callable[[], None]):
        super().__init__(widget)
        self._widget = widget
        self._on_end = on_end
        self._fired = False
        self._window = None
        self._closing = False
        widget.installEventFilter(self)

    def fire(self) -> None:
        if not self._fired:
            self._fired = True
            self._on_end()

    def _watch_window(self) -> None:
        try:
            window = self._widget.window()
        except RuntimeError:
            return
        if window is not self._window and window is not self._widget:
            if self._window is not None:
                try:
                    self._window.removeEventFilter(self)
                except RuntimeError:
                    pass
            self._window = window
            window.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        et = event.type()
        if obj is self._widget:
            if et in (QEvent.Type.ParentChange, QEvent.Type.Show):
                try:
                    parent = self._widget.parent()
                except RuntimeError:
                    parent = None
                if et == QEvent.Type.ParentChange and parent is None:
                    self.fire()
                else:
                    self._watch_window()
        elif obj is self._window:
            if et == QEvent.Type.Close:  # the close may still be refused (confirm dialog): wait for the hide
                self._closing = True
                QTimer.singleShot(0, self._reset_closing)
            elif et == QEvent.Type.Hide and self._closing:
                self.fire()
        return False

    def _reset_closing(self) -> None:
        self._closing = False


def add_run_row(layout, text: str, tooltip: str = ""):
    """A dock's primary button, a 0–100 % progress bar and its message line, added to ``layout`` in that order."""
    button, progress, message = QPushButton(text), QProgressBar(), Message()
    button.setToolTip(tooltip)
    progress.setRange(0, 100)
    progress.setValue(0)
    for widget in (button, progress, message):
        layout.addWidget(widget)
    return button, progress, message


# ---------------------------------------------------------------------- layout: docks that fit a laptop screen
def scroll_layout(dock: QWidget) -> QVBoxLayout:
    """Give ``dock`` one vertical QScrollArea (as cellpose-napari and micro-sam do) and return the layout of the
    scrolled content: a dock never forces the main window taller than the screen, tabbed or stacked.
    ``dock.scroll_area`` is the area (tests scroll the primary button into view with ``ensureWidgetVisible``)."""
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(dock)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    content = QWidget()
    area.setWidget(content)
    outer.addWidget(area)
    dock.scroll_area = area
    dock.setMinimumHeight(160)
    layout = QVBoxLayout(content)
    layout.setContentsMargins(6, 4, 6, 4)
    layout.setSpacing(4)
    return layout


def collapsible(layout, title: str, widgets=(), expanded: bool = False, tooltip: str = "") -> QCollapsible:
    """A superqt QCollapsible section titled ``title`` holding ``widgets`` (or layouts), added to ``layout``."""
    section = QCollapsible(title, expandedIcon="▾", collapsedIcon="▸")
    section.setDuration(0)  # no animation: tests and slow remote desktops see the final size at once
    section.setToolTip(tooltip)
    for w in widgets:
        if isinstance(w, QWidget):
            section.addWidget(w)
        else:  # a layout: wrap it
            holder = QWidget()
            holder.setLayout(w)
            section.addWidget(holder)
    section.layout().setContentsMargins(0, 0, 0, 0)
    if expanded:
        section.expand(animate=False)
    else:
        section.collapse(animate=False)
    layout.addWidget(section)
    return section


def compact(dock: QWidget, min_chars: int = 8) -> None:
    """Let every combo box of ``dock`` shrink to ``min_chars`` characters (long entries elide; the full text is in
    the drop-down), so a dock is never wider than its scroll area."""
    for combo in dock.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(min_chars)
        combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)


# ---------------------------------------------------------------------- defaults sized to the device
QUICK_CPU = {"n": 20_000, "epochs": 8, "patience": 4}  # first maps in about a minute on a laptop CPU
PAPER_GPU = {"n": 100_000, "epochs": 100, "patience": 20}  # the seed paper's setting (minutes on a GPU)


def device_preset() -> tuple[str, dict]:
    """(one line for the docks, {n, epochs, patience}): the paper's setting when CUDA is available, else a quick
    CPU setting. The one place the docks' training-size defaults come from."""
    import torch

    if torch.cuda.is_available():
        return ("GPU: the paper's setting (100,000 signals, ≤ 100 epochs).", dict(PAPER_GPU))
    return ("CPU: a quick setting (20,000 signals, 8 epochs, ~1 min); the paper's 100,000 signals and ≤ 100 "
            "epochs suit a GPU.", dict(QUICK_CPU))


def with_napari_threads(fn):
    """``fn`` (a worker function or generator) run with the torch threads a napari worker should use
    (:func:`napari_rverdict.threads.torch_threads` ``("napari")``: the CPUs other processes are not keeping busy, less
    one for the GUI's event loop), restored afterwards. torch's count is process-wide, so it holds for the run."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            with using_torch_threads("napari"):
                return (yield from fn(*args, **kwargs))
        return generator

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with using_torch_threads("napari"):
            return fn(*args, **kwargs)
    return run


def format_number(v, spec: str = ".3g") -> str:
    """A table cell: ``v`` formatted with ``spec``, '–' when it is missing or not finite."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return format(v, spec) if math.isfinite(v) else "–"
