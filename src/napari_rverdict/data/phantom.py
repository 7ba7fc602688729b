"""A digital prostate phantom: rVERDICT ground truth → the 20-volume INNOVATE acquisition with Rician noise.

Geometry (in-plane x = left–right, y = posterior → anterior, z = slices; 1.25 × 1.25 × 5 mm voxels by default):
an ellipsoidal gland (≈ 44 × 32 mm in-plane at the default 64 × 64 size, spanning almost all slices) holding an
anterior-central transition zone (TZ); the rest of the gland is the peripheral zone (PZ), thickest posteriorly.
Two ellipsoidal lesions: one in the posterior-left PZ, one in the TZ. Geometry is defined relative to the grid,
so smaller grids (e.g. 24 × 24 × 3 for tests) give the same picture at a coarser scale.

Labels (:data:`LABEL_NAMES`): 0 background, 1 transition zone, 2 peripheral zone, 3 lesion in the PZ,
4 lesion in the TZ. A lesion voxel carries only its lesion label (the zone it sits in is in the name).

Tissue (:data:`REGION_PARAMETERS`, means per region): lesions have higher f_ic and cellularity (f_ic / R³), lower
D_ees, T2 and T1 than normal tissue, as VERDICT / rVERDICT studies report for cancer. Inside every region each
parameter varies smoothly (a low-frequency random field a few per cent of its value; ±0.03 for fractions) and S0
carries a smooth ±10 % coil-sensitivity field around 1000 (raw scanner units). The background is air: Rician
noise of zero signal, outside :attr:`Phantom.mask`.

Noise: Rician on each acquired volume independently, through the same :func:`.noise.scanner_noise` as
:func:`.synth.simulate` (so direction averaging lowers the noise of the diffusion-weighted shells). The noise
reference (:mod:`napari_rverdict.data.noise`): "peak" (default, as the shipped sample was made): σ = (the voxel's
brightest noise-free measurement) / SNR, the background at the median tissue σ; "s0" (as a scanner does it): one
σ = S0_RAW / SNR on every voxel and volume, air included, so SNR varies with S0 and relaxation (gland SNR at the
brightest b = 0 ≈ 0.4–0.6 × the setting).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_rverdict.errors import InputError
from napari_rverdict.physics.protocol import Protocol

VOXEL_SIZE_MM = (1.25, 1.25, 5.0)
S0_RAW = 1000.0  # raw scanner units

PHANTOM_JSON = "phantom.json"  # the phantom's settings and its label names, beside its label image
LABEL_NAMES = {0: "background", 1: "transition zone", 2: "peripheral zone", 3: "lesion (PZ)", 4: "lesion (TZ)"}
NORMAL_LABELS = (1, 2)
LESION_LABELS = (3, 4)

# Region means of the rVERDICT parameters (f_vasc = 1 − f_ic − f_ees). R µm, T2 / T1 ms, D_ees µm²/ms.
REGION_PARAMETERS = {
    1: dict(f_ic=0.30, f_ees=0.52, R=8.0, T2_vasc_ees=320.0, T2_ic=65.0, T1=1800.0, D_ees=1.9),
    2: dict(f_ic=0.22, f_ees=0.66, R=8.5, T2_vasc_ees=480.0, T2_ic=75.0, T1=2000.0, D_ees=2.3),
    3: dict(f_ic=0.58, f_ees=0.30, R=7.0, T2_vasc_ees=220.0, T2_ic=40.0, T1=1500.0, D_ees=1.2),
    4: dict(f_ic=0.52, f_ees=0.34, R=7.5, T2_vasc_ees=240.0, T2_ic=45.0, T1=1550.0, D_ees=1.3),
}
# Amplitude of the smooth within-region variation: absolute for fractions, relative (× value) for the others.
_VARIATION = dict(f_ic=0.03, f_ees=0.03, R=0.06, T2_vasc_ees=0.08, T2_ic=0.08, T1=0.06, D_ees=0.06)

# Ellipsoids in normalised grid coordinates (−1 … 1 across each axis): centre (x, y, z), semi-axes (x, y, z).
_GLAND = ((0.0, 0.0, 0.0), (0.55, 0.40, 0.95))
_TZ = ((0.0, 0.12, 0.0), (0.33, 0.24, 0.80))
_LESION_PZ = ((-0.24, -0.25, 0.0), (0.17, 0.12, 0.70))
_LESION_TZ = ((0.13, 0.16, 0.10), (0.15, 0.12, 0.65))


@dataclass
class Phantom:
    """A simulated prostate acquisition and its ground truth.

    dwi : (x, y, z, 20) float32 raw signals (S0 ≈ 1000).  affine : (4, 4), voxel sizes in mm.
    protocol : the 20-volume INNOVATE protocol (b s/mm², δ Δ TE TR ms).
    labels : (x, y, z) int32, see :data:`LABEL_NAMES` (= :attr:`label_names`).  mask : the gland (bool).
    truth : every rVERDICT map (x, y, z) float32, 0 outside the mask (units as the model's MapSpecs).
    s0 : (x, y, z) float32 S0 (raw units).  snr, seed : the settings it was made with.
    """

    dwi: np.ndarray
    affine: np.ndarray
    protocol: Protocol
    labels: np.ndarray
    mask: np.ndarray
    truth: dict
    s0: np.ndarray
    snr: float
    seed: int | None
    snr_reference: str = "s0"
    sigma: float | None = None
    tissue: str = "anatomy"
    label_names: dict = field(default_factory=lambda: dict(LABEL_NAMES))

    @property
    def shape(self) -> tuple:
        return tuple(self.labels.shape)

    @property
    def lesion_mask(self) -> np.ndarray:
        return np.isin(self.labels, LESION_LABELS)

    @property
    def normal_mask(self) -> np.ndarray:
        return np.isin(self.labels, NORMAL_LABELS)

    def to_dwi(self):
        """The acquisition as an :class:`.io.Dwi` (in memory)."""
        from napari_rverdict.data.dwi import Dwi

        return Dwi.from_array(self.dwi, self.affine, self.protocol, notes=["digital prostate phantom"])


def _grid(shape):
    axes = [(np.arange(n) - (n - 1) / 2.0) / (n / 2.0) for n in shape]
    return np.meshgrid(*axes, indexing="ij")


def _inside(coords, ellipsoid) -> np.ndarray:
    (cx, cy, cz), (ax, ay, az) = ellipsoid
    x, y, z = coords
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0


def _smooth_field(coords, rng: np.random.Generator, n_waves: int = 4) -> np.ndarray:
    """A random low-frequency field with values in about [−1, 1] (sum of a few long-wavelength cosines)."""
    x, y, z = coords
    f = np.zeros_like(x)
    for _ in range(n_waves):
        k = rng.normal(0.0, 1.0, 3) * np.array([1.2, 1.2, 0.6])  # ≤ ~1 cycle across the gland
        f += np.cos(np.pi * (k[0] * x + k[1] * y + k[2] * z) + rng.uniform(0, 2 * np.pi))
    return f / np.sqrt(n_waves / 2.0) / 2.0


def phantom_affine(shape, voxel_size=VOXEL_SIZE_MM) -> np.ndarray:
    """Diagonal affine with ``voxel_size`` (mm) and the grid centred on the world origin."""
    aff = np.diag([*map(float, voxel_size), 1.0])
    aff[:3, 3] = -(np.asarray(shape, dtype=float) - 1) / 2.0 * np.asarray(voxel_size, dtype=float)
    return aff


def make_labels(shape) -> np.ndarray:
    """The phantom's label image (see :data:`LABEL_NAMES`) for a grid of ``shape``."""
    coords = _grid(shape)
    gland = _inside(coords, _GLAND)
    labels = np.zeros(shape, dtype=np.int32)
    labels[gland] = 2
    labels[gland & _inside(coords, _TZ)] = 1
    labels[gland & _inside(coords, _LESION_PZ)] = 3
    labels[gland & _inside(coords, _LESION_TZ)] = 4
    return labels


TISSUES = ("anatomy", "prior")


def _anatomy_parameters(model, labels, coords, rng) -> dict:
    """Each region's mean tissue (:data:`REGION_PARAMETERS`) with a smooth within-region variation, kept in range."""
    shape = labels.shape
    ranges = model.default_ranges()
    params = {k: np.zeros(shape) for k in REGION_PARAMETERS[1]}
    fields = {k: _smooth_field(coords, rng) for k in params}
    for lab, means in REGION_PARAMETERS.items():
        sel = labels == lab
        for k, mean in means.items():
            amp = _VARIATION[k] if k.startswith("f_") else _VARIATION[k] * mean
            params[k][sel] = mean + amp * fields[k][sel]
    for k in ("f_ic", "f_ees"):
        params[k] = np.clip(params[k], 0.02, 0.95)
    over = params["f_ic"] + params["f_ees"] > 0.97  # keep f_vasc ≥ 0.03
    scale = np.where(over, 0.97 / (params["f_ic"] + params["f_ees"]), 1.0)
    params["f_ic"] *= scale
    params["f_ees"] *= scale
    for k in ("R", "T2_vasc_ees", "T2_ic", "T1", "D_ees"):
        lo, hi = ranges[k]
        params[k] = np.clip(params[k], lo, hi)
    return params


def _prior_parameters(model, mask, rng) -> dict:
    """Every gland voxel's parameters drawn independently from the model's default training prior."""
    from napari_rverdict.data.prior import sample_parameters

    drawn = sample_parameters(model, int(mask.sum()), rng=rng)
    params = {}
    for k in REGION_PARAMETERS[1]:
        params[k] = np.zeros(mask.shape)
        params[k][mask] = drawn[k]
    return params


def make_phantom(shape=(64, 64, 8), snr: float = 35.0, seed: int | None = 0,
                 protocol: Protocol | None = None, snr_reference: str = "s0", tissue: str = "anatomy") -> Phantom:
    """Simulate the prostate phantom.

    Parameters
    ----------
    shape : (x, y, z) voxels (each ≥ 8 in-plane and ≥ 1 slice); voxels are 1.25 × 1.25 × 5 mm.
    snr : the SNR setting on ``snr_reference``'s scale, Rician.
    snr_reference : "s0" (default: one σ = S0_RAW / SNR on every volume and in the air, as a scanner makes it and
        as ``simulate`` defines the SNR; :attr:`Phantom.sigma` holds it) or "peak" (σ = the voxel's brightest
        noise-free measurement / SNR, air without signal: this project's convention before "s0").
    seed : reproducible fields and noise.
    protocol : the acquisition (default: the 20-volume INNOVATE, ``Protocol.innovate(direction_averaged=False)``);
        it needs TR (rVERDICT).
    tissue : "anatomy" (default: the regions' tissue, :data:`REGION_PARAMETERS`, varying smoothly) or "prior"
        (a calibration phantom: every gland voxel's parameters drawn independently from the model's default
        training prior, S0 and noise as for "anatomy"). The "prior" truth is spread as a network's training set is,
        so the coverage of its sd maps can be checked against the nominal levels; the anatomical tissue sits near
        the prior's centre, where a Bayesian estimate's errors are smaller than its posterior sd says.
    """
    from napari_rverdict.data.noise import check_snr_reference, reference_sigma, scanner_noise
    from napari_rverdict.data.synth import noise_free_signals
    from napari_rverdict.physics.models import get_model

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape[:2]) < 8 or shape[2] < 1:
        raise InputError(f"phantom shape must be (x, y, z) with x, y ≥ 8 and z ≥ 1, got {shape}")
    if not np.isfinite(snr) or snr <= 0:
        raise InputError(f"snr must be a positive number, got {snr}")
    snr_reference = check_snr_reference(snr_reference)
    if tissue not in TISSUES:
        raise InputError(f"tissue must be one of {', '.join(TISSUES)}, got {tissue!r}")
    protocol = Protocol.innovate(direction_averaged=False) if protocol is None else protocol
    model = get_model("rverdict")
    model.check_protocol(protocol)
    rng = np.random.default_rng(seed)
    coords = _grid(shape)
    labels = make_labels(shape)
    mask = labels > 0
    if not mask.any():  # pragma: no cover - the gland always covers the centre
        raise InputError(f"shape {shape} is too small to hold the gland")

    params = (_anatomy_parameters(model, labels, coords, rng) if tissue == "anatomy"
              else _prior_parameters(model, mask, rng))
    s0 = S0_RAW * (1.0 + 0.1 * _smooth_field(coords, rng, n_waves=2))

    inside = {k: v[mask] for k, v in params.items()}
    inside["S0"] = s0[mask]
    clean = noise_free_signals(model, inside, protocol)
    sigma = reference_sigma(clean, np.full(len(clean), float(snr)), snr_reference, S0_RAW)
    dwi = np.zeros(shape + (len(protocol),), dtype=np.float32)
    dwi[mask] = scanner_noise(clean, sigma, protocol.n_volumes, rng)
    n_bg = int((~mask).sum())
    dwi[~mask] = scanner_noise(np.zeros((n_bg, len(protocol))), float(np.median(sigma)), protocol.n_volumes, rng)

    maps = model.derived_maps({k: v for k, v in params.items()})
    truth = {}
    for name in model.map_names:
        m = np.asarray(maps[name], dtype=np.float32)
        truth[name] = np.where(mask, m, 0.0).astype(np.float32)
    return Phantom(dwi, phantom_affine(shape), protocol, labels, mask, truth,
                   np.where(mask, s0, 0.0).astype(np.float32), float(snr), seed, snr_reference,
                   float(sigma[0, 0]) if snr_reference == "s0" else None, tissue)


