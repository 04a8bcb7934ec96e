"""SqueezeNet v1.0 (real ImageNet weights) top-1 / top-5 on Imagenette val.

The whole pipeline on a genuinely trained network: Caffe weights loaded by
``zfnet.weights.load``, images decoded and preprocessed by ``zfnet.data``, the
forward pass of ``zfnet.models.squeezenet1_0``.  Accuracy is the 1000-way argmax
(no restriction to the 10 Imagenette classes); an image's label is the ImageNet
index of its folder's wnid (line number in ``imagenet_classes.txt``).

Two geometries:

* ``caffe``: short side to 256, centre crop 227 (the Caffe evaluation protocol);
* ``direct``: the 224x224 Imagenette images resized straight to 227.

Both: BGR, 0..255 minus the mean (104, 117, 123).  An independent NumPy forward
pass measured 55.3% / 79.2% (caffe) and 56.7% / 80.5% (direct) on these images.

Usage (from the repository root)::

    python benchmarks/squeezenet_accuracy.py                 # both geometries
    python benchmarks/squeezenet_accuracy.py --geometry caffe --limit 200 --out acc.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zfnet.data import ImageBatches, ImageFolder, Transform, TransformConfig  # noqa: E402
from zfnet.weights import load  # noqa: E402

SHARED = ROOT.parent / "shared"
GEOMETRIES = {"caffe": {"resize": 256}, "direct": {"resize": None}}


def evaluate(model, folder: ImageFolder, labels: np.ndarray, geometry: str, batch_size: int,
             limit: int | None, workers: int) -> dict:
    """Top-1/top-5 counts of ``model`` over ``folder`` with one geometry."""
    config = TransformConfig.from_dict({**model.config, **GEOMETRIES[geometry]})
    batches = ImageBatches(folder, Transform(config), batch_size=batch_size, workers=workers,
                           stop=min(limit or len(folder), len(folder)))
    top1 = top5 = n = 0
    t0 = time.perf_counter()
    for batch in batches:
        scores = model.forward(batch.images, keep=()).output  # (B, 1000)
        y = labels[batch.indices]  # (B,)
        top = np.argsort(-scores, axis=1)[:, :5]  # (B, 5)
        top1 += int((top[:, 0] == y).sum())
        top5 += int((top == y[:, None]).any(axis=1).sum())
        n += len(y)
        print(f"\r{geometry}: {n}/{batches.stop} images, top-1 {top1 / n:.1%}, top-5 {top5 / n:.1%}",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {"geometry": geometry, "images": n, "top1": top1 / max(n, 1), "top5": top5 / max(n, 1),
            "top1_correct": top1, "top5_correct": top5, "skipped": [s._asdict() for s in batches.skipped],
            "seconds": round(time.perf_counter() - t0, 1), "preprocess": config.to_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=SHARED / "weights/squeezenet1_0/squeezenet1_0_deep_compression.npz",
                   help="SqueezeNet v1.0 ImageNet weights (Caffe-named .npz)")
    p.add_argument("--data", default=SHARED / "data/imagenette/val", help="Imagenette val folder (<wnid>/<image>)")
    p.add_argument("--classes", default=SHARED / "data/imagenet_classes.txt",
                   help="1000 lines 'wnid name' in ImageNet index order")
    p.add_argument("--geometry", choices=["caffe", "direct", "both"], default="both")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--workers", type=int, default=1, help="image-decoding threads")
    p.add_argument("--limit", type=int, help="only the first N images (in folder order)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    needed = [("--weights", args.weights, "SqueezeNet v1.0 ImageNet weights (Caffe-named .npz)", Path.is_file),
              ("--data", args.data, "the Imagenette validation images, <wnid>/<image>", Path.is_dir),
              ("--classes", args.classes, "ImageNet's 1000 classes, lines 'wnid name' in index order", Path.is_file)]
    missing = [(opt, path, what) for opt, path, what, ok in needed if not ok(Path(path))]
    if missing:
        print("squeezenet_accuracy: missing input; this benchmark needs (found beside the repository in "
              f"{SHARED} on the project's machines, or given with the options):", file=sys.stderr)
        for opt, path, what in missing:
            print(f"  {opt} {path}: {what}", file=sys.stderr)
        return 2

    wnids = [line.split()[0] for line in Path(args.classes).read_text().splitlines() if line.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    folder = ImageFolder(args.data)
    labels = np.array([index[folder.label(i)] for i in range(len(folder))])  # (N,)
    model = load(args.weights, arch="squeezenet1_0")
    results = []
    for geometry in (["caffe", "direct"] if args.geometry == "both" else [args.geometry]):
        r = evaluate(model, folder, labels, geometry, args.batch_size, args.limit, args.workers)
        results.append(r)
        print(f"{geometry:>7}: top-1 {r['top1']:.2%} ({r['top1_correct']}/{r['images']}), "
              f"top-5 {r['top5']:.2%} ({r['top5_correct']}/{r['images']}), "
              f"{len(r['skipped'])} skipped, {r['seconds']} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"weights": str(args.weights), "data": str(args.data),
                                              "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
