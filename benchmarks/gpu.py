"""zfnet (CuPy) against PyTorch (cuDNN) on one GPU: network forwards and projections.

Run on a machine with a GPU, from the repository root::

    python3 -m benchmarks.gpu                 # float32, TF32 off on both sides
    python3 -m benchmarks.gpu --tf32          # TF32 / tensor cores allowed on both sides
    python3 -m benchmarks.gpu --out gpu.md    # also write the markdown table
    python3 -m benchmarks.gpu --smoke         # no GPU: every step on the CPU, tiny (checks the script)

Cases: ZFNet, AlexNet (both layouts) and SqueezeNet 1.0 forward at batch 128 up to
their last spatial layer, against the PyTorch twin with the same weights
(``benchmarks/torch_twin.py``); then one conv5 activation of ZFNet, and the top 9 of
a channel, projected to pixels by our windowed deconvnet against PyTorch's dense
autograd pass.  Targets (issue 17): ZFNet forward at most 1.25x cuDNN float32; the
single activation's projection at most 0.5x PyTorch's.

Each case is checked before it is timed: the forward against the twin's output, the
projection against autograd through the twin with OUR switches (where float
rounding breaks a pooling tie differently, both then unpool to the same place, so
the error measures the arithmetic; the timed twin pools by itself).  Then both
sides are timed interleaved (device-synchronised wall clock around each call),
median and range over ``--reps`` repetitions after warm-ups.  The exit status is 1
when a check fails; the table is printed either way.

TF32: CuPy reads ``CUPY_TF32`` when it is imported, so ``--tf32`` sets it before the
import (nothing here imports CuPy earlier); PyTorch's switches are
``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``.

``--smoke`` runs the same code with NumPy in CuPy's place and PyTorch on the CPU at
batch 2 and 2 repetitions: it shows the script works without a GPU; its timings
mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ARCHS = (("zfnet", "pool5"), ("alexnet", "pool5"), ("alexnet-torchvision", "pool5"), ("squeezenet1_0", "fire9"))


class _NumPyAsCuPy:
    """``--smoke``: the few CuPy calls this script makes, done by NumPy on the host."""

    def __init__(self):
        import numpy

        self.asarray, self.asnumpy = numpy.asarray, numpy.asarray


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=None, help="forward batch (default 128; 2 with --smoke)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20; 2 with --smoke)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each side first (compilation, autotuning)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores on both sides")
    p.add_argument("--archs", default=",".join(a for a, _ in ARCHS), help="comma-separated forward cases")
    p.add_argument("--no-projection", action="store_true", help="skip the projection cases")
    p.add_argument("--smoke", action="store_true", help="no GPU: NumPy for CuPy, PyTorch on the CPU, tiny sizes")
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    batch = args.batch or (2 if args.smoke else 128)
    reps = args.reps or (2 if args.smoke else 20)
    warmup = 1 if args.smoke else args.warmup
    archs = [a for a in args.archs.split(",") if a]
    unknown = set(archs) - {a for a, _ in ARCHS}
    if unknown:
        p.error(f"unknown --archs {sorted(unknown)}; choose from {[a for a, _ in ARCHS]}")
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"
    else:
        os.environ.pop("CUPY_TF32", None)

    import numpy as np
    import torch

    if args.smoke:
        cupy, stream = _NumPyAsCuPy(), None
        dev, model_device = torch.device("cpu"), "cpu"
    else:
        import cupy

        stream = cupy.cuda.get_current_stream
        dev, model_device = torch.device("cuda"), "gpu"

    from zfnet.deconvnet.windowed import project_units_windowed
    from zfnet.models import build

    from .harness import Timing
    from .torch_twin import twin

    if not args.smoke:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True

    def sync():
        if stream is not None:
            stream().synchronize()
            torch.cuda.synchronize()

    def timed(contenders):
        names = list(contenders)
        for name in names:  # warm-up: kernel compilation, cuDNN autotuning, allocator
            for _ in range(warmup):
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

    def rel_err(ours, ref):
        return float(np.abs(ours - ref).max() / max(1e-12, float(np.abs(ref).max())))

    tol = 5e-3 if args.tf32 else 1e-4
    failed = []
    rows = []
    rng = np.random.default_rng(0)
    for arch, top in ARCHS:
        if arch not in archs:
            continue
        model = build(arch)
        ours_model = build(arch).to(model_device)  # same seed, same weights
        x = rng.standard_normal((batch, 3) + tuple(model.input_size), dtype=np.float32)
        xg, xt = cupy.asarray(x), torch.from_numpy(x).to(dev)
        run_twin = twin(model, device=dev.type)
        with torch.no_grad():
            ref = run_twin(xt, upto=top).cpu().numpy()
        err = rel_err(cupy.asnumpy(ours_model.forward(xg, upto=top, caches=False).activations[top]), ref)
        ok = err <= tol
        failed += [] if ok else [f"{arch} forward"]
        verdict = "ok" if ok else f"MISMATCH (allowed {tol:g})"
        print(f"{arch} forward -> {top}: max rel. err vs torch {err:.1e} {verdict}", flush=True)

        def theirs(run_twin=run_twin, xt=xt, top=top):
            with torch.no_grad():
                return run_twin(xt, upto=top)

        def ours(m=ours_model, xg=xg, top=top):
            return m.forward(xg, upto=top, caches=False)

        rows.append((f"{arch} forward -> {top}", batch, timed({"zfnet": ours, "torch": theirs}),
                     1.25 if arch == "zfnet" else None, err))
        del ours_model, xg, xt

    if not args.no_projection:  # one activation of conv5, and the top 9 of a channel
        model = build("zfnet")
        ours_model = build("zfnet").to(model_device)
        run_rule = twin(model, rule="deconvnet", device=dev.type)
        for n_units in (1, 9):
            x = rng.standard_normal((n_units, 3, 224, 224), dtype=np.float32)
            trace = ours_model.forward(cupy.asarray(x), upto="conv5")
            act = cupy.asnumpy(trace.activations["conv5"])
            c = int(act[0].reshape(act.shape[1], -1).max(axis=1).argmax())
            flat = act[:, c].reshape(n_units, -1).argmax(axis=1)
            units = np.stack([np.arange(n_units), np.full(n_units, c), flat // act.shape[3], flat % act.shape[3]], 1)

            def grad_of(run):
                """PyTorch's dense deconvnet: autograd of the chosen activations, seeded with their values."""
                xt = torch.from_numpy(x).to(dev).requires_grad_()
                out = run(xt, upto="conv5")
                seed = torch.zeros_like(out)
                for n, cc, i, j in units:
                    seed[n, cc, i, j] = out[n, cc, i, j].detach()
                return lambda: torch.autograd.grad(out, xt, seed, retain_graph=True)[0]

            theirs = grad_of(run_rule)
            same_switches = twin(model, rule="deconvnet", device=dev.type,
                                 switches={k: cupy.asnumpy(v) for k, v in trace.switches.items()})
            ref = grad_of(same_switches)().cpu().numpy()

            def ours(trace=trace, units=units):
                return project_units_windowed(ours_model, trace, "conv5", units)

            err = rel_err(cupy.asnumpy(ours()), ref)
            ok = err <= tol
            failed += [] if ok else [f"projection x{n_units}"]
            print(f"projection x{n_units}: max rel. err vs torch (same switches) {err:.1e} "
                  f"{'ok' if ok else f'MISMATCH (allowed {tol:g})'}", flush=True)
            rows.append((f"zfnet conv5 -> pixels, {n_units} unit(s), windowed", n_units,
                         timed({"zfnet": ours, "torch": theirs}), 0.5 if n_units == 1 else None, err))

    if args.smoke:
        where = f"--smoke on the CPU (NumPy for CuPy, PyTorch {torch.__version__}): timings mean nothing"
    else:
        where = (f"GPU: {torch.cuda.get_device_name()}; CuPy {cupy.__version__}, PyTorch {torch.__version__} (cuDNN "
                 f"{torch.backends.cudnn.version()}); TF32 {'allowed' if args.tf32 else 'off'} on both sides")
    head = f"{where}; {reps} repetitions after {warmup} warm-up(s), device-synchronised, interleaved."
    lines = [head, "", "| case | batch | zfnet ms | torch ms | ratio | target | max rel. err |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case, n, t, target, err in rows:
        ratio = t["zfnet"].median / t["torch"].median
        tgt = "" if target is None else f"<= {target:g} ({'met' if ratio <= target else 'NOT met'})"
        lines.append(f"| {case} | {n} | {t['zfnet'].ms()} | {t['torch'].ms()} | {ratio:.2f} | {tgt} | {err:.1e} |")
    text = "\n".join(lines)
    print(text)
    if failed:
        print(f"checks failed: {', '.join(failed)}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
