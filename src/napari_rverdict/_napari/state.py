"""What the three docks of one viewer share: the latest synthetic data set and the current trained model.

The Simulate dock sets :attr:`SessionState.data`, the Train dock reads it and sets :attr:`SessionState.bundle`
(after training or on load), the Maps dock reads the bundle. Each change emits a psygnal signal so the other
docks update their labels. One state per viewer (docks of two viewers never mix).
"""

from __future__ import annotations

import weakref

from psygnal import Signal


class SessionState:
    """Shared, evented state of one viewer's VERDICT docks."""

    data_changed = Signal(object)  # SyntheticData | None
    bundle_changed = Signal(object)  # Bundle | None

    def __init__(self) -> None:
        self._data = None
        self._bundle = None
        self.bundle_path = None  # where the current bundle was loaded from / saved to, if anywhere
        self.bundle_origin = None  # "sample" for the sample's pretrained model (docks keep their own settings)

    @property
    def data(self):
        """The latest :class:`~napari_rverdict.data.synth.SyntheticData` made by the Simulate dock (or None)."""
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = value
        self.data_changed.emit(value)

    @property
    def bundle(self):
        """The trained model the Maps dock uses (a :class:`~napari_rverdict.learn.bundle.Bundle`, or None)."""
        return self._bundle

    @bundle.setter
    def bundle(self, value) -> None:
        self.set_bundle(value)

    def set_bundle(self, value, origin: str | None = None, path=None) -> None:
        """Set the current model, saying where it came from (``origin``, ``path``) before the docks hear of it."""
        self._bundle = value
        self.bundle_origin = origin
        self.bundle_path = None if path is None else str(path)
        self.bundle_changed.emit(value)


_STATES: dict[int, tuple[weakref.ref, SessionState]] = {}


def _unwrap(viewer):
    """The real viewer behind napari's PublicOnlyProxy (each dock gets its own proxy object)."""
    return getattr(viewer, "__wrapped__", viewer)


def get_state(viewer) -> SessionState:
    """The :class:`SessionState` shared by the docks of ``viewer`` (created on first use; held weakly)."""
    real = _unwrap(viewer)
    key = id(real)
    entry = _STATES.get(key)
    if entry is None or entry[0]() is not real:
        for k, (ref, _) in list(_STATES.items()):  # forget viewers that are gone
            if ref() is None:
                _STATES.pop(k, None)
        entry = (weakref.ref(real), SessionState())
        _STATES[key] = entry
    return entry[1]


def model_label(name: str) -> str:
    """'rverdict' → 'rVERDICT', 'verdict' → 'classic VERDICT'."""
    return {"rverdict": "rVERDICT", "verdict": "classic VERDICT"}.get(str(name), str(name))
