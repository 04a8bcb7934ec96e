"""The whole top-9 job: mine a folder, project the chosen units, draw, write a gallery.

:func:`run_top9` is what ``zfnet top9`` and ``zfnet demo`` call.  Outputs, all under
``out``::

    top9.json            every mined result: layer, channel, rank, image path, y, x, value
                         (and the unit's receptive-field box), plus what was mined with what
    topk_state.npz/.json the miner's state (``--resume`` continues from it)
    topk_paths.json      the list of files mined (a resume after deletions keeps its indices)
    fig2_<layer>.png     Fig. 2 style picture per layer
    filters_conv1.png    first-layer filters (when the first layer sees RGB)
    gallery/index.html   the offline gallery
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._files import atomic_write, output_lock, remove_stale_parts
from ..backend import to_device as _to_device
from ..data import ImageBatches, ImageFolder, ImageReadError, Transform, summarize_skips
from ..data.images import display_path
from ..data.transforms import Skipped
from ..deconvnet.receptive_field import receptive_fields, unit_box
from ..deconvnet.topk import TopK, mine, paths_digest
from ..errors import ConfigError
from .fig2 import layer_figure, select_units, unit_block
from .filters import filter_grid, filter_tiles
from .gallery import slug, write_gallery
from .render import save_png
from .units import UnitView, unit_views

__all__ = ["transform_for", "first_layer_weight", "activation_shapes", "run_top9", "Top9Result", "peak_rss_mib",
           "Top9Options", "Mined", "mine_step", "records_step", "projections_step", "figures_step", "gallery_step"]


def transform_for(model) -> Transform:
    """The preprocessing that goes with ``model``'s weights: :meth:`Network.transform <zfnet.models.Network.transform>`."""
    return model.transform()


def first_layer_weight(model) -> tuple[str, np.ndarray] | None:
    """``(name, OIHW weight)`` of the first layer when it is a conv on 3 channels, else None."""
    first = model.layers[0]
    w = getattr(first, "weight", None)
    if w is None or getattr(w, "ndim", 0) != 4 or w.shape[1] != 3:
        return None
    from ..backend import asnumpy

    return first.name, asnumpy(w)


def activation_shapes(model, layers: Sequence[str], input_size) -> dict[str, tuple[int, ...]]:
    """Shape (without batch) of each named activation, by one forward pass on zeros."""
    names = model.layer_names()
    bad = [l for l in layers if l not in names]
    if bad:
        raise ConfigError(f"{model.arch} has no layer(s) {bad}; layers are: {', '.join(names)}")
    top = max(layers, key=names.index)
    x = np.zeros((1, 3) + tuple(input_size), np.float32)
    acts = model.forward(x, upto=top, keep=layers, caches=False).activations
    return {l: tuple(int(s) for s in acts[l].shape[1:]) for l in layers}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (``getrusage`` maxrss)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


