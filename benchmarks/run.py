"""zfnet against PyTorch on the CPU: ops, network forwards, projections, mining.

Usage (from the repository root)::

    python -m benchmarks                      # everything but mining, about 5 minutes
    python -m benchmarks --quick              # fewer repetitions, batch 8 instead of 32
    python -m benchmarks --only forward       # cases whose name contains "forward"
    python -m benchmarks --mining 3925        # also the mining target (long: see mining.py)

Every case first checks that both sides compute the same thing (against PyTorch, and
against the readable NumPy paths for the ops), then times them interleaved: warm-up,
``--reps`` repetitions, median and range.  Thread counts are fixed before NumPy and
PyTorch load (``--threads``, default: all cores) and printed.  A fixed GEMM is timed
before and after as a check that the machine was quiet; its spread is reported.
The table goes to ``benchmarks/RESULTS.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys


def _early_int(argv, flag: str, default):
    """The value of ``flag N`` / ``flag=N`` in ``argv``: flags that must act before
    NumPy/OpenBLAS load (thread pools and their spin-wait are fixed then)."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith(flag + "="):
            return int(a.split("=", 1)[1])
    return default


THREADS = _early_int(sys.argv[1:], "--threads", os.cpu_count() or 1)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
SPIN = _early_int(sys.argv[1:], "--openblas-timeout", None)
if SPIN is not None:  # `zfnet train` uses 4 (zfnet._memory.short_openblas_spin)
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(SPIN)

import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
except ModuleNotFoundError:  # the comparison needs PyTorch; say how to get it rather than a traceback
    print("python -m benchmarks: the benchmarks compare zfnet with PyTorch, which is not installed; install "
          "the CPU build with: pip install torch --index-url https://download.pytorch.org/whl/cpu",
          file=sys.stderr)
    raise SystemExit(2) from None
import torch.nn.functional as F  # noqa: E402

from zfnet import ops  # noqa: E402
from zfnet.deconvnet import project_units  # noqa: E402
from zfnet.deconvnet.windowed import project_units_windowed  # noqa: E402
from zfnet.models import build  # noqa: E402
from zfnet.ops import pool as pool_mod  # noqa: E402

from . import harness  # noqa: E402
from .torch_twin import trainable, twin  # noqa: E402

torch.set_num_threads(THREADS)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set (imported twice)
    pass

HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    group: str
    name: str
    batch: int
    ours: Callable[[], object]
    theirs: Callable[[], object]
    check: Callable[[], str]  # raises on mismatch; returns what was checked
    target: float | None = None  # ratio to meet (ours / torch), if the issue sets one
    note: str = ""
    gflop: float | None = None  # GEMM work per call, for the roofline fraction
    warmup: int = 1  # untimed calls of each side first


