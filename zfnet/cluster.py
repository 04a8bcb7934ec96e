"""Top-k mining and unit projections on a Dask cluster (``zfnet top9 --workers/--scheduler``).

One process mines about 26 images/s to conv5 on two cores; ImageNet train takes it
14 hours.  The miner's state (:class:`~zfnet.deconvnet.topk.TopK`) merges exactly, so
the work splits into *shards*: contiguous ranges of image indices, each mined into
its own state by a Dask task.  The driver merges the states in shard order and writes
``top9.json`` and the figures as a single process would::

    driver                                  workers (one thread each)
    ------                                  -------------------------
    model -> one task holding it            receive it once per worker
    shards [0, S), [S, 2S), ...   ------>   ImageBatches(start=lo, stop=hi) -> mine -> TopK
    merge in shard order; save each  <----
    shard's state in OUT/shards/ (resume)
    records -> chunks by image    ------>   unit_views (decode, forward, windowed deconvnet)
    figures, gallery              <----

Why the result is identical to one process, bit for bit: a shard's size is a
multiple of the batch size, so every forward pass sees exactly the batch the single
process sees; :meth:`TopK.merge` is exact and independent of order (a strict total
order on candidates, duplicates dropped); the merged state is built in shard order.

Fault tolerance is Dask's: a task whose worker dies is run again elsewhere (the
model travels as the result of a task, which Dask can recompute, not as scattered
data whose loss is fatal).  Losing the scheduler ends the run with
:class:`ClusterError`; every finished shard is already saved under ``OUT/shards/``,
and ``--resume`` redoes only the others.

Requirements on a real cluster: every worker runs the same zfnet and NumPy, and reads
the images at the same path as the driver.  A Dask cluster executes the code it is
sent: connect only to a scheduler you run.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import ConfigError, ZfnetError

__all__ = ["ClusterError", "cluster_client", "plan_shards", "shard_path", "mine_on_cluster",
           "views_on_cluster", "DEFAULT_SHARD_SIZE", "INSTALL_HINT"]

#: Images per shard (rounded up to a multiple of the batch size).  See
#: ``benchmarks/RESULTS.md`` for the per-shard overhead behind this choice.
DEFAULT_SHARD_SIZE = 512

INSTALL_HINT = "pip install 'zfnet[dask]'  (or: pip install 'dask[distributed]')"


class ClusterError(ZfnetError):
    """The Dask cluster failed (scheduler lost, a task failed on every retry)."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"mining on a Dask cluster needs dask.distributed, which is not installed: "
                          f"{INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def cluster_client(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``, closed (with its local cluster) on exit.

    ``cluster``: an int N (start a local cluster of N worker processes, one thread
    each), a scheduler address (``"tcp://host:8786"``), or a ``Client`` (used as is,
    not closed).
    """
    distributed = _distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    if isinstance(cluster, bool) or not isinstance(cluster, (int, str)):
        raise ConfigError(f"cluster={cluster!r}: expected a number of local workers, a scheduler address "
                          "or a distributed.Client")
    if isinstance(cluster, int):
        if cluster < 1:
            raise ConfigError(f"cluster={cluster}: a local cluster needs at least one worker")
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off
        # glibc's adaptive mmap threshold: every large NumPy temporary becomes a fresh
        # mmap, and ZFNet's forward to conv5 takes 1.50 s instead of 1.09 s per batch of
        # 32 (measured here).  Our workers start without it.
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            local = distributed.LocalCluster(n_workers=cluster, threads_per_worker=1, processes=True,
                                             dashboard_address=":0")
        try:
            with distributed.Client(local) as client:
                yield client
        finally:
            local.close()
        return
    try:
        client = distributed.Client(cluster, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"cannot reach the Dask scheduler at {cluster!r}: {e}") from None
    try:
        yield client
    finally:
        client.close()


# -- the plan --------------------------------------------------------------------------

def plan_shards(n_files: int, shard_size: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous ranges ``[lo, hi)`` covering ``[0, n_files)``.

    The size is ``shard_size`` rounded up to a multiple of ``batch_size``, so each
    shard's batches are exactly the single process's batches.
    """
    if shard_size < 1 or batch_size < 1:
        raise ConfigError(f"shard_size={shard_size}, batch_size={batch_size}: both must be at least 1")
    size = -(-shard_size // batch_size) * batch_size
    return [(lo, min(lo + size, n_files)) for lo in range(0, n_files, size)]


_SHARD_NAME = re.compile(r"^shard-(\d{10})-(\d{10})\.npz$")


def shard_path(folder: Path, lo: int, hi: int) -> Path:
    """``OUT/shards/shard-<lo>-<hi>.npz``: the saved state of one finished shard."""
    return folder / f"shard-{lo:010d}-{hi:010d}.npz"


class _IndexedPaths:
    """The paths of some image indices, looked up by global index (a sparse folder list).

    Lets a worker open image ``i`` of a million-file folder from only the paths its
    task needs; ``len()`` is one past the largest index, as a full list's would be.
    """

    def __init__(self, paths: Mapping[int, str]):
        self._paths = dict(paths)
        self._len = max(self._paths) + 1 if self._paths else 0

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> str:
        try:
            return self._paths[int(index)]
        except KeyError:
            raise IndexError(f"image {index} is not part of this task") from None


def _part_of(folder, indices) -> Any:
    """``folder`` listing only ``indices`` (same root and reading options), small to send."""
    part = copy.copy(folder)
    part.paths = _IndexedPaths({int(i): folder.paths[int(i)] for i in indices})
    part.ignored_paths = []  # reported by the driver; a task does not need them
    return part


# -- the model on the workers ----------------------------------------------------------

def _host_model(model, layers):
    """What workers get: ``model`` up to the deepest of ``layers`` (ZFNet's conv5 needs 15 MB
    of its 230 MB), with NumPy parameters (a copy if they live on the GPU)."""
    from .models import Network

    top = max(layers, key=model.layer_names().index)
    part = Network(model.layers[: model.layers.index(model.layer(top)) + 1], model.config)
    return part if part.xp is np else copy.deepcopy(part).to("cpu")


def _model_task(model):
    """The model as the result of a task: each worker receives it once (as a dependency of
    its shard tasks), and Dask recomputes it if the worker holding it dies, which a
    scattered object would not survive."""
    model.eval()
    return model


_MALLOC_TUNED = False


def _adaptive_malloc() -> None:
    """Undo what ``MALLOC_TRIM_THRESHOLD_`` (set by Dask's nanny) does to NumPy's speed.

    Setting that variable switches off glibc's adaptive mmap threshold, so each large
    temporary array is mapped and zeroed anew (35% slower forward passes, measured).
    On a worker started with it (``dask worker`` does by default), raise the mmap and
    trim thresholds to glibc's adaptive ceiling (32 MiB) once per process.  Elsewhere
    (no variable, not glibc) nothing happens.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 64 << 20)
    except (OSError, AttributeError):  # not glibc: leave the allocator alone
        pass


def _test_hook(lo: int) -> None:
    """Tests only: ``ZFNET_TEST_SHARD_EXIT=<lo>:<flag file>`` kills this worker process
    once (while the flag file exists) in the shard starting at ``lo``; ``...SLEEP=<s>``
    makes every shard slow (a scheduler can then be lost mid-run)."""
    spec = os.environ.get("ZFNET_TEST_SHARD_EXIT")
    if spec:
        at, _, flag = spec.partition(":")
        if int(at) == lo and os.path.exists(flag):
            os.remove(flag)
            os._exit(17)
    delay = os.environ.get("ZFNET_TEST_SHARD_SLEEP")
    if delay:
        import time

        time.sleep(float(delay))


def _mine_shard(model, folder, lo: int, hi: int, transform: dict, layers: list[str], shapes: dict, k: int,
                fingerprint: dict, batch_size: int, threads: int):
    """One shard on a worker: images ``[lo, hi)`` mined into a fresh :class:`TopK`."""
    from .data import ImageBatches, Transform
    from .deconvnet.topk import TopK, mine

    _test_hook(lo)
    _adaptive_malloc()
    top = max(layers, key=model.layer_names().index)
    state = TopK(shapes, k, fingerprint)
    batches = ImageBatches(folder, Transform(transform), batch_size=batch_size, workers=threads, start=lo, stop=hi)
    mine(lambda x: model.forward(x, upto=top, keep=layers, caches=False).activations, batches, state)
    return state


def _views_task(model, folder, transform: dict, records: list[dict], rule: str):
    """Unit views of some records on a worker: ``(views, unreadable, decoded)``."""
    from .data import Transform
    from .figures.units import unit_views

    _adaptive_malloc()
    unreadable: dict[int, str] = {}
    decoded: dict[int, np.ndarray] = {}
    views = unit_views(model, folder, Transform(transform), records, rule=rule, unreadable=unreadable,
                       decoded=decoded)
    return views, unreadable, decoded


# -- the driver ------------------------------------------------------------------------

def _lost_scheduler(e: BaseException) -> bool:
    name = type(e).__name__
    return name in ("CommClosedError", "CancelledError", "FutureCancelledError", "TimeoutError", "OSError") or \
        isinstance(e, (OSError, TimeoutError))


def _gather(client, futures: Sequence[Any], on_result: Callable[[Any, Any], None], what: str) -> None:
    """Call ``on_result(future, result)`` as futures finish; a lost scheduler is a ClusterError."""
    distributed = _distributed()
    try:
        for fut in distributed.as_completed(futures):
            on_result(fut, fut.result())
    except ZfnetError:
        raise
    except Exception as e:  # noqa: BLE001 -- classified below
        if _lost_scheduler(e) or client.status != "running":
            raise ClusterError(f"lost the Dask scheduler while {what} ({type(e).__name__}: {e})") from e
        raise ClusterError(f"a Dask task failed while {what}: {type(e).__name__}: {e}") from e


def mine_on_cluster(client, model, folder, transform, layers: list[str], shapes: dict, k: int,
                    fingerprint: dict, n_files: int, *, batch_size: int = 32,
                    shard_size: int = DEFAULT_SHARD_SIZE, threads: int = 1, shards_dir: Path,
                    resume: bool = False, progress: Callable[[int, int, int], None] | None = None):
    """Mine images ``[0, n_files)`` of ``folder`` on the cluster; return the merged :class:`TopK`.

    Each finished shard's state is saved to ``shards_dir`` as it arrives; with
    ``resume`` the shards already there (same plan, same fingerprint) are not mined
    again.  ``progress(images, shards, total)`` is called once with what was already
    done (``total`` = the number of shards) and then once per finished shard
    (``shards = 1``, ``total = 0``).
    """
    from .deconvnet.topk import TopK

    plan = plan_shards(n_files, shard_size, batch_size)
    shards_dir.mkdir(parents=True, exist_ok=True)
    fresh = TopK(shapes, k, fingerprint)
    done: dict[int, Any] = {}
    for p in sorted(shards_dir.iterdir()):
        m = _SHARD_NAME.match(p.name)
        if not m:
            continue
        lo, hi = int(m.group(1)), int(m.group(2))
        if not resume or (lo, hi) not in plan:
            p.unlink()  # another run's or another plan's: stale
            p.with_suffix(".json").unlink(missing_ok=True)
            continue
        state = TopK.load(p)
        state.check_compatible(fresh, f"resume from {p}")
        done[lo] = state
    todo = [(lo, hi) for lo, hi in plan if lo not in done]
    if progress is not None:
        progress(sum(hi - lo for lo, hi in plan if lo in done), len(done), len(plan))
    if todo:
        run = uuid.uuid4().hex[:12]
        shipped = client.submit(_model_task, _host_model(model, layers), key=f"zfnet-model-{run}", pure=False)
        tcfg = transform.config.to_dict()
        futures = {}
        for lo, hi in todo:
            part = _part_of(folder, range(lo, hi))
            fut = client.submit(_mine_shard, shipped, part, lo, hi, tcfg, list(layers), dict(shapes), k,
                                dict(fingerprint), batch_size, threads, key=f"zfnet-shard-{run}-{lo}-{hi}",
                                pure=False)
            futures[fut.key] = (fut, lo, hi)

        def arrived(fut, state):
            _, lo, hi = futures[fut.key]
            state.save(shard_path(shards_dir, lo, hi))
            done[lo] = state
            if progress is not None:
                progress(hi - lo, 1, 0)

        try:
            _gather(client, [f for f, _, _ in futures.values()], arrived, f"mining {len(todo)} shards")
        except ClusterError as e:
            raise ClusterError(f"{e}. {len(done)} of {len(plan)} shards are saved in {shards_dir}: run again "
                               "with --resume (resume=True) to mine only the others") from e
    merged = fresh
    for lo, _ in plan:  # fixed order: the result does not depend on arrival
        merged = merged.merge(done[lo])
    return merged


def views_on_cluster(client, model, folder, transform, records: list[dict], *, rule: str = "deconvnet",
                     per_task: int = 24, progress: Callable[[int], None] | None = None):
    """:func:`~zfnet.figures.units.unit_views` of ``records`` on the cluster.

    Records are grouped by image, about ``per_task`` per task.  Returns ``(views,
    unreadable, decoded)`` as ``unit_views`` fills them, views in the order of
    ``records``.
    """
    order = sorted(range(len(records)), key=lambda i: (records[i]["image"], records[i]["layer"], records[i]["channel"]))
    chunks: list[list[int]] = []
    for i in order:
        if chunks and len(chunks[-1]) >= per_task and records[chunks[-1][-1]]["image"] != records[i]["image"]:
            chunks.append([])
        if not chunks:
            chunks.append([])
        chunks[-1].append(i)
    views: list[Any] = [None] * len(records)
    unreadable: dict[int, str] = {}
    decoded: dict[int, np.ndarray] = {}
    if not records:
        return views, unreadable, decoded
    run = uuid.uuid4().hex[:12]
    shipped = client.submit(_model_task, _host_model(model, {r["layer"] for r in records}),
                            key=f"zfnet-model-{run}", pure=False)
    tcfg = transform.config.to_dict()
    futures = {}
    for n, chunk in enumerate(chunks):
        part = _part_of(folder, {records[i]["image"] for i in chunk})
        fut = client.submit(_views_task, shipped, part, tcfg, [records[i] for i in chunk], rule,
                            key=f"zfnet-views-{run}-{n}", pure=False)
        futures[fut.key] = (fut, chunk)

    def arrived(fut, result):
        got, lost, pics = result
        chunk = futures[fut.key][1]
        for i, v in zip(chunk, got):
            views[i] = v
        unreadable.update(lost)
        decoded.update(pics)
        if progress is not None:
            progress(len(chunk))

    _gather(client, [f for f, _ in futures.values()], arrived, f"projecting {len(records)} units")
    return views, unreadable, decoded