@dataclass
class Top9Result:
    """What :func:`run_top9` did, for the summary paragraph and for tests."""

    out: Path
    state: TopK
    n_files: int
    n_read: int
    skipped: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    seconds_mining: float
    seconds_total: float
    images_per_second: float
    peak_rss_mib: float
    resumed_from: int
    peak_rss_mining_mib: float = 0.0
    figures: dict[str, Path] = field(default_factory=dict)
    gallery: Path | None = None
    weights_label: str = ""
    ignored: list[str] = field(default_factory=list)
    lost: dict[int, dict] = field(default_factory=dict)  # mined images unreadable at figure time
    deleted_since_start: list[str] = field(default_factory=list)  # gone between the first run and --resume

    def summary(self) -> str:
        """The one-paragraph account printed at the end of a run."""
        skipped = [Skipped(s["index"], s["path"], s["kind"], s["detail"]) for s in self.skipped]
        from ..data.transforms import Note

        notes = [Note(n["index"], n["path"], n["text"]) for n in self.notes]
        text = summarize_skips(self.state.n_images, skipped, notes)
        resumed = f" (resumed at image {self.resumed_from:,})" if self.resumed_from else ""
        layers = ", ".join(f"{n} ({t.channels} ch)" for n, t in self.state.layers.items())
        firing = self.state.firing_counts(0.0)
        dead = ", ".join(f"{n} {int((f == 0).sum())} of {len(f)}" for n, f in firing.items())
        weak = sum(int(((f > 0) & (f < self.state.k)).sum()) for f in firing.values())
        units = (f"Dead units (never fired on these images): {dead}; {weak} more fired in fewer than "
                 f"{self.state.k} images (their empty slots are left empty). ")
        return (
            f"Mined the top {self.state.k} of {layers} over {self.n_files:,} files{resumed} with "
            f"{self.weights_label or 'the given weights'}: {text}. "
            + _ignored_sentence(self.ignored)
            + _lost_sentence(self.lost)
            + (f"Resumed over the list the run started with: {len(self.deleted_since_start):,} file(s) deleted "
               f"since then ({', '.join(self.deleted_since_start[:3])}{', ...' if len(self.deleted_since_start) > 3 else ''}). "
               if self.deleted_since_start else "")
            + units
            + (f"Mining took {self.seconds_mining:.1f} s ({self.images_per_second:.1f} images/s), "
               if self.images_per_second > 0 else "Nothing was left to mine. ")
            + f"everything {self.seconds_total:.1f} s; "
            f"peak memory {self.peak_rss_mining_mib:.0f} MiB while mining, {self.peak_rss_mib:.0f} MiB in all. Results: {self.out / 'top9.json'}; figures: "
            + (", ".join(str(p) for p in self.figures.values()) or "none")
            + (f"; gallery: {self.gallery}" if self.gallery else "")
            + "."
        )


def _ignored_sentence(paths: list[str]) -> str:
    """'2 files with extensions no image reader knows were not read (a.txt, b.csv; ...). ' or ''."""
    if not paths:
        return ""
    many = len(paths) != 1
    names = ", ".join(display_path(p) for p in paths[:5]) + (", ..." if len(paths) > 5 else "")
    return (f"{len(paths):,} file{'s' if many else ''} with extensions no image reader knows "
            f"{'were' if many else 'was'} not read ({names}; listed under 'ignored' in top9.json). ")


