"""Model bundles: a trained network with everything needed to use it, saved as one ``.pt`` file.

A bundle file is ``torch.save`` of a dict of plain Python types plus the network's ``state_dict``::

    {"format": "napari-rverdict-bundle", "version": 1, "meta": {...}, "state_dict": {...}}

so it loads with ``torch.load(weights_only=True)`` (no pickled code is executed). ``meta`` holds the signal model
name, the protocol (``Protocol.to_dict()``), the training ranges, SNR setting and its ``"snr_reference"``
("s0" or "peak", :mod:`napari_rverdict.data.noise`; a bundle saved without it is "peak"), ``"noise_match"`` (the
:class:`.noise.MatchedSnr` of a DWI the noise was matched to, or null), fraction sampler, network name and
hyperparameters, the normalisation, seed, training history and configuration, package and torch versions, target
names and creation time; for a network trained with uncertainty also ``"uncertainty": true``, ``"sd_scale"``
({map: factor on the network's σ in the reported sd}) and ``"interval_quantiles"`` ({"levels": [...],
"q": {map: [conformal quantile per level]}}, see :mod:`napari_rverdict.learn.uncertainty`; no curves when the
calibration set (as large as the validation set) was too small to calibrate: Gaussian intervals z(level)).
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_rverdict import __version__
from napari_rverdict.data.noise import (
    DEFAULT_SNR_REFERENCE,
    LEGACY_SNR_REFERENCE,
    MatchedSnr,
    check_snr_reference,
    describe_noise,
    noise_settings,
)
from napari_rverdict.errors import InputError, positive_int
from napari_rverdict.files import atomic_path, check_output_files
from napari_rverdict.learn.bundle_meta import _check_finite, _plain, normalisation_description
from napari_rverdict.learn.device import network_chunk, resolve_device
from napari_rverdict.threads import capped_torch_threads
from napari_rverdict.learn.nets import build_network, fused_for_inference
from napari_rverdict.learn.scaling import unscale_targets
from napari_rverdict.learn.uncertainty import (
    derived_sd,
    interval_halfwidth,
    split_output,
)
from napari_rverdict.physics.models import get_model
from napari_rverdict.physics.protocol import PROTOCOL_DIFFERS, Protocol, averages_directions, direction_average

BUNDLE_FORMAT = "napari-rverdict-bundle"
BUNDLE_VERSION = 1
DEFAULT_CHUNK = 16384  # voxels handled at once (normalised, mapped, derived sds drawn): bounds memory


class Bundle:
    """A trained network (CPU, eval mode) and everything to use it.

    Attributes
    ----------
    network : the nn.Module mapping normalised signals (n, n_measurements) to scaled targets (n, k) in [0, 1].
    model : the SignalModel (``get_model(model_name)``).  protocol : the Protocol the network was trained on.
    ranges : {name: (low, high)} training ranges (targets are scaled with them).  target_names : estimated params.
    snr, fraction_sampler, net_name, depth, width, seed, history, train_config, created, versions : provenance.
    snr_reference : the noise reference the SNR is on ("s0" or "peak").  noise_match : the MatchedSnr the
        training noise was drawn from (``snr`` is then None), or None. :meth:`noise_settings` replays both.
    uncertainty : the network has 2k outputs (means, then log-variances in scaled units; see
        :mod:`napari_rverdict.learn.uncertainty`).  sd_scale : {map: factor} on the network's σ in the reported sd
        (the 68.27 % conformal quantile).  interval_levels, interval_quantiles : the conformal quantile curve
        per map (empty when too few validation signals to calibrate); see :meth:`interval`.
    """

    def __init__(self, network: nn.Module, model_name, protocol, ranges, snr=35.0, fraction_sampler="dirichlet",
                 net_name="mlp", depth=None, width=None, seed=None, history=None, train_config=None,
                 target_names=None, created=None, versions=None, extra=None, uncertainty=False, sd_scale=None,
                 interval_quantiles=None, snr_reference=DEFAULT_SNR_REFERENCE, noise_match=None):
        self.model = get_model(model_name)
        self.protocol = protocol if isinstance(protocol, Protocol) else Protocol.from_dict(protocol)
        self.ranges = {str(k): (float(v[0]), float(v[1])) for k, v in ranges.items()}
        self.target_names = tuple(target_names) if target_names is not None else tuple(self.model.estimated_names)
        missing = [k for k in self.target_names if k not in self.ranges]
        if missing:
            raise InputError(f"the bundle's ranges lack target(s) {', '.join(missing)}")
        self.snr = None if snr is None else tuple(map(float, snr)) if isinstance(snr, (list, tuple)) else float(snr)
        self.snr_reference = check_snr_reference(snr_reference)
        self.noise_match = MatchedSnr.from_dict(noise_match) if isinstance(noise_match, dict) else noise_match
        self.fraction_sampler = str(fraction_sampler)
        self.net_name = str(net_name)
        self.depth = None if depth is None else int(depth)
        self.width = None if width is None else int(width)
        self.seed = seed
        self.history = history or {}
        self.train_config = train_config or {}
        self.created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.versions = versions or {"napari_rverdict": __version__, "torch": torch.__version__}
        self.extra = extra or {}
        self.network = network.to("cpu").eval()
        self.normalisation = normalisation_description(self.model)
        self.uncertainty = bool(uncertainty)
        self.sd_scale = {str(k): float(v) for k, v in (sd_scale or {}).items()}
        iq = interval_quantiles or {}
        self.interval_levels = tuple(float(x) for x in iq.get("levels", ()))
        self.interval_quantiles = {str(k): [float(x) for x in v] for k, v in (iq.get("q") or {}).items()}
        bad = [k for k, v in self.interval_quantiles.items() if len(v) != len(self.interval_levels)]
        if bad or list(self.interval_levels) != sorted(self.interval_levels):
            raise InputError("the bundle's interval quantiles do not match their levels")

    # ------------------------------------------------------------------ info
    @property
    def map_names(self) -> tuple[str, ...]:
        return self.model.map_names

    @property
    def has_uncertainty(self) -> bool:
        """True when the network predicts a variance per target (``predict_signals(..., uncertainty=True)``)."""
        return self.uncertainty

    @property
    def n_inputs(self) -> int:
        return len(self.protocol)

    def describe(self) -> str:
        """A few lines: model, network, protocol, training ranges, SNR and history."""
        lines = [
            f"{self.model.label} · {self.net_name} (depth {self.depth}, width {self.width}) · "
            f"{sum(p.numel() for p in self.network.parameters()):,} weights",
            f"protocol: {self.protocol.name or 'custom'}, {len(self.protocol)} measurements · normalisation: "
            f"{self.normalisation}",
            f"trained at {self.noise_description()}, {self.fraction_sampler} fractions, seed {self.seed}",
            "ranges: " + ", ".join(f"{k} {lo:g}–{hi:g}" for k, (lo, hi) in self.ranges.items()
                                   if k in self.target_names),
        ]
        if self.uncertainty:
            how = ("conformal intervals per map from a fresh calibration set" if self.interval_quantiles
                   else "uncalibrated Gaussian intervals (too few calibration signals)")
            lines.append(f"uncertainty: predicts a mean and a variance per parameter (β-NLL); {how}")
        vl = self.history.get("val_loss") or []
        if vl:
            be = self.history.get("best_epoch")
            best = vl[be - 1] if be else min(vl)
            lines.append(f"{len(vl)} epochs, best validation MSE {best:.4g} at epoch {be}")
        lines.append(f"created {self.created} · napari-rverdict {self.versions.get('napari_rverdict')} · "
                     f"torch {self.versions.get('torch')}")
        return "\n".join(lines)

    def noise_description(self) -> str:
        return describe_noise(self.snr, self.snr_reference, self.noise_match)

    def noise_settings(self) -> dict:
        """The keyword arguments of :func:`.synth.simulate` that draw noise as the training data did."""
        return noise_settings(self.snr, self.snr_reference, self.noise_match)

    def __repr__(self) -> str:
        return f"<Bundle {self.model.name}/{self.net_name} depth={self.depth} width={self.width} n_meas={self.n_inputs}>"

    # ------------------------------------------------------------------ save / load
    def metadata(self) -> dict:
        return _plain({
            "model": self.model.name, "protocol": self.protocol.to_dict(), "ranges": self.ranges,
            "snr": self.snr, "snr_reference": self.snr_reference,
            "noise_match": None if self.noise_match is None else self.noise_match.to_dict(),
            "fraction_sampler": self.fraction_sampler, "net": self.net_name,
            "depth": self.depth, "width": self.width, "n_inputs": self.n_inputs,
            "target_names": list(self.target_names), "normalisation": self.normalisation,
            "target_scaling": "min-max with ranges: (value - low) / (high - low)", "seed": self.seed,
            "history": self.history, "train_config": self.train_config, "versions": self.versions,
            "created": self.created, "extra": self.extra, "uncertainty": self.uncertainty,
            "sd_scale": self.sd_scale,
            "interval_quantiles": {"levels": list(self.interval_levels), "q": self.interval_quantiles},
        })

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the bundle atomically through :func:`napari_rverdict.files.atomic_path` (a temporary file beside
        it, then ``os.replace``; a replaced file keeps its permissions, a new one gets ``0o666 & ~umask``). An
        existing file is refused (InputError) unless ``overwrite=True``."""
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path} is a folder: give the bundle a file name (e.g. model.pt)")
        check_output_files([path], overwrite=overwrite, what="bundle file")
        payload = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "meta": self.metadata(),
                   "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()}}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return path

    @classmethod
    def from_payload(cls, payload: dict, source: str = "bundle") -> Bundle:
        meta = payload["meta"]
        n_out = len(meta["target_names"]) * (2 if meta.get("uncertainty") else 1)
        net = build_network(meta["net"], meta["n_inputs"], n_out, meta["depth"], meta["width"],
                            model_name=meta["model"])
        try:
            net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise InputError(f"{source}: the weights do not fit a {meta['net']} network "
                             f"(depth {meta['depth']}, width {meta['width']}): {str(exc).splitlines()[0]}") from None
        snr = meta["snr"]
        return cls(net, meta["model"], Protocol.from_dict(meta["protocol"]), meta["ranges"],
                   tuple(snr) if isinstance(snr, list) else snr, meta["fraction_sampler"], meta["net"],
                   meta["depth"], meta["width"], meta.get("seed"), meta.get("history"), meta.get("train_config"),
                   meta["target_names"], meta.get("created"), meta.get("versions"), meta.get("extra"),
                   bool(meta.get("uncertainty", False)), meta.get("sd_scale"), meta.get("interval_quantiles"),
                   meta.get("snr_reference", LEGACY_SNR_REFERENCE), meta.get("noise_match"))

    def interval(self, maps, level: float = 0.95, names=None) -> dict[str, np.ndarray]:
        """Calibrated half-widths at ``level`` (0.05–0.99 for conformal bundles) for maps predicted with
        ``uncertainty=True``: {name: half-width}, the interval being map ± half-width
        (:func:`napari_rverdict.learn.uncertainty.interval_halfwidth`)."""
        self._check_uncertainty()
        return interval_halfwidth(self, maps, level, names)

    # ------------------------------------------------------------------ prediction
    def _check_signals(self, signals, n_expected: int) -> np.ndarray:
        if isinstance(signals, torch.Tensor):
            signals = signals.detach().cpu().numpy()
        s = np.asarray(signals)
        if s.ndim != 2:
            raise InputError(f"signals must be a 2-D array (n_voxels, {n_expected}), got shape {s.shape}")
        if s.shape[0] == 0:
            raise InputError(f"signals are empty: shape {s.shape}, expected (n_voxels ≥ 1, {n_expected})")
        if s.shape[1] != n_expected:
            raise InputError(f"signals have {s.shape[1]} measurements but the model's protocol has {n_expected}")
        if not np.issubdtype(s.dtype, np.number):
            raise InputError(f"signals must be numeric, got dtype {s.dtype}")
        bad = ~np.isfinite(s).all(axis=1)
        if bad.any():
            raise InputError(f"{int(bad.sum())} signal(s) contain NaN or inf (first at row {int(np.argmax(bad))}); "
                             "mask them out before predicting")
        return s

    def _device_network(self, device="cpu"):
        dev = resolve_device(device)
        return dev, fused_for_inference(self.network).to(dev)  # BatchNorm folded into its Linear: eval only

    def _check_uncertainty(self) -> None:
        if not self.uncertainty:
            raise InputError("this model was trained without uncertainty; train it with uncertainty "
                             "(TrainConfig(uncertainty=True) or 'rverdict train --uncertainty') to get sd maps")

    def _run_network(self, x: np.ndarray, dev, net, chunk: int = DEFAULT_CHUNK, return_sd: bool = False,
                     raw_sd: bool = False):
        """Estimates in physical units (n, k), clipped to the training ranges.

        ``return_sd``: also the sd (n, k) in physical units, recalibrated with ``sd_scale`` unless ``raw_sd``;
        then returns (est, sd, mean_scaled, sd_scaled) with the scaled-unit (clipped) means and sds as well.
        """
        k = len(self.target_names)
        if return_sd:
            self._check_uncertainty()
        out = np.empty((x.shape[0], k), dtype=np.float32)
        sd = np.empty((x.shape[0], k), dtype=np.float32) if return_sd else None
        step = network_chunk(dev, chunk)
        with torch.inference_mode():
            for s in range(0, x.shape[0], step):
                xb = torch.from_numpy(np.ascontiguousarray(x[s:s + step], dtype=np.float32)).to(dev)
                o = net(xb).float()
                out[s:s + step] = o[:, :k].cpu().numpy()
                if return_sd:
                    sd[s:s + step] = torch.exp(0.5 * split_output(o, k)[1]).cpu().numpy()
        np.clip(out, 0.0, 1.0, out=out)
        est = unscale_targets(out, self.target_names, self.ranges)
        if not return_sd:
            return est
        if not raw_sd:
            sd *= np.array([self.sd_scale.get(n, 1.0) for n in self.target_names], dtype=np.float32)
        width = np.array([self.ranges[n][1] - self.ranges[n][0] for n in self.target_names])
        return est, sd * width, out, sd

    def _maps_from_normalised(self, x: np.ndarray, dev, net, chunk: int, uncertainty: bool, return_all: bool,
                              seed: int = 0) -> dict[str, np.ndarray]:
        if not uncertainty:
            est = self._run_network(x, dev, net, chunk)
        else:
            est, sd, mean_s, sd_s = self._run_network(x, dev, net, chunk, return_sd=True)
        params = {k: est[:, i] for i, k in enumerate(self.target_names)}
        if return_all:
            maps = self.model.derived_maps(params)
            out = {k: np.asarray(maps[k], dtype=np.float32) for k in self.map_names}
        else:
            out = {k: v.astype(np.float32) for k, v in params.items()}
        if uncertainty:
            sds = {k: sd[:, i] for i, k in enumerate(self.target_names)}
            if return_all:
                for k, v in derived_sd(self.model, mean_s, sd_s, self.target_names, self.ranges, seed=seed).items():
                    sds[k] = v * self.sd_scale.get(k, 1.0)
            for k in list(out):
                out[f"{k}_sd"] = np.asarray(sds[k], dtype=np.float32)
        return out

    def predict_normalised(self, signals, *, device="cpu", chunk: int = DEFAULT_CHUNK, uncertainty: bool = False,
                           return_all: bool = True) -> dict[str, np.ndarray]:
        """Like :meth:`predict_signals` for signals already normalised as the network sees them (e.g.
        ``synth.simulate(...).signals``)."""
        if uncertainty:
            self._check_uncertainty()
        x = self._check_signals(signals, len(self.protocol))
        dev, net = self._device_network(device)
        parts = [self._maps_from_normalised(x[s:s + chunk], dev, net, int(chunk), uncertainty, return_all, seed=s)
                 for s in range(0, x.shape[0], int(chunk))]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def predict_signals(self, signals, *, protocol: Protocol | None = None, device="cpu", chunk: int = DEFAULT_CHUNK,
                        return_all: bool = True, uncertainty: bool = False) -> dict[str, np.ndarray]:
        """Maps from RAW signals.

        Parameters
        ----------
        signals : (n, n_measurements) raw (un-normalised) signals, in the bundle protocol's order, or in
            ``protocol``'s order when it is given.
        protocol : the acquisition of ``signals`` (a Protocol, preset name or file); its measurements are matched to
            the bundle's (``protocol.match_to``), reordered, and any differences are reported with
            ``warnings.warn``. A direction-resolved acquisition (20-volume INNOVATE) is first direction-averaged, as
            :func:`.predict.predict_volume` does.
        device : "cpu", "cuda[:i]", "mps" or "auto".  chunk : voxels at a time (bounds memory;
            on the CPU the network takes at most :data:`.device.CPU_NETWORK_CHUNK` of them a call).
        return_all : True: every map (``model.map_names`` order: estimated parameters, the dependent fraction,
            cellularity). False: only the network's estimated parameters.
        uncertainty : also return ``<name>_sd`` (same units) for every returned map: the half-width of the
            calibrated 68.27 % interval (an sd for Gaussian errors) from the network's predicted σ for estimated
            parameters, from a Monte-Carlo propagation for derived maps. :meth:`interval` gives the half-width at
            another level (e.g. 0.95). Raises ValueError for a bundle trained without uncertainty.

        Returns {name: float32 (n,)} in physical units (fractions, µm, ms, µm²/ms, µm⁻³). Each row is normalised
        with the model's own normalisation, so any per-voxel scale of the input is irrelevant. The network's
        estimates are clipped to the training ranges.
        """
        chunk = positive_int(chunk, "chunk")
        if uncertainty:
            self._check_uncertainty()
        if protocol is not None:
            from napari_rverdict.physics.protocol_files import load_protocol

            protocol = load_protocol(protocol)  # a Protocol, a preset name or a protocol file, as predict_volume
            s = self._check_signals(signals, len(protocol))
            if averages_directions(protocol, self.protocol):  # as predict_volume does: never one direction alone
                s, protocol = direction_average(s, protocol)
            index, notes = protocol.match_to(self.protocol, use_tr=self.model.requires_tr)
            s = s[:, index]
            if notes:
                warnings.warn(f"{PROTOCOL_DIFFERS}: " + "; ".join(notes), stacklevel=2)
        else:
            s = self._check_signals(signals, len(self.protocol))
        dev, net = self._device_network(device)
        return self._maps_of_raw(s, dev, net, chunk, uncertainty, return_all)

    def predictor(self, device="cpu", *, chunk: int = DEFAULT_CHUNK, uncertainty: bool = False,
                  return_all: bool = True):
        """``predict(signals)``: :meth:`predict_signals` of raw signals in the bundle protocol's order, with the
        network folded for inference and moved to ``device`` once for every call (a volume predicted chunk by
        chunk folds it once, not once a chunk)."""
        chunk = positive_int(chunk, "chunk")
        if uncertainty:
            self._check_uncertainty()
        dev, net = self._device_network(device)

        def predict(signals) -> dict[str, np.ndarray]:
            return self._maps_of_raw(self._check_signals(signals, len(self.protocol)), dev, net, chunk, uncertainty,
                                     return_all)

        return predict

    def _maps_of_raw(self, s: np.ndarray, dev, net, chunk: int, uncertainty: bool, return_all: bool) -> dict:
        """Maps of checked raw signals (n, m) in the bundle's order, ``chunk`` rows at a time into preallocated
        arrays (the Monte-Carlo seed of derived sds is the chunk's first row)."""
        n = s.shape[0]
        out: dict[str, np.ndarray] = {}
        with capped_torch_threads():  # never more threads than CPUs this process may use (cgroup, affinity)
            for start in range(0, n, chunk):
                norm = self.model.normalise(np.asarray(s[start:start + chunk], dtype=np.float64), self.protocol)
                part = self._maps_from_normalised(norm, dev, net, chunk, uncertainty, return_all, seed=start)
                if start == 0 and n <= chunk:
                    return part
                for k, v in part.items():
                    if k not in out:
                        out[k] = np.empty(n, dtype=v.dtype)
                    out[k][start:start + len(v)] = v
        return out