def phantom_files(phantom: Phantom, out_dir) -> list[Path]:
    """The paths :func:`save_phantom` writes for ``phantom`` in ``out_dir``."""
    from napari_rverdict.data.dwi import dwi_files

    out = Path(out_dir)
    return [*dwi_files(out / "dwi.nii.gz", phantom.protocol), out / "labels.nii.gz", out / "mask.nii.gz",
            *(out / "truth" / f"{name}.nii.gz" for name in (*phantom.truth, "S0")), out / PHANTOM_JSON]


def save_phantom(phantom: Phantom, out_dir, *, overwrite: bool = False) -> list[Path]:
    """Write the phantom as NIfTI with its protocol and truth, as one set of files (the whole phantom or nothing).
    Existing files (:func:`phantom_files`) are refused, all named in one InputError before anything is written,
    unless ``overwrite=True``; other files in ``out_dir`` are left alone. Returns the paths written.

    ``dwi.nii.gz`` (x, y, z, 20) with ``dwi.bval``, ``dwi.bvec``, ``dwi.delta`` (Δ), ``dwi.smalldel`` (δ),
    ``dwi.te``, ``dwi.tr`` (seconds); ``labels.nii.gz``, ``mask.nii.gz``; ``truth/<map>.nii.gz`` for every
    rVERDICT map and ``truth/S0.nii.gz``; ``phantom.json`` naming the labels and the settings.
    """
    from napari_rverdict.data.dwi import save_dwi
    from napari_rverdict.data.label_files import save_labels
    from napari_rverdict.data.map_files import save_map, save_maps
    from napari_rverdict.files import FileSet, check_output_files, write_text

    out = Path(out_dir)
    check_output_files(phantom_files(phantom, out), overwrite=overwrite)
    with FileSet() as files:  # the whole phantom or nothing
        written = _save_phantom(phantom, out, files, save_dwi, save_labels, save_map, save_maps, write_text,
                                overwrite)
    return written


