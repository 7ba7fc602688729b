"""The forward models: protocols, compartments, and the VERDICT / rVERDICT signal models (no Qt, no training).

Names are imported on first use: protocols and their files need only NumPy, so the command line's parser (and a
bad-input message) does not wait for torch, which the compartments and models import.
"""

from importlib import import_module

_WHERE = {
    "astrosticks": "compartments", "ball": "compartments", "sphere_gpd": "compartments", "sphere_roots": "compartments",
    "MapSpec": "models", "ParameterSpec": "models", "SignalModel": "models", "available_models": "models",
    "get_model": "models",
    "Protocol": "protocol", "ProtocolError": "protocol", "direction_average": "protocol",
    "load_protocol": "protocol_files", "read_fsl": "protocol_files", "read_scheme": "protocol_files",
    "write_fsl": "protocol_files", "write_scheme": "protocol_files",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
