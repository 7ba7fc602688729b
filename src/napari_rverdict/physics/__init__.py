"""The forward models: protocols, compartments, and the VERDICT / rVERDICT signal models (no Qt, no training)."""

from napari_rverdict.physics.compartments import astrosticks, ball, sphere_gpd, sphere_roots
from napari_rverdict.physics.models import MapSpec, ParameterSpec, SignalModel, available_models, get_model
from napari_rverdict.physics.protocol import Protocol, ProtocolError, direction_average
from napari_rverdict.physics.protocol_files import load_protocol, read_fsl, read_scheme, write_fsl, write_scheme

__all__ = [
    "MapSpec", "ParameterSpec", "Protocol", "ProtocolError", "SignalModel", "astrosticks", "available_models", "ball",
    "direction_average", "get_model", "load_protocol", "read_fsl", "read_scheme", "sphere_gpd", "sphere_roots",
    "write_fsl", "write_scheme",
]
