"""zfnet (CuPy) against PyTorch (cuDNN) on one GPU: ZFNet forward and projections.

Run on a machine with a GPU, from the repository root::

    python3 -m benchmarks.gpu                 # float32, TF32 off on both sides
    python3 -m benchmarks.gpu --tf32          # TF32 / tensor cores allowed on both sides
    python3 -m benchmarks.gpu --out gpu.md    # also write a markdown table

Targets (issue 6): ZFNet forward at batch 128 within 1.25x of cuDNN float32; a single
activation's projection (conv5 -> pixels) at most 0.5x of PyTorch's dense autograd
pass.  As in ``python -m benchmarks``: outputs are compared first, then both sides
are timed interleaved (device-synchronised wall clock around each call), median and
range over ``--reps`` repetitions after a warm-up.

TF32: CuPy reads ``CUPY_TF32`` when it is imported, so ``--tf32`` sets it before the
import; PyTorch's switches are ``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"
    elif "CUPY_TF32" in os.environ:
        del os.environ["CUPY_TF32"]

    import cupy
    import numpy as np
    import torch

    from zfnet.deconvnet.windowed import project_units_windowed
    from zfnet.models import build

    from .harness import Timing
    from .torch_twin import twin

    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")

    def sync():
        cupy.cuda.get_current_stream().synchronize()
        torch.cuda.synchronize()

    def timed(contenders, reps):
        names = list(contenders)
        for name in names:  # warm-up: compilation, cuDNN autotuning, allocator
            for _ in range(3):
                contenders[name]()
        sync()
        out = {name: Timing() for name in names}
        for r in range(reps):
            for name in names[r % 2:] + names[: r % 2]:
                sync()
                t0 = time.perf_counter()
                contenders[name]()
                sync()
                out[name].samples.append(time.perf_counter() - t0)
        return out

    rows = []
    rng = np.random.default_rng(0)
    for arch, top in (("zfnet", "pool5"), ("alexnet", "pool5"), ("alexnet-torchvision", "pool5"),
                      ("squeezenet1_0", "fire9")):
        try:
            model = build(arch)
        except Exception as e:  # pragma: no cover
            print(f"skipping {arch}: {e}")
            continue
        gpu_model = build(arch).to("gpu")
        x = rng.standard_normal((args.batch, 3) + tuple(model.input_size), dtype=np.float32)
        xg, xt = cupy.asarray(x), torch.from_numpy(x).to(dev)
        run_gpu = twin(model, device="cuda")
        with torch.no_grad():
            ref = run_gpu(xt, upto=top).cpu().numpy()
        ours = cupy.asnumpy(gpu_model.forward(xg, upto=top, caches=False).activations[top])
        err = float(np.abs(ours - ref).max() / max(1e-12, np.abs(ref).max()))
        tol = 5e-3 if args.tf32 else 1e-4
        status = "ok" if err <= tol else f"MISMATCH (allowed {tol:g})"
        print(f"{arch}: max rel. err vs torch {err:.1e} {status}", flush=True)

        def theirs(run_gpu=run_gpu, xt=xt, top=top):
            with torch.no_grad():
                return run_gpu(xt, upto=top)

        t = timed({"zfnet": lambda: gpu_model.forward(xg, upto=top, caches=False), "torch": theirs}, args.reps)
        rows.append((f"{arch} forward -> {top}", args.batch, t, 1.25 if arch == "zfnet" else None, err))

    # projection: one activation of conv5, and the top 9 of a channel
    model = build("zfnet")
    gpu_model = build("zfnet").to("gpu")
    run_rule = twin(model, rule="deconvnet", device="cuda")
    for n_units in (1, 9):
        x = rng.standard_normal((n_units, 3, 224, 224), dtype=np.float32)
        trace = gpu_model.forward(cupy.asarray(x), upto="conv5")
        act = cupy.asnumpy(trace.activations["conv5"])
        c = int(act[0].reshape(act.shape[1], -1).max(axis=1).argmax())
        flat = act[:, c].reshape(n_units, -1).argmax(axis=1)
        units = np.stack([np.arange(n_units), np.full(n_units, c), flat // 13, flat % 13], 1)
        xt = torch.from_numpy(x).to(dev).requires_grad_()
        out = run_rule(xt, upto="conv5")
        onehot = torch.zeros_like(out)
        for n, cc, i, j in units:
            onehot[n, cc, i, j] = out[n, cc, i, j].detach()

        def theirs(out=out, xt=xt, onehot=onehot):
            return torch.autograd.grad(out, xt, onehot, retain_graph=True)[0]

        def ours(trace=trace, units=units):
            return project_units_windowed(gpu_model, trace, "conv5", units)

        ref = theirs().cpu().numpy()
        err = float(np.abs(cupy.asnumpy(ours()) - ref).max() / max(1e-12, np.abs(ref).max()))
        print(f"projection x{n_units}: max rel. err vs torch {err:.1e}", flush=True)
        t = timed({"zfnet": ours, "torch": theirs}, args.reps)
        rows.append((f"zfnet conv5 -> pixels, {n_units} unit(s), windowed", n_units, t, 0.5 if n_units == 1 else None, err))

    name = torch.cuda.get_device_name()
    head = (f"GPU: {name}; CuPy {cupy.__version__}, PyTorch {torch.__version__} (cuDNN "
            f"{torch.backends.cudnn.version()}); TF32 {'allowed' if args.tf32 else 'off'} on both sides; "
            f"{args.reps} repetitions after 3 warm-ups, device-synchronised.")
    lines = [head, "", "| case | batch | zfnet ms | torch ms | ratio | target | max rel. err |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case, batch, t, target, err in rows:
        ratio = t["zfnet"].median / t["torch"].median
        tgt = "" if target is None else f"<= {target:g} ({'met' if ratio <= target else 'NOT met'})"
        lines.append(f"| {case} | {batch} | {t['zfnet'].ms()} | {t['torch'].ms()} | {ratio:.2f} | {tgt} | {err:.1e} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
