"""The forward models: protocols, compartments, and the VERDICT / rVERDICT signal models (no Qt, no training)."""

from .compartments import astrosticks, ball, sphere_gpd, sphere_roots
from .models import MapSpec, ParameterSpec, SignalModel, available_models, get_model
from .protocol import Protocol, ProtocolError, direction_average, load_protocol, read_fsl, read_scheme, write_fsl, write_scheme

__all__ = [
    "MapSpec", "ParameterSpec", "Protocol", "ProtocolError", "SignalModel", "astrosticks", "available_models", "ball",
    "direction_average", "get_model", "load_protocol", "read_fsl", "read_scheme", "sphere_gpd", "sphere_roots",
    "write_fsl", "write_scheme",
]
