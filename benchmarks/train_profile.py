"""Where one SGD step's time goes: per layer (forward, backward) and per conv op.

Wraps each layer class's ``forward``/``backward``, and the ops the layers call
(``conv2d_relu``, ``conv2d_grads_from_columns``, ``max_pool2d``, ...), with wall-clock
timers, then runs ``--steps`` steps of ``--arch`` at ``--batch`` on random uint8
pictures through the trainer's own ``_batch`` and ``train_step``.  Prints the last
step's table: one column pair per thread (the data-parallel step runs the trunk on
each; ``ZFNET_DATA_PARALLEL=0`` for the serial step).  Timings on a shared machine
vary by +-20% between runs: repeat.

    python benchmarks/train_profile.py --arch zfnet --batch 32 --steps 3 --keep-freed-memory
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zfnet._memory import short_openblas_spin  # noqa: E402  (imports no NumPy)

short_openblas_spin()  # before NumPy loads OpenBLAS, as `zfnet train` does

import numpy as np  # noqa: E402

import zfnet.nn.layers as layers_module  # noqa: E402
import zfnet.data_parallel as dp  # noqa: E402
from zfnet.train import TrainConfig, Trainer  # noqa: E402

OPS = ("conv2d_relu", "conv2d_grads_from_columns", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
       "relu_backward", "max_pool2d", "max_unpool2d", "lrn_saving_scale", "lrn_backward")


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
    # Timers on the layer classes, per thread: the data-parallel step (zfnet.data_parallel)
    # runs copies of the layers on two threads, so a row is (thread, layer).
    times: dict[tuple[str, str, str], float] = {}
    order: list[str] = []
    for cls in {type(layer) for layer in tr.model.layers}:
        for meth in ("forward", "backward"):
            f0 = cls.__dict__.get(meth)
            if f0 is None:
                continue

            def timed(self, *a, _f=f0, _m=meth, **k):
                t = time.perf_counter()
                out = _f(self, *a, **k)
                key = (threading.current_thread().name, self.name, _m)
                times[key] = times.get(key, 0.0) + time.perf_counter() - t
                return out

            setattr(cls, meth, timed)
    phases: dict[str, float] = {}
    in_shards = dp._in_shards

    def timed_shards(shards, fn):
        t = time.perf_counter()
        in_shards(shards, fn)
        phases[f"shards ({fn.__name__})"] = time.perf_counter() - t

    dp._in_shards = timed_shards
    for _ in range(args.steps):
        ops.clear()
        times.clear()
        phases.clear()
        t = time.perf_counter()
        x, y = tr._batch(0)
        t_batch = time.perf_counter() - t
        shards = dp.shard_count(tr.model, x)
        t = time.perf_counter()
        tr.train_step(x, y, 1e-3)
        t_step = time.perf_counter() - t
    threads = sorted({k[0] for k in times}, key=lambda name: (name != "MainThread", name))
    main_fwd = sum(v for k, v in times.items() if k[0] == "MainThread" and k[2] == "forward")
    main_bwd = sum(v for k, v in times.items() if k[0] == "MainThread" and k[2] == "backward")
    print(f"{args.arch}, batch {args.batch}: step {t_step:.3f} s (+ augmentation {t_batch:.3f} s); "
          f"{shards} shard(s) (ZFNET_DATA_PARALLEL=0 for the serial step); on the main thread forward "
          f"{main_fwd:.3f} s, backward {main_bwd:.3f} s, the rest (loss, sums, update, waiting) "
          f"{t_step - main_fwd - main_bwd:.3f} s")
    for name, v in phases.items():
        print(f"  {name}: {v:.3f} s")
    for layer in tr.model.layers:
        order.append(layer.name)
    print(f"{'layer':10s} " + " ".join(f"{th[:14]:>14s} fwd/bwd" for th in threads))
    for name in order:
        cells = [f"{times.get((th, name, 'forward'), 0.0):10.3f} {times.get((th, name, 'backward'), 0.0):10.3f}"
                 for th in threads]
        print(f"{name:10s} " + " ".join(cells))
    print("conv ops (each call on any thread, in order):")
    for name, ts in ops.items():
        print(f"  {name:20s} {sum(ts):6.3f} s  [{', '.join(f'{t:.3f}' for t in ts)}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
