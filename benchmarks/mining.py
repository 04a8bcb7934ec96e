"""The mining target: top-9 mining over the Imagenette val images vs forward-only.

Issue 6 asks that mining the top 9 of every channel of conv1..conv5 over the 3,925
Imagenette val images costs within 15% of the forward pass alone (to conv5) over the
same images, and that its peak memory does not grow with the number of images
(the miner streams: a ``(C, 9)`` table per layer, whatever the dataset size).

Each measurement runs in its own process, so that its peak resident memory
(``ru_maxrss``) is its own::

    python -m benchmarks.mining --images 3925 --mode forward
    python -m benchmarks.mining --images 3925 --mode mine
    python -m benchmarks.mining --report --images 3925 --threads 1 --out benchmarks/RESULTS.md

prints one JSON line; :func:`mining_report` runs forward / mine over N images and
mine over 1,000 and writes the markdown section of RESULTS.md.  The data is read
from ``../shared/data/imagenette/val`` (decoded on the calling thread, so loading
time is the same in both modes and is reported separately).  Weights are ZFNet's
random initialisation: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAL = ROOT.parent / "shared" / "data" / "imagenette" / "val"


def measure(images: int, mode: str, batch: int) -> dict:
    """Forward (``mode="forward"``) or mine (``"mine"``) over the first ``images`` images."""
    import resource

    from zfnet.data import ImageBatches
    from zfnet.deconvnet.topk import TopK, mine
    from zfnet.figures.top9 import transform_for
    from zfnet.models import zfnet

    model = zfnet()
    layers = model.conv_layer_names()  # conv1 .. conv5
    top = layers[-1]
    batches = ImageBatches(VAL, transform_for(model), batch_size=batch, workers=0, stop=images)

    def forward(x):
        return model.forward(x, upto=top, keep=layers, caches=False).activations

    t0 = time.perf_counter()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    if mode == "forward":
        n = 0
        for b in batches:
            forward(b.images)
            n += len(b.indices)
    else:
        shapes = {name: shape[1:] for name, shape in model.shapes((1, 3) + tuple(model.input_size)) if name in layers}
        state = mine(forward, batches, TopK(shapes, k=9))
        n = state.n_images
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "images": n, "seconds": seconds, "seconds_loading": batches.seconds_loading,
            "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,  # robust to other work on the machine
            "peak_rss_mib": usage.ru_maxrss / 1024, "batch": batch}  # ru_maxrss: KiB on Linux


def _run(images: int, mode: str, batch: int, threads: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "benchmarks.mining", "--images", str(images), "--mode", mode, "--batch", str(batch)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mining_report(images: int, threads: int, batch: int = 32) -> str:
    """Run the mining measurements and return a markdown section."""
    if not VAL.is_dir():
        return f"## Mining\n\nNot measured: {VAL} is absent."
    small = min(1000, images)
    runs = []
    for mode, n in (("forward", images), ("mine", images), ("mine", small), ("forward", small)):
        r = _run(n, mode, batch, threads)
        print(f"  {mode} {r['images']} images: {r['seconds']:.1f} s (loading {r['seconds_loading']:.1f} s), "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
        runs.append(r)
    fwd, mine_, mine_small, fwd_small = runs
    ratio = mine_["seconds"] / fwd["seconds"]
    compute = (mine_["seconds"] - mine_["seconds_loading"]) / (fwd["seconds"] - fwd["seconds_loading"])
    ratio_small = mine_small["seconds"] / fwd_small["seconds"]
    lines = [
        "## Mining (top 9 of every channel of conv1..conv5, ZFNet, Imagenette val)", "",
        f"Each row is its own process (peak RSS is that process's); batch {batch}, {threads} thread(s), images decoded "
        "on the calling thread.", "",
        "| run | images | seconds | of which loading | CPU seconds | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        cpu = f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "n/a"
        lines.append(f"| {r['mode']} | {r['images']} | {r['seconds']:.1f} | {r['seconds_loading']:.1f} | {cpu} | "
                     f"{r['peak_rss_mib']:.0f} |")
    lines += [
        "",
        f"- mining / forward-only over {fwd['images']} images: **{ratio:.3f}** (target <= 1.15: "
        f"{'met' if ratio <= 1.15 else 'NOT met'}); without the loading time: {compute:.3f}; "
        f"over {fwd_small['images']} images: {ratio_small:.3f}"
        + (f"; in CPU seconds (less sensitive to other work on the machine): "
           f"{mine_['cpu_seconds'] / fwd['cpu_seconds']:.3f}" if "cpu_seconds" in fwd and "cpu_seconds" in mine_ else "")
        + ".",
        f"- peak memory, mining {mine_small['images']} vs {mine_['images']} images: "
        f"{mine_small['peak_rss_mib']:.0f} vs {mine_['peak_rss_mib']:.0f} MiB "
        f"({(mine_['peak_rss_mib'] / mine_small['peak_rss_mib'] - 1) * 100:+.1f}%).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mining", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3925)
    p.add_argument("--mode", choices=["forward", "mine"], default="mine")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--report", action="store_true", help="run all four measurements and print the markdown")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=None, help="with --report: append the markdown to this file")
    args = p.parse_args(argv)
    if args.report:
        text = mining_report(args.images, args.threads, args.batch)
        print(text)
        if args.out:
            path = Path(args.out)
            old = path.read_text().rstrip("\n") + "\n\n" if path.exists() else ""
            path.write_text(old + text + "\n")
    else:
        print(json.dumps(measure(args.images, args.mode, args.batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