def _resume_listing(folder: ImageFolder, paths_path: Path) -> tuple[ImageFolder, list[str]]:
    """The folder as the interrupted run listed it, when files have only been deleted since.

    A resumed run must index images as the run it continues did.  If the folder now
    lists exactly what ``topk_paths.json`` recorded, nothing changes.  If files were
    only deleted, the recorded list is used (the deleted files are skipped with a
    reason when mining reaches them; records of ones already mined keep their slots
    empty in the figures); returns ``(folder, deleted paths)``.  Files *added* since
    make the lists incompatible: the fingerprint check then refuses the resume.
    """
    if not paths_path.is_file():
        return folder, []
    try:
        saved = json.loads(paths_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return folder, []
    if not isinstance(saved, list) or saved == folder.paths:
        return folder, []
    now = set(folder.paths)
    gone = [p for p in saved if p not in now]
    if not gone or len(now) + len(gone) != len(saved):  # files were added or renamed
        return folder, []
    return folder.with_paths(saved), gone


def _remove_stale_figures(out: Path, written) -> list[Path]:
    """Delete ``fig2_*.png`` and ``filters_*.png`` in ``out`` that this run did not write.

    A re-run into the same folder with fewer layers (or another model) must not
    leave figures of the earlier run beside the new ``top9.json``.
    """
    keep = {Path(p).resolve() for p in written}
    removed = []
    for pattern in ("fig2_*.png", "filters_*.png"):
        for p in out.glob(pattern):
            if p.resolve() not in keep:
                p.unlink()
                removed.append(p)
    return removed


def _lost_sentence(lost: dict[int, dict]) -> str:
    """'2 mined images could not be read again for the figures (a.jpg: ...); ...' or ''."""
    if not lost:
        return ""
    items = list(lost.values())
    names = "; ".join(f"{x['path']}: {x['reason']}" for x in items[:3]) + ("; ..." if len(items) > 3 else "")
    return (f"{len(items):,} mined image{'s' if len(items) != 1 else ''} could not be read again for the figures "
            f"({names}): their records stay in top9.json (unreadable_at_figures), their slots are left empty. ")


def _progress_bar(total: int, initial: int, desc: str, enabled: bool, unit: str = "img"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def run_top9(
    model,
    images: str | os.PathLike | ImageFolder,
    out: str | os.PathLike,
    *,
    layers: Sequence[str] | None = None,
    k: int = 9,
    units: int | str | Sequence[int] = 16,
    resume: bool = False,
    batch_size: int = 32,
    workers: int = 2,
    seed: int = 0,
    transform: Transform | None = None,
    weights_label: str = "",
    weights_digest: str = "",
    save_every: int = 20,
    rule: str = "deconvnet",
    tile: int = 48,
    gallery: bool = True,
    progress: bool = True,
    device: str | None = None,
    stop: int | None = None,
    cluster: Any = None,
    shard_size: int | None = None,
) -> Top9Result:
    """Mine, project, draw and write everything for one model and one image folder.

    Parameters
    ----------
    model : Network
    images : folder path or ImageFolder
    out : path
        Output folder.
    layers : list of str, optional
        Layers to mine; default every feature layer (:meth:`Network.feature_layer_names`).
    k : int
        Top k per channel.
    units : int, "all" or list of int
        Units drawn per layer (:func:`~zfnet.figures.select_units`).  All channels
        are mined and written to ``top9.json`` regardless.
    resume : bool
        Continue from ``out/topk_state.npz`` if it exists (it must come from the
        same model, weights, folder and preprocessing).
    batch_size, workers : int
        Mining batch size; threads decoding images.
    seed : int
        For the choice of units.
    transform : Transform, optional
        Default :func:`transform_for` ``(model)``.
    weights_label, weights_digest : str
        Shown in summaries; the digest is part of the state's fingerprint.
    save_every : int
        Checkpoint the miner every this many batches.
    rule : {"deconvnet", "backprop", "guided"}
    tile : int
        Patch size in the figures, pixels.
    gallery : bool
        Write ``out/gallery``.
    progress : bool
        tqdm progress bars.
    device : {"cpu", "gpu"}, optional
        Where the model computes; default: where its parameters are (``model.xp``),
        so a model moved with ``model.to("gpu")`` needs nothing more.  Given, it must
        agree with the model (a ``ConfigError`` otherwise).
    stop : int, optional
        Mine only files ``[0, stop)`` (tests, quick looks).
    cluster : int, str or distributed.Client, optional
        Mine and project on a Dask cluster (:mod:`zfnet.cluster`): a number of
        local worker processes (one thread each), a scheduler address, or a
        client.  ``top9.json`` is identical to the single-process one.  Finished
        shards are saved in ``out/shards/``; ``resume=True`` mines only the others.
        Needs ``dask.distributed`` (``pip install 'zfnet[dask]'``).
    shard_size : int, optional
        Images per shard (rounded up to a multiple of ``batch_size``); default
        :data:`zfnet.cluster.DEFAULT_SHARD_SIZE`.

    Returns
    -------
    Top9Result
    """
    on_gpu = model.xp is not np
    if device is None:
        device = "gpu" if on_gpu else "cpu"
    elif (device == "gpu") != on_gpu:
        raise ConfigError(f"run_top9: device={device!r}, but the model's parameters are on the "
                          f"{'GPU' if on_gpu else 'CPU'}; call model.to({device!r}) first, or leave device out")
    opts = Top9Options(layers=layers, k=k, units=units, resume=resume, batch_size=batch_size, workers=workers,
                       seed=seed, transform=transform, weights_label=weights_label, weights_digest=weights_digest,
                       save_every=save_every, rule=rule, tile=tile, gallery=gallery, progress=progress,
                       device=device, stop=stop, cluster=cluster, shard_size=shard_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, "zfnet top9"):
        remove_stale_parts(out)  # what a killed run's atomic writes left behind
        return _run_top9(model, images, out, opts)


@dataclass
class Top9Options:
    """Everything :func:`run_top9` is told besides the model, the images and the output folder.

    The fields are :func:`run_top9`'s keyword arguments, with the same meanings and
    defaults.  Each step of the run (:func:`mine_step`, :func:`records_step`,
    :func:`projections_step`, :func:`figures_step`, :func:`gallery_step`) reads it.
    """

    layers: Sequence[str] | None = None
    k: int = 9
    units: int | str | Sequence[int] = 16
    resume: bool = False
    batch_size: int = 32
    workers: int = 2
    seed: int = 0
    transform: Transform | None = None
    weights_label: str = ""
    weights_digest: str = ""
    save_every: int = 20
    rule: str = "deconvnet"
    tile: int = 48
    gallery: bool = True
    progress: bool = True
    device: str = "cpu"
    stop: int | None = None
    cluster: Any = None
    shard_size: int | None = None


@dataclass
class Mined:
    """What :func:`mine_step` hands to the later steps."""

    folder: ImageFolder
    transform: Transform
    layers: list[str]
    shapes: dict
    state: TopK
    n_files: int
    start: int
    lost_since: list[str]
    seconds: float
    rss_mib: float
    rate: float


# Tests only: raise KeyboardInterrupt after this many mining batches (an interrupted run).
_INTERRUPT_AFTER: int | None = None


def _run_top9(model, images, out: Path, opts: Top9Options) -> Top9Result:
    """:func:`run_top9`'s steps, run while holding the lock on ``out``."""
    t_start = time.perf_counter()
    if opts.cluster is None:
        client_context = contextlib.nullcontext(None)
    else:
        from ..cluster import cluster_client

        client_context = cluster_client(opts.cluster)
    with client_context as client:
        mined = mine_step(model, images, out, opts, client=client)
        records, doc = records_step(model, out, opts, mined)
        by_layer, views, lost, decoded = projections_step(model, out, opts, mined, records, doc, client=client)
    figures, thumbs, first = figures_step(model, out, opts, mined, by_layer)
    gallery_index = gallery_step(model, out, opts, mined, by_layer, views, lost, figures, thumbs, first, decoded)
    _remove_stale_figures(out, figures.values())
    folder, state = mined.folder, mined.state
    return Top9Result(
        out=out, state=state, n_files=mined.n_files, n_read=state.n_images, skipped=state.skipped,
        notes=state.notes, seconds_mining=mined.seconds, seconds_total=time.perf_counter() - t_start,
        images_per_second=mined.rate, peak_rss_mib=peak_rss_mib(), resumed_from=mined.start,
        peak_rss_mining_mib=mined.rss_mib, figures=figures, gallery=gallery_index,
        weights_label=opts.weights_label, ignored=list(folder.ignored_paths),
        lost={int(n): {"path": display_path(folder.paths[n]), "reason": why} for n, why in sorted(lost.items())},
        deleted_since_start=[display_path(p) for p in mined.lost_since],
    )


def mine_step(model, images, out: Path, opts: Top9Options, client=None) -> Mined:
    """Step 1: the top k of every channel over the folder, checkpointed to ``out/topk_state.npz``.

    With a Dask ``client`` the folder is mined in shards on the cluster
    (:func:`zfnet.cluster.mine_on_cluster`), each finished shard saved in
    ``out/shards/``, and the merged state written to ``out/topk_state.npz``.
    """
    folder = images if isinstance(images, ImageFolder) else ImageFolder(images)
    transform = opts.transform or transform_for(model)
    layers = list(opts.layers) if opts.layers else model.feature_layer_names()
    if not layers:
        raise ConfigError(f"{model.arch}: no layers to mine (give --layers)")
    size = transform.config.input_size
    shapes = activation_shapes(model, layers, size)
    state_path, paths_path = out / "topk_state.npz", out / "topk_paths.json"
    shards_dir = out / "shards"
    lost_since: list[str] = []
    resuming = opts.resume and (state_path.exists() or (client is not None and any(shards_dir.glob("shard-*.npz"))))
    if resuming:
        folder, lost_since = _resume_listing(folder, paths_path)
    n_files = len(folder) if opts.stop is None else min(opts.stop, len(folder))
    fingerprint = {
        "arch": model.arch,
        "weights": opts.weights_digest or opts.weights_label,
        "paths_sha256": paths_digest(folder.paths),
        "n_files": len(folder),
        "transform": transform.config.to_dict(),
    }
    if client is not None:
        return _mine_on_cluster_step(client, model, folder, transform, layers, shapes, fingerprint, n_files,
                                     out, opts, resuming, lost_since)
    start = 0
    if opts.resume and state_path.exists():
        state = TopK.load(state_path)
        fresh = TopK(shapes, opts.k, fingerprint)
        state.check_compatible(fresh, "resume")
        start = state.next_index(0)
    else:
        state = TopK(shapes, opts.k, fingerprint)
        # The list mined, so that a resume after files were deleted keeps every index.
        atomic_write(paths_path, lambda fh: fh.write(json.dumps(folder.paths).encode("utf-8")))
    top = max(layers, key=model.layer_names().index)
    forward = lambda x: model.forward(x, upto=top, keep=layers, caches=False).activations  # noqa: E731
    batches = ImageBatches(folder, transform, batch_size=opts.batch_size, workers=opts.workers,
                           start=min(start, n_files), stop=n_files)
    if _INTERRUPT_AFTER is not None:
        inner, calls, limit = forward, [0], _INTERRUPT_AFTER

        def forward(x):  # noqa: F811 -- the testing hook wraps the real forward
            calls[0] += 1
            if calls[0] > limit:
                raise KeyboardInterrupt
            return inner(x)

    t0 = time.perf_counter()
    n_before = state.n_images
    with _progress_bar(n_files, batches.start, "mining", opts.progress) as bar:
        mine(forward, batches, state, state_path=state_path, save_every=opts.save_every, progress=bar.update,
             to_device=_device_mover(opts))
    seconds = time.perf_counter() - t0
    rate = (state.n_images - n_before) / seconds if seconds > 0 else 0.0
    return Mined(folder=folder, transform=transform, layers=layers, shapes=shapes, state=state, n_files=n_files,
                 start=start, lost_since=lost_since, seconds=seconds, rss_mib=peak_rss_mib(), rate=rate)


def _mine_on_cluster_step(client, model, folder, transform, layers, shapes, fingerprint, n_files, out, opts,
                          resuming, lost_since) -> Mined:
    """:func:`mine_step` on a Dask cluster: shards, saved as they finish, merged in order."""
    from ..cluster import DEFAULT_SHARD_SIZE, mine_on_cluster

    state_path, paths_path = out / "topk_state.npz", out / "topk_paths.json"
    if not resuming:
        state_path.unlink(missing_ok=True)
        atomic_write(paths_path, lambda fh: fh.write(json.dumps(folder.paths).encode("utf-8")))
    elif state_path.exists():  # a finished run (single-process or not): nothing left to mine
        state = TopK.load(state_path)
        state.check_compatible(TopK(shapes, opts.k, fingerprint), "resume")
        if state.covered == [[0, n_files]]:
            return Mined(folder=folder, transform=transform, layers=layers, shapes=shapes, state=state,
                         n_files=n_files, start=n_files, lost_since=lost_since, seconds=0.0, rss_mib=peak_rss_mib(),
                         rate=0.0)
    t0 = time.perf_counter()
    with _progress_bar(n_files, 0, "mining", opts.progress) as bar:
        counts = {"done": 0, "total": 0, "resumed_images": None}

        def progress(images: int, shards: int, total: int) -> None:
            if counts["resumed_images"] is None:  # the first call reports what an earlier run finished
                counts["resumed_images"] = images
            bar.update(images)
            counts["done"] += shards
            counts["total"] = total or counts["total"]
            bar.set_postfix_str(f"shards {counts['done']}/{counts['total']}")

        state = mine_on_cluster(client, model, folder, transform, layers, shapes, opts.k, fingerprint, n_files,
                                batch_size=opts.batch_size, shard_size=opts.shard_size or DEFAULT_SHARD_SIZE,
                                threads=opts.workers, shards_dir=out / "shards", resume=resuming,
                                progress=progress)
    state.save(state_path)
    seconds = time.perf_counter() - t0
    mined_now = n_files - (counts["resumed_images"] or 0)  # files, skipped ones included
    rate = mined_now / seconds if seconds > 0 and mined_now else 0.0
    return Mined(folder=folder, transform=transform, layers=layers, shapes=shapes, state=state, n_files=n_files,
                 start=0, lost_since=lost_since, seconds=seconds, rss_mib=peak_rss_mib(), rate=rate)


def _device_mover(opts: Top9Options):
    """Moves input batches to ``opts.device`` (None on the CPU)."""
    return (lambda a: _to_device(a, opts.device)) if opts.device != "cpu" else None


def _write_doc(out: Path, doc: dict) -> None:
    atomic_write(out / "top9.json", lambda fh: fh.write(json.dumps(doc, indent=0).encode("utf-8")))


def records_step(model, out: Path, opts: Top9Options, mined: Mined) -> tuple[list[dict], dict]:
    """Step 2: ``top9.json``, every result with its receptive-field box; returns ``(records, doc)``."""
    folder, state, k = mined.folder, mined.state, opts.k
    rfs = receptive_fields(model)
    # Only activations where a unit fired (> 0) are exemplars; a unit that fired in
    # fewer than k images gets fewer records, a dead unit none (docs/visualize.md).
    records = state.records(folder.paths, min_value=0.0)
    firing = state.firing_counts(0.0)
    for r in records:
        if r["layer"] in rfs:
            r["box"] = list(unit_box(rfs, r["layer"], r["y"], r["x"], clip=False))
    shown = [dict(r, path=display_path(r["path"])) for r in records]  # JSON-safe names
    doc = {
        "arch": model.arch,
        "weights": opts.weights_label,
        "images": str(folder.root),
        "n_files": len(folder),
        "n_images": state.n_images,
        "k": k,
        "rule": opts.rule,
        "layers": {n: list(s) for n, s in mined.shapes.items()},
        "transform": mined.transform.config.to_dict(),
        "skipped": [dict(x, path=display_path(x["path"])) for x in state.skipped],
        "ignored": [display_path(p) for p in folder.ignored_paths],
        "deleted_since_start": [display_path(p) for p in mined.lost_since],
        "box_note": "box = receptive field (y0, x0, y1, x1) in preprocessed-input pixels, half-open, unclipped",
        "firing_note": (f"results hold only activations > 0 (where the unit fired): a unit that fired in "
                        f"fewer than k = {k} images has fewer results, a dead unit (listed under dead_units) none"),
        "dead_units": {n: [int(c) for c in np.flatnonzero(f == 0)] for n, f in firing.items()},
        "weak_units": {n: {str(int(c)): int(f[c]) for c in np.flatnonzero((f > 0) & (f < k))}
                       for n, f in firing.items()},
        "results": shown,
    }
    _write_doc(out, doc)
    return records, doc


def projections_step(model, out: Path, opts: Top9Options, mined: Mined, records: list[dict], doc: dict,
                     client=None):
    """Step 3: patches and projections of the drawn units; returns ``(by_layer, views, lost, decoded)``.

    ``by_layer[layer][channel]`` lists that unit's :class:`UnitView` s; ``lost`` maps
    images unreadable since mining to why (also added to ``top9.json``); ``decoded``
    holds each image decoded here, once, for the gallery.
    """
    folder = mined.folder
    chosen = {name: select_units(name, t.values[:, 0], opts.units, opts.seed) for name, t in mined.state.layers.items()}
    wanted = [r for r in records if r["channel"] in set(chosen[r["layer"]])]
    with _progress_bar(len(wanted), 0, "projecting", opts.progress, unit="unit") as bar:
        lost: dict[int, str] = {}
        decoded: dict[int, np.ndarray] = {}
        if client is not None:  # on the cluster's workers, in the chunks unit_views forms here
            from ..cluster import views_on_cluster

            views, lost, decoded = views_on_cluster(client, model, folder, mined.transform, wanted, rule=opts.rule,
                                                    progress=bar.update)
        else:
            views = unit_views(model, folder, mined.transform, wanted, rule=opts.rule, progress=bar.update,
                               to_device=_device_mover(opts), unreadable=lost, decoded=decoded)
    views = [v for v in views if v is not None]  # records of images gone since mining keep their slot empty
    if lost:
        doc["unreadable_at_figures"] = [{"image": int(n), "path": display_path(folder.paths[n]), "reason": why}
                                        for n, why in sorted(lost.items())]
        _write_doc(out, doc)
    by_layer: dict[str, dict[int, list[UnitView]]] = {name: {c: [] for c in chosen[name]} for name in mined.layers}
    for v in views:
        by_layer[v.layer][v.channel].append(v)
    return by_layer, views, lost, decoded


def figures_step(model, out: Path, opts: Top9Options, mined: Mined, by_layer):
    """Step 4: the first layer's filters and one Fig. 2 per layer; returns ``(figures, thumbs, first)``."""
    figures: dict[str, Path] = {}
    first = first_layer_weight(model)
    filt_tiles = None
    if first is not None:
        fname, w = first
        order = mined.transform.config.channel_order
        figures[f"filters_{fname}"] = save_png(filter_grid(w, "per-filter", order), out / f"filters_{fname}.png")
        figures[f"filters_{fname}_shared"] = save_png(filter_grid(w, "shared", order),
                                                      out / f"filters_{fname}_shared.png")
        filt_tiles = dict(enumerate(filter_tiles(w, "per-filter", order)))
    thumbs: dict[str, dict[int, np.ndarray]] = {}
    for name in mined.layers:
        fl = filt_tiles if (first is not None and name == first[0]) else None
        fig = layer_figure(name, by_layer[name], k=opts.k, tile=opts.tile, filters=fl)
        figures[name] = save_png(fig, out / f"fig2_{slug(name)}.png")
        thumbs[name] = {c: unit_block(vs, opts.k, 24, None if fl is None else fl.get(c))
                        for c, vs in by_layer[name].items()}
    return figures, thumbs, first


def gallery_step(model, out: Path, opts: Top9Options, mined: Mined, by_layer, views, lost, figures, thumbs, first,
                 decoded: dict | None = None):
    """Step 5: the offline HTML gallery (``out/gallery``), or its removal with ``gallery=False``.

    ``decoded`` (from :func:`projections_step`): pictures already decoded, not decoded again.
    """
    if not opts.gallery:
        if (out / "gallery").is_dir():
            shutil.rmtree(out / "gallery")  # a gallery of an earlier run would not match these results
        return None
    folder, state, k = mined.folder, mined.state, opts.k
    pictures = {}
    for v in views:
        if v.image in (decoded or {}):
            pictures[v.image] = decoded[v.image]
        elif v.image not in pictures and v.image not in lost:
            try:
                pictures[v.image] = mined.transform.geometry(folder[v.image])
            except (ImageReadError, OSError) as e:
                lost[v.image] = str(getattr(e, "detail", e))
    extra = [(f"{first[0]} filters, per-filter scaling", figures[f"filters_{first[0]}"]),
             (f"{first[0]} filters, shared scaling", figures[f"filters_{first[0]}_shared"])] if first else []
    notes = (f"{model.arch} with {opts.weights_label or 'the given weights'}; top {k} of every channel over "
             f"{state.n_images:,} images of {folder.root}; {len(state.skipped)} files skipped. "
             f"Projections use the {opts.rule} rule.")
    return write_gallery(out / "gallery", by_layer, pictures=pictures, layer_figures=figures,
                         extra_figures=extra, title=f"{model.arch}: top-{k} units", notes=notes,
                         unit_thumbs=thumbs, k=k)
