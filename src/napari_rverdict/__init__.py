"""napari-rverdict: prostate VERDICT and relaxation-VERDICT maps with synthetic q-space learning.

The core (this package minus ``_napari``) imports neither napari nor Qt.
"""

from importlib import import_module

from .physics import Protocol, get_model
from .synth import simulate

__version__ = "0.1.0"

# Heavier entry points are imported on first use so `import napari_rverdict` stays light.
_LAZY = {"load_bundle": "bundle", "predict_volume": "predict"}

__all__ = ["Protocol", "get_model", "simulate", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
