"""Device choice, one ``device`` argument end to end: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``,
``"cuda:i"``, ``"mps"`` or a ``torch.device``."""

from __future__ import annotations

import torch

from napari_rverdict.errors import InputError


# ---------------------------------------------------------------------- devices
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` → CUDA if available, then MPS, then CPU; ``"cpu"``, ``"cuda"``, ``"cuda:i"``, ``"mps"`` checked.

    Raises ValueError naming what is available when the requested device is not.
    """
    if isinstance(device, torch.device):
        device = str(device)
    text = str(device or "auto").lower().strip()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"device '{device}' requested but CUDA is not available (torch {torch.__version__}); "
                             "choose the CPU (--device cpu; Python: device='cpu')")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device '{device}' requested but only {n} CUDA device(s) exist (cuda:0..cuda:{n - 1})")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise InputError(f"device '{device}' requested but MPS is not available; use cpu")
        return dev
    raise InputError(f"unsupported device '{device}'; use auto, cpu, cuda, cuda:N or mps")


def accumulation_dtype(device) -> torch.dtype:
    """The dtype sums and float64 work use on ``device``: float64, except on MPS, which has no float64 (a float64
    tensor there, or ``.double()`` of one, raises TypeError). Results leave a device as ``.cpu().double()``, in
    that order, for the same reason."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


CPU_NETWORK_CHUNK = 4096


def network_chunk(device: torch.device, chunk: int) -> int:
    """Voxels per network call on ``device`` for work handed over ``chunk`` voxels at a time.

    On the CPU at most :data:`CPU_NETWORK_CHUNK`: one 128-wide float32 activation of 4,096 voxels is 2 MiB, which
    stays in the cores' caches, where larger calls spill them (``benchmarks/cpu_speed.py`` sweeps it: 16,384 is
    1.1–1.3× slower on a 2-vCPU Zen 3; PERFORMANCE.md: 65,536 is 2.8× slower than 16,384 on a Xeon). On a GPU
    (CUDA, MPS) ``chunk`` itself: larger calls keep it busy.
    """
    return min(chunk, CPU_NETWORK_CHUNK) if torch.device(device).type == "cpu" else chunk


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
