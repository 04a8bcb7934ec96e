"""Training throughput: images per second of one SGD step of zfnet() (or alexnet) at 224.

Times the trainer's own step (augmentation, forward with caches, softmax
cross-entropy, backward without the input gradient, SGD update, filter
renormalisation) on random uint8 pictures, after checking that the step is a
descent step (the loss on a fixed batch goes down over a few steps at a small
rate).  Prints one JSON line with the median step time, images/s, the load
average before and after, and the cost of 30 Imagenette epochs extrapolated.

    python benchmarks/train_throughput.py --arch zfnet --batch 32 --steps 5 [--device gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zfnet._memory import keep_freed_memory, short_openblas_spin  # noqa: E402  (imports no NumPy)

short_openblas_spin()  # before NumPy loads OpenBLAS, as `zfnet train` does
keep_freed_memory()  # before any thread starts, as `zfnet train` does

import numpy as np  # noqa: E402

from zfnet.backend import gpu_available  # noqa: E402
from zfnet.ops import softmax_cross_entropy  # noqa: E402
from zfnet.train import TrainConfig, Trainer, renormalize_filters  # noqa: E402


class _Split:
    def __init__(self, n, size, classes, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.labels = np.arange(n) % classes
        self.names = [f"class {i}" for i in range(classes)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="zfnet", choices=("zfnet", "alexnet", "alexnet-torchvision"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--fc-width", type=int, default=1024)
    p.add_argument("--device", choices=("cpu", "gpu"), default="gpu" if gpu_available() else "cpu")
    p.add_argument("--train-images", type=int, default=9469, help="for the 30-epoch extrapolation")
    args = p.parse_args(argv)

    cfg = TrainConfig(arch=args.arch, fc_width=args.fc_width, batch_size=args.batch, epochs=30, lr=0.01,
                      warmup_epochs=0, keep_epochs=())
    data = _Split(args.batch * 2, 224, 10)
    tr = Trainer(cfg, data, None, "/tmp/zfnet-bench-train", device=args.device, progress=False)
    tr.state.perm = np.arange(tr.n_train)
    tr.model.train()

    # check: a few small steps on one fixed batch lower its loss.  The loss is taken in
    # eval mode (no dropout): the training loss of each step draws new dropout masks,
    # and on random pictures with random labels that noise can hide a small descent.
    x, y = tr._batch(0)

    def fixed_batch_loss() -> float:
        tr.model.eval()
        try:
            return float(softmax_cross_entropy(tr.model.forward(x, caches=False).output, y)[0])
        finally:
            tr.model.train()

    losses = [fixed_batch_loss()]
    for _ in range(3):
        tr.train_step(x, y, 1e-3)
        losses.append(fixed_batch_loss())
    if not losses[-1] < losses[0]:
        print(f"check failed: loss on a fixed batch did not decrease: {losses}", file=sys.stderr)
        return 1

    load0 = os.getloadavg()
    times = []
    for s in range(args.steps + 1):
        t = time.perf_counter()
        x, y = tr._batch(s % tr.steps_per_epoch)
        loss, correct = tr.train_step(x, y, 1e-3)
        renormalize_filters(tr.model, cfg.renorm_radius)
        float(loss)  # waits for the device
        if s:  # the first is a warm-up
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    ips = args.batch / med
    epoch_s = args.train_images / ips
    print(json.dumps({
        "arch": args.arch, "device": args.device, "batch": args.batch, "fc_width": args.fc_width,
        "step_s_median": round(med, 3), "step_s_range": [round(min(times), 3), round(max(times), 3)],
        "images_per_s": round(ips, 2), "epoch_s": round(epoch_s), "epochs30_h": round(30 * epoch_s / 3600, 2),
        "loadavg_before": [round(v, 2) for v in load0], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(), "check_losses": [round(v, 4) for v in losses],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