PHANTOM_FILES = ("dwi.nii.gz", "dwi.bval", "dwi.bvec", "dwi.delta", "dwi.smalldel", "dwi.te", "dwi.tr",
                 "labels.nii.gz", "mask.nii.gz", "truth", PHANTOM_JSON)


def _save_phantom(phantom, out, files, save_dwi, save_labels, save_map, save_maps, write_text,
                  overwrite: bool) -> list[Path]:
    ow = {"overwrite": overwrite, "fileset": files}  # each writer checks its own files again: a net, not the check
    written = save_dwi(phantom.dwi, phantom.affine, out / "dwi.nii.gz", phantom.protocol, **ow)
    written.append(save_labels(phantom.labels, out / "labels.nii.gz", phantom.affine,
                               "labels: " + ", ".join(f"{k} {v}" for k, v in phantom.label_names.items()), **ow))
    written.append(save_labels(phantom.mask, out / "mask.nii.gz", phantom.affine, "mask: prostate gland", **ow))
    written += save_maps(phantom.truth, out / "truth", phantom.affine, model="rverdict", **ow)
    written.append(save_map(phantom.s0, out / "truth" / "S0.nii.gz", phantom.affine, "S0", "a.u.", **ow))
    meta = {
        "description": "napari-rverdict digital prostate phantom (rVERDICT forward model, INNOVATE acquisition)",
        "labels": {str(k): v for k, v in phantom.label_names.items()},
        "lesion_labels": list(LESION_LABELS),
        "normal_labels": list(NORMAL_LABELS),
        "shape": list(phantom.shape),
        "voxel_size_mm": [float(v) for v in np.sqrt((phantom.affine[:3, :3] ** 2).sum(0))],
        "snr": phantom.snr,
        "seed": phantom.seed,
        "snr_reference": phantom.snr_reference,
        "noise": ("Rician on each volume, sigma = brightest noise-free measurement of the voxel / snr; background: "
                  "zero signal" if phantom.snr_reference == "peak" else
                  f"Rician on each volume, one sigma = {S0_RAW:g} / snr = {phantom.sigma:g} everywhere (air too)"),
        "tissue": phantom.tissue,
        **({"region_parameters": {LABEL_NAMES[k]: v for k, v in REGION_PARAMETERS.items()}}
           if phantom.tissue == "anatomy" else
           {"tissue_note": "every gland voxel's parameters drawn independently from the rVERDICT training prior"}),
        "units": {"R": "um", "T1": "ms", "T2_vasc_ees": "ms", "T2_ic": "ms", "D_ees": "um^2/ms",
                  "cellularity": "um^-3", "S0": "raw scanner units"},
        "regenerate": f"rverdict phantom --out DIR --snr {phantom.snr:g} --seed {phantom.seed} "
                      f"--shape {' '.join(str(s) for s in phantom.shape)}"
                      + f" --snr-reference {phantom.snr_reference}"
                      + ("" if phantom.tissue == "anatomy" else f" --tissue {phantom.tissue}"),
    }
    written.append(write_text(out / PHANTOM_JSON, json.dumps(meta, indent=2) + "\n", files))
    return written


