"""Mining on a Dask cluster against one process (issue 18's measurements).

Top 9 of every channel of ZFNet's conv1..conv5 over the Imagenette val images, mining
only (no projections or figures), four ways, each in its own process so thread
counts and peak memory are its own:

* one process, 1 thread and 2 threads (``zfnet.deconvnet.topk.mine``);
* a local Dask cluster of 1 and 2 worker processes, one thread each
  (``zfnet.cluster.mine_on_cluster``), shards of ``--shard-size`` images.

Every run decodes with one helper thread (``--decode-threads 1``), the same in all
four.  The cluster runs report their wall time from the first task submitted to the
merged state, the per-shard overhead (wall time of the 1-worker run minus the
1-thread single process, divided by the number of shards), the shard size that keeps
that overhead under 2%, and each worker's peak resident memory::

    python -m benchmarks.cluster --images 3925 --out benchmarks/RESULTS.md --append

Weights are ZFNet's random initialisation (speed does not depend on them); the data
is read from ``../shared/data/imagenette/val``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAL = ROOT.parent / "shared" / "data" / "imagenette" / "val"


def _setup(images: int):
    from zfnet.data import ImageFolder
    from zfnet.deconvnet.topk import TopK, paths_digest
    from zfnet.figures.top9 import activation_shapes, transform_for
    from zfnet.models import zfnet

    model = zfnet()
    model.eval()
    layers = model.conv_layer_names()
    transform = transform_for(model)
    folder = ImageFolder(VAL)
    n = min(images, len(folder))
    shapes = activation_shapes(model, layers, transform.config.input_size)
    fingerprint = {"arch": model.arch, "paths_sha256": paths_digest(folder.paths), "n_files": len(folder)}
    return model, layers, transform, folder, n, shapes, fingerprint, TopK


def single(images: int, batch: int, decode: int = 1) -> dict:
    """One process, the threads its environment sets."""
    import resource

    from zfnet.data import ImageBatches
    from zfnet.deconvnet.topk import mine

    model, layers, transform, folder, n, shapes, fingerprint, TopK = _setup(images)
    state = TopK(shapes, 9, fingerprint)
    batches = ImageBatches(folder, transform, batch_size=batch, workers=decode, stop=n)
    top = layers[-1]
    t0 = time.perf_counter()
    mine(lambda x: model.forward(x, upto=top, keep=layers, caches=False).activations, batches, state)
    seconds = time.perf_counter() - t0
    return {"mode": "single", "threads": int(os.environ.get("OMP_NUM_THREADS", "0")), "images": n,
            "seconds": seconds, "images_per_s": n / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _worker_rss():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cluster(images: int, batch: int, workers: int, shard_size: int, out: Path, decode: int = 1) -> dict:
    """A local cluster of ``workers`` processes, one thread each."""
    from zfnet.cluster import cluster_client, mine_on_cluster, plan_shards

    model, layers, transform, folder, n, shapes, fingerprint, TopK = _setup(images)
    with cluster_client(workers) as client:  # the local cluster `zfnet top9 --workers N` starts
        client.run(lambda: None)  # workers are up before the clock starts
        t0 = time.perf_counter()
        state = mine_on_cluster(client, model, folder, transform, layers, shapes, 9, fingerprint, n,
                                batch_size=batch, shard_size=shard_size, threads=decode, shards_dir=out / "shards")
        seconds = time.perf_counter() - t0
        rss = client.run(_worker_rss)
    return {"mode": "cluster", "workers": workers, "images": n, "shard_size": shard_size,
            "shards": len(plan_shards(n, shard_size, batch)), "seconds": seconds, "images_per_s": n / seconds,
            "n_images": state.n_images, "worker_peak_rss_mib": sorted(rss.values())}


def _run(args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.cluster", *args], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(images: int, batch: int, shard_size: int, tmp: Path, decode: int = 1) -> str:
    rows = []
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), ZFNET_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads))
        rows.append(_run(["--one", "single", "--images", str(images), "--batch", str(batch),
                          "--decode-threads", str(decode)], env))
        print(rows[-1], flush=True)
    for workers in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS="1", ZFNET_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        rows.append(_run(["--one", "cluster", "--images", str(images), "--batch", str(batch), "--workers",
                          str(workers), "--shard-size", str(shard_size), "--tmp", str(tmp / f"w{workers}"),
                          "--decode-threads", str(decode)], env))
        print(rows[-1], flush=True)
    s1, s2, c1, c2 = rows
    overhead = (c1["seconds"] - s1["seconds"]) / c1["shards"]
    per_shard = shard_size / s1["images_per_s"]  # seconds of mining in one shard at 1 thread
    # overhead / (S / rate) < 2%  <=>  S > overhead * rate / 0.02; rounded up to whole batches
    smallest = overhead * s1["images_per_s"] / 0.02
    size_2pct = batch * max(1, math.ceil(smallest / batch))
    lines = [
        "## Mining on a Dask cluster (issue 18)",
        "",
        f"*{time.strftime('%Y-%m-%d')}, `python -m benchmarks.cluster --images {images}`: ZFNet (random weights), "
        f"top 9 of every channel of conv1..conv5 over the first {images:,} Imagenette val images, mining only, "
        f"batch {batch}, {decode} image-decoding thread(s) per process, each row its own process(es).*",
        "",
        "| run | images/s | seconds | vs 1 worker | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| one process, 1 thread | {s1['images_per_s']:.1f} | {s1['seconds']:.1f} | | {s1['peak_rss_mib']:.0f} |",
        f"| one process, 2 threads | {s2['images_per_s']:.1f} | {s2['seconds']:.1f} | | {s2['peak_rss_mib']:.0f} |",
        f"| Dask, 1 worker ({c1['shards']} shards of {shard_size}) | {c1['images_per_s']:.1f} | {c1['seconds']:.1f} | "
        f"1.00 | {', '.join(f'{r:.0f}' for r in c1['worker_peak_rss_mib'])} (worker) |",
        f"| Dask, 2 workers ({c2['shards']} shards of {shard_size}) | {c2['images_per_s']:.1f} | {c2['seconds']:.1f} | "
        f"**{c1['seconds'] / c2['seconds']:.2f}** | {', '.join(f'{r:.0f}' for r in c2['worker_peak_rss_mib'])} "
        "(each worker) |",
        "",
        f"- 2 workers / 1 worker: **{c1['seconds'] / c2['seconds']:.2f}x** (target >= 1.8x: "
        f"{'met' if c1['seconds'] / c2['seconds'] >= 1.8 else 'NOT met'}); 2 workers / one process with 2 threads: "
        f"{s2['seconds'] / c2['seconds']:.2f}x.",
        f"- Per-shard overhead (1 worker minus the 1-thread process, per shard): {overhead:.2f} s, "
        f"{100 * overhead / per_shard:.1f}% of a {shard_size}-image shard's {per_shard:.1f} s of mining; "
        f"shards of at least {size_2pct} images keep it under 2%.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3925)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2, help="with --one cluster: local workers (the report runs 1 and 2)")
    p.add_argument("--decode-threads", type=int, default=1, help="image decoding threads per process (0: decode "
                   "on the computing thread, so a process uses one core)")
    p.add_argument("--one", choices=("single", "cluster"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/zfnet-cluster-bench")
    p.add_argument("--out", default=None, help="markdown file to write the section to")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    a = p.parse_args(argv)
    if a.one == "single":
        print(json.dumps(single(a.images, a.batch, a.decode_threads)))
        return 0
    if a.one == "cluster":
        print(json.dumps(cluster(a.images, a.batch, a.workers, a.shard_size, Path(a.tmp), a.decode_threads)))
        return 0
    text = report(a.images, a.batch, a.shard_size, Path(a.tmp), a.decode_threads)
    print(text)
    if a.out:
        with open(a.out, "a" if a.append else "w", encoding="utf-8") as fh:
            fh.write(("\n" if a.append else "") + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
