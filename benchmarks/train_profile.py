"""Where one SGD step's time goes: per layer (forward, backward) and per conv op.

Wraps each layer's ``forward``/``backward`` of a training step, and the conv ops the
layers call (``conv2d``, ``conv2d_weight_grad``, ``conv_transpose2d``, ...), with
wall-clock timers, then runs ``--steps`` steps of ``--arch`` at ``--batch`` on random
uint8 pictures through the trainer's own ``_batch`` and ``train_step``.  Prints the
last step's table.  Timings on a shared machine vary by +-20% between runs: repeat.

    python benchmarks/train_profile.py --arch zfnet --batch 32 --steps 3 --keep-freed-memory
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zfnet._memory import short_openblas_spin  # noqa: E402  (imports no NumPy)

short_openblas_spin()  # before NumPy loads OpenBLAS, as `zfnet train` does

import numpy as np  # noqa: E402

import zfnet.nn.layers as layers_module  # noqa: E402
from zfnet.train import TrainConfig, Trainer  # noqa: E402

OPS = ("conv2d", "conv2d_weight_grad", "conv2d_bias_grad", "conv_transpose2d", "relu_backward")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="zfnet", choices=("zfnet", "alexnet", "alexnet-torchvision"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="steps run; the last one is reported")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="keep freed memory in the process, as Trainer.fit does (zfnet._memory)")
    args = p.parse_args(argv)
    if args.keep_freed_memory:
        from zfnet._memory import keep_freed_memory

        keep_freed_memory()

    ops: dict[str, list[float]] = {}
    for name in OPS:  # the names the layers call, as bound in zfnet.nn.layers
        inner = getattr(layers_module, name)

        def timed(*a, _inner=inner, _name=name, **k):
            t = time.perf_counter()
            out = _inner(*a, **k)
            ops.setdefault(_name, []).append(time.perf_counter() - t)
            return out

        setattr(layers_module, name, timed)

    class _Split:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8)
        labels = np.arange(args.batch) % 10
        names = [f"class {i}" for i in range(10)]

    cfg = TrainConfig(arch=args.arch, batch_size=args.batch, lr=0.01, warmup_epochs=0, keep_epochs=())
    tr = Trainer(cfg, _Split(), None, "/tmp/zfnet-train-profile", progress=False)
    tr.state.perm = np.arange(tr.n_train)
    tr.model.train()
    fwd: dict[str, float] = {}
    bwd: dict[str, float] = {}
    for layer in tr.model.layers:
        f0, b0 = layer.forward, layer.backward

        def f(x, trace=None, _f=f0, _n=layer.name):
            t = time.perf_counter()
            y = _f(x, trace)
            fwd[_n] = time.perf_counter() - t
            return y

        def b(dy, trace, *a, _b=b0, _n=layer.name, **k):
            t = time.perf_counter()
            y = _b(dy, trace, *a, **k)
            bwd[_n] = time.perf_counter() - t
            return y

        layer.forward, layer.backward = f, b
    for _ in range(args.steps):
        ops.clear()
        t = time.perf_counter()
        x, y = tr._batch(0)
        t_batch = time.perf_counter() - t
        t = time.perf_counter()
        tr.train_step(x, y, 1e-3)
        t_step = time.perf_counter() - t
    print(f"{args.arch}, batch {args.batch}: step {t_step:.3f} s (+ augmentation {t_batch:.3f} s); "
          f"forward {sum(fwd.values()):.3f} s, backward {sum(bwd.values()):.3f} s, "
          f"the rest (loss, update) {t_step - sum(fwd.values()) - sum(bwd.values()):.3f} s")
    print(f"{'layer':10s} {'forward':>8s} {'backward':>9s}")
    for name in fwd:
        print(f"{name:10s} {fwd[name]:8.3f} {bwd.get(name, 0.0):9.3f}")
    print("conv ops (each call, in order):")
    for name, ts in ops.items():
        print(f"  {name:20s} {sum(ts):6.3f} s  [{', '.join(f'{t:.3f}' for t in ts)}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
