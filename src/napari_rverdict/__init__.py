"""napari-rverdict: prostate VERDICT and relaxation-VERDICT maps with synthetic q-space learning.

Layers, each importing only those before it: ``physics`` (protocols, compartments, models) ← ``data`` (priors,
noise, synthetic sets, phantom, NIfTI) ← ``learn`` (networks, training, bundles, uncertainty) ← ``maps`` (volume
inference, NLLS, comparisons) and ``evaluate`` (metrics, CRLB, posterior, protocol report) ← ``cli`` and
``_napari``. The core (everything but ``_napari``) imports neither napari nor Qt.
"""

from importlib import import_module

__version__ = "0.1.0"

# Entry points are imported on first use, so `import napari_rverdict` (and the command line's parser) does not
# import torch.
_LAZY = {
    "Protocol": "physics.protocol", "get_model": "physics.models", "simulate": "data.synth",
    "load_bundle": "learn.bundle", "TrainConfig": "learn.config", "train": "learn.train",
    "load_dwi": "data.dwi", "predict_volume": "maps.predict", "fit_volume": "maps.nlls",
    "fit_self_supervised": "maps.self_supervised",
    "evaluate": "evaluate.metrics",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"napari_rverdict.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