def _check_archive(p: Path) -> None:
    """Refuse a bundle whose zip archive (torch's file format) fails its CRC-32 checks: ``torch.load`` does not check
    them, so a changed byte in the weights would load and give slightly wrong maps without a word."""
    if not zipfile.is_zipfile(p):
        return  # not a zip at all: torch.load says what it is
    try:
        with zipfile.ZipFile(p) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise InputError(f"'{p}' is a damaged napari-rverdict bundle (unreadable archive: {exc})") from None
    if bad is not None:
        raise InputError(f"'{p}' is a damaged napari-rverdict bundle (the checksum of its '{bad}' does not match: "
                         "the file was changed after it was saved)")


def load_bundle(path) -> Bundle:
    """Load a bundle written by :meth:`Bundle.save` (``torch.load(weights_only=True)``).

    Raises ValueError for a missing file, a file that is not a napari-rverdict bundle, or an unsupported version.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"model bundle '{p}' does not exist")
    if not p.is_file():
        raise InputError(f"model bundle '{p}' is not a file")
    _check_archive(p)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of every kind: not a torch file we can read safely
        text = str(exc)
        if "Unsupported global" in text:
            why = "it holds pickled Python objects, which weights_only loading refuses"
        else:
            why = f"not a readable torch file: {type(exc).__name__}"
        raise InputError(f"'{p}' is not a napari-rverdict model bundle ({why})") from None
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise InputError(f"'{p}' is not a napari-rverdict model bundle (no '{BUNDLE_FORMAT}' format marker)")
    version = payload.get("version")
    if version != BUNDLE_VERSION:
        raise InputError(f"'{p}' is a napari-rverdict bundle of format version {version!r}; this version of "
                         f"napari-rverdict reads version {BUNDLE_VERSION}")
    if not isinstance(payload.get("meta"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise InputError(f"'{p}' is a damaged napari-rverdict bundle (meta or state_dict missing)")
    _check_finite(payload, p)
    try:
        return Bundle.from_payload(payload, source=str(p))
    except (KeyError, TypeError) as exc:
        raise InputError(f"'{p}' is a damaged napari-rverdict bundle (missing or bad entry {exc})") from None