@dataclass
class SavedPhantom:
    """A phantom read back from disk: the Dwi (20 volumes, protocol from the sidecars), labels, mask, truth."""

    dwi: object
    labels: np.ndarray
    mask: np.ndarray
    truth: dict
    label_names: dict


def load_phantom(directory) -> SavedPhantom:
    """Read a directory written by :func:`save_phantom` (e.g. ``sample_data/phantom``)."""
    from napari_rverdict.data.dwi import load_dwi
    from napari_rverdict.data.label_files import load_labels, load_mask
    from napari_rverdict.data.map_files import load_maps

    d = Path(directory)
    if not (d / "dwi.nii.gz").exists():
        raise InputError(f"{d} holds no phantom (dwi.nii.gz missing)")
    dwi = load_dwi(d / "dwi.nii.gz")
    labels = load_labels(d / "labels.nii.gz", dwi)
    mask = load_mask(d / "mask.nii.gz", dwi)
    truth = load_maps(d / "truth")
    return SavedPhantom(dwi, labels, mask, truth, label_names_beside(d / "labels.nii.gz") or dict(LABEL_NAMES))


def label_names_file(labels_path) -> Path:
    """Where the names of a label image's labels are read from: the ``phantom.json`` beside it."""
    return Path(labels_path).parent / PHANTOM_JSON


def label_names_beside(labels_path) -> dict[int, str] | None:
    """{label: name} from the ``phantom.json`` beside a label image (as :func:`save_phantom` writes it), or None
    where there is none, it names no labels or it cannot be read (names are optional: callers fall back to their
    own, e.g. "label N")."""
    try:
        text = label_names_file(labels_path).read_text(encoding="utf-8")
        names = {int(k): str(v) for k, v in json.loads(text)["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, not JSON, not {label: name}
        return None
    return names or None


def sample_data_dir() -> Path | None:
    """The shipped phantom (``<repo>/sample_data/phantom``) when running from a source checkout, else None."""
    here = Path(__file__).resolve()
    for parent in here.parents[:4]:
        candidate = parent / "sample_data" / "phantom"
        if (candidate / "dwi.nii.gz").exists():
            return candidate
    return None
