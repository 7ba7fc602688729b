"""Explore dock: the time from a slider move to a redrawn plot (library curves + matplotlib, offscreen Agg).

Run: ``.venv/bin/python benchmarks/explore_redraw.py [--moves 60] [--quick]``

Ours: ``signal_curves`` (one batched call of the model for the measurements, every series' b sweep and each
compartment), the Rician ``noise_band``, then ``CurveArtists.update`` (the dock's artists get new data) and
``CurveArtists.render`` (the data blitted over the cached axes, ticks and legend, as in the dock; a full draw only
when the y range steps). Baseline, the straightforward version, measured in the same process: one ``model.signal``
call per series and per compartment, then ``ax.cla()``, every line, band and legend plotted again and a full
``canvas.draw()``. Each "move" sets R and f_ic to new values, as dragging a slider does. Reported: median and 90th
percentile per move, the ratio, and the largest difference between the two sets of curves. Target: median
≤ 50 ms on a CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from napari_rverdict._napari.explore_dock.plot import COMPARTMENT_STYLES, SERIES_COLORS, CurveArtists  # noqa: E402
from napari_rverdict.evaluate.explore import FRACTIONS, noise_band, rician_moments, signal_curves  # noqa: E402
from napari_rverdict.evaluate.report import typical_parameters  # noqa: E402
from napari_rverdict.physics.models import get_model  # noqa: E402
from napari_rverdict.physics.protocol import Protocol  # noqa: E402


def figure():
    fig = Figure(figsize=(4.0, 3.3), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(111)


def naive_curves(model, params, protocol, n=41):
    """Per series and per compartment, its own call of the model: (b, total, {fraction: part}) per series."""
    maps = model.derived_maps({k: np.array([v]) for k, v in params.items()})
    fr = {k: float(maps[k][0]) for k in FRACTIONS}
    out = []
    sid = protocol.series_ids()
    peak = model.signal({k: np.array([v]) for k, v in params.items()}, protocol)[0]
    for s in range(int(sid.max()) + 1):
        idx = np.flatnonzero(sid == s)
        top = idx[np.argmax(protocol.b[idx])]
        b = np.linspace(0, protocol.b[top], n)
        sweep = Protocol(b, np.full(n, protocol.small_delta[top]), np.full(n, protocol.big_delta[top]),
                         np.full(n, protocol.te[top]), np.full(n, protocol.tr[top]))
        parts = {}
        for comp in FRACTIONS:
            p = dict(params, **{f: float(f == comp) for f in model.estimated_fractions})
            parts[comp] = fr[comp] * model.signal({k: np.array([v]) for k, v in p.items()}, sweep)[0]
        total = sum(parts.values())
        scale = peak.max() if model.name == "rverdict" else total[0]
        out.append((b, total / scale, {k: v / scale for k, v in parts.items()}, total, scale))
    return out


def naive_draw(ax, series, snr):
    ax.cla()
    sigma = None
    for i, (b, total, parts, raw, scale) in enumerate(series):
        c = SERIES_COLORS[i % len(SERIES_COLORS)]
        ax.plot(b, total, "-", color=c, lw=1.6, label=f"series {i}")
        for k, (ls, _) in COMPARTMENT_STYLES.items():
            ax.plot(b, parts[k], ls, color=c, lw=1.0)
        if sigma is None:
            sigma = max(s[3].max() for s in series) / snr
        mean, sd = rician_moments(raw, sigma)
        ax.fill_between(b, (mean - sd) / scale, (mean + sd) / scale, color=c, alpha=0.18, lw=0)
    ax.set_xlabel("b (s/mm²)")
    ax.set_ylabel("normalised signal")
    ax.legend(fontsize=7)
    ax.figure.canvas.draw()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=60, help="slider moves timed per method (default: %(default)s)")
    ap.add_argument("--model", default="rverdict")
    ap.add_argument("--snr", type=float, default=35.0)
    ap.add_argument("--quick", action="store_true", help="10 moves: a smoke run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    moves = 10 if args.quick else args.moves
    model = get_model(args.model)
    protocol = Protocol.innovate()
    base = typical_parameters(model)
    base.setdefault("S0", 1.0) if "S0" in model.parameter_names else None
    rng = np.random.default_rng(0)
    values = [dict(base, R=float(r), f_ic=float(f)) for r, f in zip(rng.uniform(0.5, 15, moves),
                                                                     rng.uniform(0.1, 0.6, moves))]

    fig, ax = figure()
    artists = CurveArtists(ax)
    c = signal_curves(model, values[0], protocol)  # warm-up: imports, sphere roots, first layout
    artists.update(c, noise_band(c, args.snr))
    fig.canvas.draw()
    ours = []
    for p in values:
        t0 = time.perf_counter()
        c = signal_curves(model, p, protocol)
        artists.update(c, noise_band(c, args.snr, "peak"))
        artists.render()
        ours.append(time.perf_counter() - t0)

    fig2, ax2 = figure()
    naive_draw(ax2, naive_curves(model, values[0], protocol), args.snr)
    naive = []
    for p in values:
        t0 = time.perf_counter()
        naive_draw(ax2, naive_curves(model, p, protocol), args.snr)
        naive.append(time.perf_counter() - t0)

    diff = 0.0
    for p in values[:5]:
        c = signal_curves(model, p, protocol)
        for s, (b, total, parts, _, _) in zip(c.series, naive_curves(model, p, protocol)):
            diff = max(diff, float(np.abs(s.total - total).max()),
                       max(float(np.abs(s.compartments[k] - parts[k]).max()) for k in FRACTIONS))

    med_o, med_n = statistics.median(ours) * 1e3, statistics.median(naive) * 1e3
    p90 = lambda xs: float(np.percentile(xs, 90)) * 1e3  # noqa: E731
    print(f"{model.label}, INNOVATE (5 series × 41 b values + 10 measurements), noise band at SNR {args.snr:g} "
          f"(peak reference), {moves} slider moves, Agg canvas 360×297 px, torch threads 1")
    print("| redraw per slider move | median ms | p90 ms | ratio |")
    print("|---|---|---|---|")
    print(f"| baseline: model call per series and compartment, ax.cla() + replot | {med_n:.1f} | "
          f"{p90(naive):.1f} | 1× |")
    print(f"| ours: one batched model call, artists' data replaced and blitted | {med_o:.1f} | {p90(ours):.1f} | "
          f"{med_n / med_o:.2f}× |")
    print(f"max |difference| between the two sets of curves: {diff:.1e}; target: median ≤ 50 ms "
          f"({'met' if med_o <= 50 else 'NOT met'})")


if __name__ == "__main__":
    main()
