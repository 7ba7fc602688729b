"""Training epoch time: the project's trainer (``train.iter_training``) against a plain PyTorch DataLoader loop.

Run: ``.venv/bin/python benchmarks/bench_train.py [--n 100000] [--epochs 6] [--threads 1] [--net mlp]``

Both train the same network (MLP 10 → 150 × 3 → 7 by default) on the same synthetic rVERDICT set (80/20 split),
batch 100, Adam lr 1e-3, MSE on min–max scaled targets, the same seed, on the CPU, in this process. Each epoch
includes one validation pass over the validation split.

* ours: :func:`napari_rverdict.learn.train.iter_training` (whole set resident as tensors, one permutation per epoch
  and contiguous slices, fused Adam, ``zero_grad(set_to_none=True)``, no per-batch host sync, denormals flushed
  to zero while it runs — without that, epochs slow down by ~40 % as gradients shrink).
* baseline: the textbook loop — ``DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)``, ``Adam``,
  ``optimizer.zero_grad()``, ``loss.item()`` accumulated per batch; validation in one no-grad pass over the whole
  validation tensor (cheaper than the usual batched DataLoader validation, so the baseline is favoured).

The two loops' epochs are interleaved (baseline epoch 1, ours epoch 1, baseline epoch 2, …) so that load from
other jobs on a shared machine hits both alike; both run with ``--threads`` torch threads (default 1: with more,
contention makes epoch times swing by 10×). The first epoch of each (set-up) is not counted; the median and the
fastest of the rest are reported, with their ratios (target ≥ 2×), and the validation losses after the last
epoch (they should be of the same size: the comparison is of speed, not of a different optimisation).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from napari_rverdict.data.synth import simulate
from napari_rverdict.learn.config import ProgressKind, TrainConfig
from napari_rverdict.learn.nets import build_network
from napari_rverdict.learn.scaling import scale_targets
from napari_rverdict.learn.train import iter_training


def baseline_epochs(data, net_name: str, epochs: int, seed: int):
    """The plain DataLoader loop as a generator: yields (wall time of the epoch, validation MSE) per epoch."""
    names = tuple(data.model.estimated_names)
    y = scale_targets(data.targets(names), names, data.ranges).astype(np.float32)
    x = data.signals.astype(np.float32)
    x_tr, y_tr = torch.from_numpy(x[data.train_index]), torch.from_numpy(y[data.train_index])
    x_va, y_va = torch.from_numpy(x[data.val_index]), torch.from_numpy(y[data.val_index])
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    net = build_network(net_name, x.shape[1], len(names), model_name=data.model.name)
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=100, shuffle=True, drop_last=False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    for _ in range(epochs):
        net.train()
        total = 0.0
        for xb, yb in loader:
            if xb.shape[0] < 2:  # BatchNorm networks cannot train on one sample (never happens at n = 80,000)
                continue
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
        net.eval()
        with torch.no_grad():
            val = float(loss_fn(net(x_va), y_va))
        t1 = time.perf_counter()
        yield t1 - t0, val
        t0 = time.perf_counter()


def ours_epochs(data, net_name: str, epochs: int, seed: int):
    """The project's trainer as a generator: yields (wall time of the epoch, validation MSE) per epoch (the time
    spent inside ``iter_training`` between two epoch records; the first includes its set-up)."""
    cfg = TrainConfig(net=net_name, epochs=epochs, batch_size=100, lr=1e-3, patience=None, device="cpu", seed=seed,
                      report_every=10**9)
    it = iter_training(data, cfg)
    while True:
        t0 = time.perf_counter()
        rec = next(it, None)
        if rec is None or rec.kind is ProgressKind.DONE:
            return
        if rec.kind is ProgressKind.EPOCH:
            yield time.perf_counter() - t0, rec.val_loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="synthetic signals (80%% train) (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per loop (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both loops (default: %(default)s; on a shared machine more "
                         "threads make epoch times swing by 10×)")
    ap.add_argument("--net", default="mlp")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch holds the set-up and is not counted)")
    torch.set_num_threads(args.threads)

    data = simulate("rverdict", n=args.n, seed=args.seed)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
          f"torch {torch.__version__} with {torch.get_num_threads()} thread(s); load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.net}, {len(data.train_index):,} training + {len(data.val_index):,} validation signals, batch 100, "
          f"{args.epochs} epochs per loop, the two loops' epochs interleaved")
    base, ours = baseline_epochs(data, args.net, args.epochs, args.seed), ours_epochs(data, args.net, args.epochs,
                                                                                     args.seed)
    base_t, ours_t = [], []
    base_val = ours_val = float("nan")
    for e in range(args.epochs):
        tb, base_val = next(base)
        to, ours_val = next(ours)
        print(f"epoch {e + 1}: DataLoader loop {tb:7.3f} s   iter_training {to:7.3f} s   ratio {tb / to:5.2f}")
        if e > 0:
            base_t.append(tb)
            ours_t.append(to)
    bm, om = statistics.median(base_t), statistics.median(ours_t)
    bmin, omin = min(base_t), min(ours_t)
    print()
    print("| loop | s / epoch (median) | s / epoch (min) | val MSE after last epoch |")
    print("|---|---|---|---|")
    print(f"| plain DataLoader + TensorDataset | {bm:.3f} | {bmin:.3f} | {base_val:.4g} |")
    print(f"| napari_rverdict.learn.train.iter_training | {om:.3f} | {omin:.3f} | {ours_val:.4g} |")
    print(f"\nspeed-up: {bm / om:.2f}× on the median epoch, {bmin / omin:.2f}× on the fastest epoch (target ≥ 2×)")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return bm / om


if __name__ == "__main__":
    main()
