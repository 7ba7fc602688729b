"""Make the small pretrained model shipped with the sample data, reproducibly.

    .venv/bin/python scripts/make_pretrained_bundle.py [--overwrite] [--quick]

An rVERDICT MLP with uncertainty for the INNOVATE protocol (20 volumes, direction-averaged to 10 measurements),
trained on CPU with fixed seeds on synthetic signals at SNR 35 (the phantom's); its validation table is stored in
the bundle (``extra["validation"]``, shown by the Train dock). Written to
``sample_data/pretrained/innovate_rverdict_mlp.pt`` (≈ 0.2 MB): File ▸ Open Sample ▸ napari-rverdict loads it with
the phantom so *Compute maps* works at once. ``--quick`` makes a throw-away bundle in seconds (smoke test).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_data" / "pretrained" / "innovate_rverdict_mlp.pt"

# Extra keyword arguments for ``simulate``: the noise convention, stated even where it is the default.
SIMULATE_EXTRA: dict = {"snr_reference": "s0"}  # the seed paper's noise convention (README, Noise)

SETTINGS = {"model": "rverdict", "protocol": "innovate", "n": 100_000, "snr": 35.0, "seed": 0}
TRAIN = {"net": "mlp", "epochs": 40, "patience": 8, "batch_size": 100, "lr": 1e-3, "scheduler": True,
         "uncertainty": True, "device": "cpu", "seed": 0}
QUICK = ({"n": 3_000}, {"epochs": 2, "patience": 0})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"bundle to write (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.add_argument("--quick", action="store_true", help="a tiny, quick bundle (smoke test only)")
    args = parser.parse_args(argv)

    import torch

    from napari_rverdict.data.synth import simulate
    from napari_rverdict.errors import InputError
    from napari_rverdict.evaluate.metrics import evaluate
    from napari_rverdict.files import check_output_file
    from napari_rverdict.learn.config import TrainConfig
    from napari_rverdict.learn.train import train

    torch.set_num_threads(1)
    try:
        check_output_file(args.out, overwrite=args.overwrite)
    except InputError as exc:
        print(f"make_pretrained_bundle: {exc}", file=sys.stderr)
        return 2
    sim, cfg = dict(SETTINGS), dict(TRAIN)
    if args.quick:
        sim.update(QUICK[0])
        cfg.update(QUICK[1])
    t0 = time.perf_counter()
    data = simulate(sim["model"], sim["protocol"], n=sim["n"], snr=sim["snr"], seed=sim["seed"], **SIMULATE_EXTRA)
    result = train(data, TrainConfig(**cfg))
    bundle = result.bundle
    report = evaluate(bundle, n=2000, seed=sim["seed"] + 12345)
    rows = [[name, str(r.get("unit") or ""), float(r["rmse"]), 100.0 * float(r["mape"]),
             float(r.get("crlb", float("nan")))] for name, r in report.rows.items()]
    bundle.extra = dict(bundle.extra or {}, validation={"n": 2000, "snr": str(getattr(report, "snr", sim["snr"])),
                                                        "rows": rows},
                        made_by="scripts/make_pretrained_bundle.py", simulate_extra=dict(SIMULATE_EXTRA))
    bundle.save(args.out, overwrite=args.overwrite)  # checked above, before the training
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s: {result.epochs_run} epochs")
    for name, unit, rmse, mape, crlb in rows:
        print(f"  {name:<12} RMSE {rmse:.3g} {unit:<7} MAPE {mape:.1f} %  √CRLB {crlb:.3g}")
    if size > 1_000_000:
        print("make_pretrained_bundle: the bundle is over 1 MB; keep the shipped one small", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