def _close(a, b, rel=1e-4, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes {a.shape} vs {b.shape}")
    err = float(np.abs(a - b).max()) / max(1e-12, float(np.abs(b).max()))
    if not err <= rel:
        raise AssertionError(f"{what}: max error {err:.2e} of the largest value (allowed {rel:g})")
    return f"{what} max rel. err {err:.1e}"


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- ops ------------------------------------------------------------------------------


def op_cases(batch: int) -> list[Case]:
    rng = _rng(1)
    cases = []
    for name, (c, h, o, k, s, p) in {
        "conv1 3->96 7x7/2": (3, 224, 96, 7, 2, 1),
        "conv2 96->256 5x5/2": (96, 55, 256, 5, 2, 0),
        "conv4 384->384 3x3/1": (384, 13, 384, 3, 1, 1),
    }.items():
        x = rng.standard_normal((batch, c, h, h), dtype=np.float32)
        w = (rng.standard_normal((o, c, k, k), dtype=np.float32) / np.sqrt(c * k * k)).astype(np.float32)
        b = rng.standard_normal(o, dtype=np.float32)
        xt, wt, bt = map(torch.from_numpy, (x, w, b))

        def check(x=x, w=w, b=b, xt=xt, wt=wt, bt=bt, s=s, p=p):
            y = ops.conv2d(x, w, b, s, p)
            # the readable path: im2col + GEMM
            cols = ops.im2col(x[:1], w.shape[2:], (s, s), (p, p))
            ref = (w.reshape(w.shape[0], -1) @ cols.reshape(cols.shape[1] * w.shape[2] * w.shape[3], -1)).reshape(
                y[:1].shape) + b.reshape(1, -1, 1, 1)
            return _close(y[:1], ref, 1e-5, "vs im2col") + "; " + _close(y, F.conv2d(xt, wt, bt, s, p), 1e-4, "vs torch")

        cases.append(Case("ops", f"conv2d {name}", batch, lambda x=x, w=w, b=b, s=s, p=p: ops.conv2d(x, w, b, s, p),
                          lambda xt=xt, wt=wt, bt=bt, s=s, p=p: F.conv2d(xt, wt, bt, s, p), check))

    for name, (c, h) in {"pool1 96@110": (96, 110), "pool2 256@26": (256, 26)}.items():
        x = np.maximum(rng.standard_normal((batch, c, h, h), dtype=np.float32), 0)  # rectified, ties at 0
        xt = torch.from_numpy(x)

        def check(x=x, xt=xt):
            y, sw = ops.max_pool2d(x, 3, 2, 0, True)
            out = (y.shape[2], y.shape[3])
            yr, swr = pool_mod._max_pool2d_windows(x[:2], (3, 3), (2, 2), (0, 0), out)
            yt, it = F.max_pool2d(xt, 3, 2, 0, 1, True, return_indices=True)
            ok = np.array_equal(y[:2], yr) and np.array_equal(sw[:2], swr)
            ok = ok and np.array_equal(y, yt.numpy()) and np.array_equal(sw, it.numpy())
            if not ok:
                raise AssertionError("max-pool values or switches differ")
            return "values and switches identical to the readable loop and to torch"

        cases.append(Case("ops", f"max_pool2d + switches {name} 3x3/2 ceil", batch,
                          lambda x=x: ops.max_pool2d(x, 3, 2, 0, True),
                          lambda xt=xt: F.max_pool2d(xt, 3, 2, 0, 1, True, return_indices=True), check))

    x = rng.standard_normal((batch, 96, 55, 55), dtype=np.float32) * 3
    xt = torch.from_numpy(x)
    cases.append(Case("ops", "lrn norm1 96@55 size 5", batch, lambda x=x: ops.lrn(x, 5, 1e-4, 0.75, 2.0),
                      lambda xt=xt: F.local_response_norm(xt, 5, 1e-4, 0.75, 2.0),
                      lambda x=x, xt=xt: _close(ops.lrn(x, 5, 1e-4, 0.75, 2.0),
                                                F.local_response_norm(xt, 5, 1e-4, 0.75, 2.0), 1e-5, "vs torch")))

    g = rng.standard_normal((batch, 256, 26, 26), dtype=np.float32)
    w = (rng.standard_normal((256, 96, 5, 5), dtype=np.float32) / 50).astype(np.float32)
    gt, wt = torch.from_numpy(g), torch.from_numpy(w)
    cases.append(Case("ops", "conv_transpose2d conv2 256@26->96@55", batch,
                      lambda g=g, w=w: ops.conv_transpose2d(g, w, None, 2, 0, output_size=(55, 55)),
                      lambda gt=gt, wt=wt: F.conv_transpose2d(gt, wt, None, 2, 0),
                      lambda g=g, w=w, gt=gt, wt=wt: _close(ops.conv_transpose2d(g, w, None, 2, 0, output_size=(55, 55)),
                                                            F.conv_transpose2d(gt, wt, None, 2, 0), 1e-4, "vs torch")))

    x = np.maximum(rng.standard_normal((batch, 96, 110, 110), dtype=np.float32), 0)
    y, sw = ops.max_pool2d(x, 3, 2, 0, True)
    yt, swt = torch.from_numpy(y), torch.from_numpy(sw)

    def check_unpool():
        up = ops.max_unpool2d(y, sw, (110, 110))
        xr = torch.from_numpy(x).requires_grad_()
        F.max_pool2d(xr, 3, 2, 0, 1, True).backward(yt)
        return _close(up, xr.grad, 1e-6, "vs torch max-pool gradient")

    cases.append(Case("ops", "max_unpool2d pool1 96@55->110 (scatter-add)", batch,
                      lambda: ops.max_unpool2d(y, sw, (110, 110)),
                      lambda: F.max_unpool2d(yt, swt, 3, 2, output_size=(110, 110)), check_unpool,
                      note="torch's max_unpool2d assigns (no add where switches collide)"))
    return cases


# -- networks ---------------------------------------------------------------------------


FEATURES = {"zfnet": "pool5", "alexnet": "pool5", "alexnet-torchvision": "pool5", "squeezenet1_0": "fire9"}


def network_cases(batches, quick: bool) -> list[Case]:
    cases = []
    for arch, top in FEATURES.items():
        try:
            model = build(arch)
        except Exception as e:  # pragma: no cover - an architecture not in this build
            print(f"  skipping {arch}: {e}")
            continue
        run = twin(model)
        size = tuple(model.input_size)
        for batch in batches:
            x = _rng(2).standard_normal((batch, 3) + size, dtype=np.float32)
            xt = torch.from_numpy(x)

            def ours(model=model, x=x, top=top):
                return model.forward(x, upto=top, caches=False)

            def theirs(run=run, xt=xt, top=top):
                with torch.no_grad():
                    return run(xt, upto=top)

            def check(model=model, x=x, run=run, xt=xt, top=top):
                a = model.forward(x, upto=top).activations[top]
                with torch.no_grad():
                    b = run(xt, upto=top)
                return _close(a, b, 1e-4, "vs torch")

            first = model.conv_layer_names()[0]
            target = 1.0 if arch == "zfnet" else None
            cases.append(Case("forward", f"{arch} {first} -> {top}", batch, ours, theirs, check, target))
    # the whole ZFNet, classifier included (GEMM-bound on both sides)
    model = build("zfnet")
    run = twin(model)
    batch = max(batches)
    x = _rng(3).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    xt = torch.from_numpy(x)

    def theirs_full():
        with torch.no_grad():
            return run(xt)

    cases.append(Case("forward", "zfnet whole network -> fc8", batch, lambda: model.forward(x, caches=False),
                      theirs_full, lambda: _close(model.forward(x).output, theirs_full(), 1e-4, "vs torch")))
    return cases


# -- training steps ---------------------------------------------------------------------


def step_gflop(model, batch: int) -> float:
    """GEMM work of one SGD step, GFLOP: per conv/fc layer ``2 * MACs`` for the forward,
    the same for the weight gradient and, except for the first layer (no input
    gradient is needed), for the input gradient.  Pooling, LRN, ReLU, the loss and the
    update are left out: this is the work a GEMM roofline counts."""
    size = tuple(model.input_size)
    trace = model.forward(np.zeros((1, 3) + size, np.float32))
    total, first = 0.0, True
    for layer in model.layers:
        out = trace.activations.get(layer.name)
        if out is None or not hasattr(layer, "weight"):
            continue
        w = layer.weight
        macs = float(np.prod(out.shape[1:])) * float(np.prod(w.shape[1:]))  # per image
        total += 2 * macs * (2 if first else 3)
        first = False
    return total * batch / 1e9


def train_step_cases(batch: int, archs=("zfnet", "alexnet")) -> list[Case]:
    """One SGD step (forward, softmax cross-entropy, backward, momentum + weight-decay
    update) of ``zfnet()`` and ``alexnet(variant="caffe")`` at 224, 10 classes (fc
    width 1024), on the same normalised batch.  Ours: the trainer's ``train_step``;
    PyTorch: the same network as ``torch.nn`` modules with ``torch.optim.SGD``.  No
    augmentation and no filter renormalisation on either side.  Checked first: with
    dropout off, one step from the same weights gives the same loss and gradients."""
    from zfnet.train import TrainConfig, Trainer

    class _Split:
        def __init__(self, n):
            r = _rng(6)
            self.images = r.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
            self.labels = np.arange(n) % 10
            self.names = [f"class {i}" for i in range(10)]

    cases = []
    for arch in archs:
        cfg = TrainConfig(arch=arch, batch_size=batch, epochs=1, lr=0.01, warmup_epochs=0, keep_epochs=())
        tr = Trainer(cfg, _Split(batch), None, "/tmp/zfnet-bench-train-step", progress=False)
        tr.state.perm = np.arange(tr.n_train)
        tr.model.train()
        x, y = tr._batch(0)
        mod = trainable(tr.model)
        mod.train()
        opt = torch.optim.SGD(mod.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, np.int64))

        def ours(tr=tr, x=x, y=y):
            return tr.train_step(x, y, 1e-4)

        def theirs(mod=mod, opt=opt, xt=xt, yt=yt):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(mod(xt), yt)
            loss.backward()
            opt.step()
            return loss

        def check(tr=tr, x=x, y=y, xt=xt, yt=yt):
            from zfnet.nn import Dropout
            from zfnet.ops import softmax_cross_entropy

            drops = [layer for layer in tr.model.layers if isinstance(layer, Dropout)]
            saved = [d.p for d in drops]
            try:
                for d in drops:
                    d.p = 0.0
                ref = trainable(tr.model, dropout=False)
                trace = tr.model.forward(x)
                loss, dlogits = softmax_cross_entropy(trace.output, y)
                tr.model.backward(dlogits, trace, input_grad=False)
                grads = tr.model.gradients()
            finally:
                for d, p in zip(drops, saved):
                    d.p = p
            lt = F.cross_entropy(ref(xt), yt)
            lt.backward()
            twins = dict(ref.named_children())
            first, last = twins["conv1"], twins["fc8"]
            # The top layers' gradients agree to float32 rounding.  Lower down, a ReLU whose
            # input lies within rounding of 0 can be on in one library and off in the other
            # (found: 1 of 130,000 conv3 units); that unit's share then differs in every
            # gradient below it, a few percent of the largest entry: hence 5e-2 for conv1.
            return "; ".join([
                _close(float(loss), float(lt.detach()), 1e-5, "loss"),
                _close(grads["fc8.weight"], last.weight.grad.numpy(), 1e-4, "fc8 weight grad"),
                _close(grads["conv1.weight"], first.weight.grad.numpy(), 5e-2, "conv1 weight grad"),
            ])

        gf = step_gflop(tr.model, batch)
        cases.append(Case("train step", f"{arch} SGD step at 224 ({gf:.0f} GFLOP of GEMM work)", batch, ours,
                          theirs, check, 1.0,
                          note="ours: Trainer.train_step; torch: nn.Sequential + optim.SGD, same weights and batch",
                          gflop=gf, warmup=4))  # training runs thousands of steps: time the steady state
                                               # (the first few grow the heap, and take page faults)
    return cases


