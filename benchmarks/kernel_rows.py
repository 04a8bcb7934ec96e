"""The convolution paths side by side: im2col against kernel rows, per layer.

For each layer (both networks' conv2, torchvision AlexNet's conv2), times the
forward (:func:`zfnet.ops.conv2d`), the filter gradient (``conv2d_weight_grad``) and
the input gradient (``conv_transpose2d``) with ``ZFNET_KERNEL_ROWS=0`` (the im2col
paths) and with the kernel-rows path (:mod:`zfnet.ops.kernel_rows`), interleaved,
medians of ``--reps``.  Two settings: one thread at 16 images (what one shard of
the data-parallel training step does) and every thread at 32 images.  Before
timing, each layer's three results are compared between the paths.

With more than one thread the kernel-rows path shares images out among threads only
where OpenBLAS's idle threads sleep soon after a GEMM (``OPENBLAS_THREAD_TIMEOUT``
1-10, as ``zfnet train`` sets it; ``docs/speed.md``), so run it both ways:

    python benchmarks/kernel_rows.py [--reps 7]
    OPENBLAS_THREAD_TIMEOUT=4 python benchmarks/kernel_rows.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zfnet._memory import keep_freed_memory  # noqa: E402  (imports no NumPy)

keep_freed_memory()

import numpy as np  # noqa: E402

from zfnet.ops import conv2d, conv2d_weight_grad, conv_transpose2d  # noqa: E402
from zfnet.ops._blas import blas_threads  # noqa: E402
from zfnet.ops._parallel import num_threads, serial  # noqa: E402

# name: (input C, H, W), (C_out, C_in/groups, kH, kW), stride, padding, groups
LAYERS = {
    "AlexNet conv2 (48 -> 128 x 2 groups, 5x5, 27x27)": ((96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    "ZFNet conv2 (96 -> 256, 5x5 stride 2, 55x55)": ((96, 55, 55), (256, 96, 5, 5), 2, 0, 1),
    "torchvision AlexNet conv2 (64 -> 192, 5x5, 27x27)": ((64, 27, 27), (192, 64, 5, 5), 1, 2, 1),
}


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    spin = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(unset: OpenBLAS's default, 28)")
    print(f"threads available: {num_threads()}; OPENBLAS_THREAD_TIMEOUT={spin}; medians of {args.reps}; "
          "times in ms (forward / filter grad / input grad)")
    print("| layer | setting | im2col | kernel rows | total ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, (shape, w_shape, stride, padding, groups) in LAYERS.items():
        for batch, one_thread in ((16, True), (32, False)):
            x = rng.standard_normal((batch,) + shape, dtype=np.float32)
            w = (rng.standard_normal(w_shape) * 0.05).astype(np.float32)
            b = rng.standard_normal(w_shape[0]).astype(np.float32)
            with contextlib.ExitStack() as stack:
                if one_thread:
                    stack.enter_context(blas_threads(1))
                    stack.enter_context(serial())
                dy = rng.standard_normal(conv2d(x, w, b, stride, padding, groups).shape, dtype=np.float32)
                calls = (lambda: conv2d(x, w, b, stride, padding, groups),
                         lambda: conv2d_weight_grad(x, dy, w.shape, stride, padding, groups),
                         lambda: conv_transpose2d(dy, w, None, stride, padding, groups, output_size=x.shape))
                results = {}
                for flag in ("0", "1"):  # the two paths must agree before they are timed
                    os.environ["ZFNET_KERNEL_ROWS"] = flag
                    results[flag] = [fn() for fn in calls]
                for old_r, new_r, what in zip(results["0"], results["1"], ("forward", "filter grad", "input grad")):
                    err = float(np.abs(new_r - old_r).max() / max(1e-30, np.abs(old_r).max()))
                    if err > 1e-5:  # float32: both sums round differently, by a few 1e-7 relative
                        raise SystemExit(f"{name}: the paths disagree on the {what} (max rel. err {err:.1e})")
                times = {"0": [[], [], []], "1": [[], [], []]}
                for _ in range(args.reps):  # interleaved: path A, path B, A, B ...
                    for flag in ("0", "1"):
                        os.environ["ZFNET_KERNEL_ROWS"] = flag
                        for k, fn in enumerate(calls):
                            times[flag][k].append(_median_ms(fn, 1))
                os.environ.pop("ZFNET_KERNEL_ROWS", None)
            old, new = ([float(np.median(t)) for t in times[f]] for f in ("0", "1"))
            setting = f"{'1 thread' if one_thread else f'{num_threads()} threads'}, {batch} images"
            print(f"| {name} | {setting} | {' / '.join(f'{v:.0f}' for v in old)} | "
                  f"{' / '.join(f'{v:.0f}' for v in new)} | {sum(new) / sum(old):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