# -- projections ------------------------------------------------------------------------


def projection_cases(arch: str = "zfnet", layer: str = "conv5") -> list[Case]:
    """One activation, and the top 9 of one channel, projected from ``layer`` to pixels.

    Both sides start from their own forward pass (our Trace; torch's autograd graph,
    kept with ``retain_graph``): what is timed is the top-down pass only.
    """
    model = build(arch)
    size = tuple(model.input_size)
    cases = []
    for n_units in (1, 9):
        x = _rng(4).standard_normal((n_units, 3) + size, dtype=np.float32)
        trace = model.forward(x, upto=layer)
        act = trace.activations[layer]
        channel = int(act[0].reshape(act.shape[1], -1).max(axis=1).argmax())  # a channel that fires
        flat = act[:, channel].reshape(n_units, -1).argmax(axis=1)
        units = np.stack([np.arange(n_units), np.full(n_units, channel), flat // act.shape[3], flat % act.shape[3]], 1)
        run = twin(model, rule="deconvnet")
        xt = torch.from_numpy(x).requires_grad_()
        out = run(xt, upto=layer)
        onehot = torch.zeros_like(out)
        for n, c, i, j in units:
            onehot[n, c, i, j] = out[n, c, i, j].detach()

        def theirs(out=out, xt=xt, onehot=onehot):
            return torch.autograd.grad(out, xt, onehot, retain_graph=True)[0]

        def ours(trace=trace, units=units):
            return project_units_windowed(model, trace, layer, units)

        def check(trace=trace, units=units, x=x):
            # torch through the same switches: see torch_twin.twin (near-tied maxima)
            pinned = twin(model, rule="deconvnet", switches=trace.switches)
            xs = torch.from_numpy(x).requires_grad_()
            o = pinned(xs, upto=layer)
            g = torch.zeros_like(o)
            for n, c, i, j in units:
                g[n, c, i, j] = o[n, c, i, j].detach()
            ref = torch.autograd.grad(o, xs, g)[0].numpy()
            w = project_units_windowed(model, trace, layer, units)
            d = project_units(model, trace, layer, units)
            return (_close(w, d, 1e-5, "windowed vs our dense") + "; "
                    + _close(w, ref, 1e-4, "vs torch autograd deconvnet (our switches)"))

        what = "one activation" if n_units == 1 else "top-9 of one channel (9 images, batched)"
        cases.append(Case("projection", f"{arch} {layer} -> pixels, {what}", n_units, ours, theirs, check,
                          0.33 if n_units == 1 else None,
                          note="ours: receptive-field windowed; torch: dense autograd with the deconvnet ReLU"))
        cases.append(Case("projection", f"{arch} {layer} -> pixels, {what}, our dense pass", n_units,
                          lambda trace=trace, units=units: project_units(model, trace, layer, units), theirs,
                          lambda: "checked above", note="for reference: the dense projection"))
    return cases


# -- driver -----------------------------------------------------------------------------


def run_cases(cases: list[Case], reps: int) -> list[dict]:
    rows = []
    for case in cases:
        label = f"[{case.group}] {case.name} (batch {case.batch})"
        try:
            checked = case.check()
        except AssertionError as e:
            print(f"  FAILED CHECK {label}: {e}")
            rows.append({"case": case, "error": str(e)})
            continue
        t = harness.interleaved({"zfnet": case.ours, "torch": case.theirs}, reps=reps, warmup=case.warmup)
        ratio = t["zfnet"].median / t["torch"].median
        met = "" if case.target is None else ("yes" if ratio <= case.target else "NO")
        print(f"  {label}: zfnet {t['zfnet'].ms()} ms, torch {t['torch'].ms()} ms, ratio {ratio:.2f} {met}"
              f"  [{checked}]", flush=True)
        rows.append({"case": case, "t": t, "ratio": ratio, "met": met, "checked": checked})
    return rows


def write_results(path: Path, env: dict, quiet: dict, rows: list[dict], args, mining: str | None) -> None:
    lines = [] if args.append else ["# Benchmark results", ""]
    lines += [f"## Run with {THREADS} thread{'s' if THREADS > 1 else ''}", "",
              f"Written by `python -m benchmarks --threads {THREADS}` on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
              f" ({'quick' if args.quick else 'full'} run, {args.reps} repetitions after 1 warm-up (4 for a training step), interleaved).", "",
              "### Machine", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "### Quiet-machine check", "",
              "A 1024x1024x1024 float32 GEMM in NumPy, 7 times, before and after the run (GFLOP/s, median "
              "(slowest-fastest)), and the load average (1, 5, 15 min).  A wide spread or a drop after means other "
              "work competed for the cores and the ratios below are noisier.", "",
              f"- before: {quiet['before']} GFLOP/s, load {quiet['load_before']}",
              f"- after: {quiet['after']} GFLOP/s, load {quiet['load_after']}", ""]
    lines += ["### Results", "",
              "Times in ms, median (min-max).  Ratio = zfnet / torch (below 1: zfnet faster).  Each timed call "
              "follows a 0.25 s pause, so that neither library's idle BLAS/OpenMP threads spin during the other's "
              "call.", "",
              "| group | case | batch | zfnet ms | torch ms | ratio | target | met |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        c = r["case"]
        if "error" in r:
            lines.append(f"| {c.group} | {c.name} | {c.batch} | check failed: {r['error']} | | | | |")
            continue
        tgt = "" if c.target is None else f"<= {c.target:g}"
        lines.append(f"| {c.group} | {c.name} | {c.batch} | {r['t']['zfnet'].ms()} | {r['t']['torch'].ms()} | "
                     f"{r['ratio']:.2f} | {tgt} | {r['met']} |")
    roof = [r for r in rows if r["case"].gflop and "t" in r and quiet.get("rate")]
    if roof:
        lines += ["", f"GEMM roofline: each step's GEMM work at the {quiet['rate']:.0f} GFLOP/s the 1024^3 GEMM check "
                      "reached before the run (the fraction reached = roofline time / step time):", ""]
        for r in roof:
            t_roof = r["case"].gflop / quiet["rate"]
            lines.append(f"- {r['case'].name}: roofline {t_roof * 1e3:.0f} ms; zfnet reaches "
                         f"{t_roof / r['t']['zfnet'].median:.0%}, torch {t_roof / r['t']['torch'].median:.0%}")
    notes = [f"- {r['case'].name}: {r['case'].note}" for r in rows if r["case"].note]
    if notes:
        lines += ["", "Notes:", ""] + sorted(set(notes))
    lines += ["", "Checks made before timing:", ""]
    lines += [f"- {r['case'].name} (batch {r['case'].batch}): {r.get('checked', r.get('error'))}" for r in rows]
    if mining:
        lines += ["", mining]
    text = "\n".join(lines) + "\n"
    if args.append and path.exists():
        text = path.read_text().rstrip("\n") + "\n\n" + text
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=THREADS, help="threads for both libraries (default: all cores)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per case (default 7, quick 5)")
    p.add_argument("--quick", action="store_true", help="batch 8 instead of 32, fewer repetitions")
    p.add_argument("--only", default=None, help="run the cases whose group or name contains this")
    p.add_argument("--mining", type=int, default=0, metavar="N",
                   help="also run the mining target over the first N Imagenette val images (slow)")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--append", action="store_true", help="add this run's section to --out instead of replacing it")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="keep freed memory in the process (glibc: no mmap, no trim), as `zfnet train` does; "
                        "per process, so both libraries get it")
    p.add_argument("--openblas-timeout", type=int, default=None, metavar="N",
                   help="OPENBLAS_THREAD_TIMEOUT for this run: OpenBLAS's idle threads spin 2**N cycles "
                        "(4-30; OpenBLAS's default 28); `zfnet train` uses 4, so use it for the 'train step' rows")
    args = p.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 7)
    big = 8 if args.quick else 32

    env = harness.environment(THREADS)
    if args.keep_freed_memory:
        from zfnet._memory import keep_freed_memory

        env["allocator"] = ("glibc keeps freed memory (M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1), for both libraries"
                            if keep_freed_memory() else "--keep-freed-memory asked for, but this C library is not glibc")
    for k, v in env.items():
        print(f"{k}: {v}")
    quiet = {"load_before": harness.loadavg()}
    gemm = harness.gemm_check()
    quiet["before"], quiet["rate"] = harness.gflops(gemm), 2.0 * 1024**3 / 1e9 / gemm.median
    print(f"GEMM check before: {quiet['before']} GFLOP/s, load {quiet['load_before']}", flush=True)

    cases = op_cases(big) + network_cases((1, big), args.quick) + projection_cases() + train_step_cases(big)
    if args.only:
        cases = [c for c in cases if args.only in c.group or args.only in c.name]
    rows = run_cases(cases, args.reps)

    mining = None
    if args.mining:
        from .mining import mining_report

        mining = mining_report(args.mining, THREADS)
        print(mining)

    quiet["after"] = harness.gflops(harness.gemm_check())
    quiet["load_after"] = harness.loadavg()
    print(f"GEMM check after: {quiet['after']} GFLOP/s, load {quiet['load_after']}")
    write_results(Path(args.out), env, quiet, rows, args, mining)
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0
