"""Top-k mining and unit projections on a Dask cluster (``zfnet top9 --workers/--scheduler``).

One process mines about 25 images/s to conv5 per core here; ImageNet train would take
it 14 hours.  The miner's state (:class:`~zfnet.deconvnet.topk.TopK`) merges exactly, so
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
process sees (and the projections are cut into the chunks ``unit_views`` forms);
:meth:`TopK.merge` is exact and independent of order (a strict total order on
candidates, duplicates dropped); the merged state is built in shard order.  One
assumption remains: a worker computes with one thread where the process may use
several, so BLAS must give the same bits either way (OpenBLAS splits a GEMM's rows
and columns among threads, not its sums; the tests check the result).

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
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ._files import remove_stale_parts
from ._memory import adaptive_malloc
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


_SHARD_NAME = re.compile(r"^shard-(\d{10})-(\d{10})-b(\d+)\.npz$")


def shard_path(folder: Path, lo: int, hi: int, batch_size: int) -> Path:
    """``OUT/shards/shard-<lo>-<hi>-b<batch>.npz``: the saved state of one finished shard.

    The batch size is in the name because it is part of what the shard computed
    (each forward pass's batch); a run with another batch size does not reuse it.
    """
    return folder / f"shard-{lo:010d}-{hi:010d}-b{batch_size}.npz"


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

    def __iter__(self):  # a sparse list cannot be walked like the folder's: fail, never truncate
        raise TypeError("a task's folder lists only the images it needs; it cannot be iterated")

    def __contains__(self, path) -> bool:
        raise TypeError("a task's folder lists only the images it needs; ask by index")


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
    scattered object would not survive.  Used as given (train or eval mode), as the
    single process uses it."""
    return model


def _ship_model(client, model, layers):
    """``(run id, future)``: the model up to ``layers``, submitted once for this run's tasks."""
    run = uuid.uuid4().hex[:12]
    return run, client.submit(_model_task, _host_model(model, layers), key=f"zfnet-model-{run}", pure=False)


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
    adaptive_malloc()
    top = max(layers, key=model.layer_names().index)
    state = TopK(shapes, k, fingerprint)
    batches = ImageBatches(folder, Transform(transform), batch_size=batch_size, workers=threads, start=lo, stop=hi)
    mine(lambda x: model.forward(x, upto=top, keep=layers, caches=False).activations, batches, state)
    return state


def _views_task(model, folder, transform: dict, records: list[dict], rule: str, chunk: int):
    """Unit views of some records on a worker: ``(views, unreadable, decoded)``."""
    from .data import Transform
    from .figures.units import unit_views

    adaptive_malloc()
    unreadable: dict[int, str] = {}
    decoded: dict[int, np.ndarray] = {}
    views = unit_views(model, folder, Transform(transform), records, rule=rule, chunk=chunk,
                       unreadable=unreadable, decoded=decoded)
    return views, unreadable, decoded


# -- the driver ------------------------------------------------------------------------

def _gather(client, futures: dict, on_result: Callable[[Any, Any], None], what: str) -> None:
    """Call ``on_result(key, result)`` as the futures (key -> future) finish, releasing each.

    A task's own zfnet error is raised as it is; losing the scheduler (the client is
    no longer running, or the futures were cancelled because its connection went) is
    a :class:`ClusterError`; any other failure of a task is a ``ClusterError`` naming
    it.  Errors of ``on_result`` itself (saving a state) propagate unchanged.
    """
    distributed = _distributed()
    key_of = {id(f): k for k, f in futures.items()}
    finished = iter(distributed.as_completed(list(futures.values())))
    while True:
        try:
            fut = next(finished)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 -- waiting itself failed: the connection is gone
            raise ClusterError(f"lost the Dask scheduler while {what} ({type(e).__name__}: {e})") from e
        key = key_of[id(fut)]
        try:
            result = fut.result()
        except ZfnetError:
            raise
        except Exception as e:  # noqa: BLE001 -- classified here
            lost = client.status != "running" or type(e).__name__ in ("CommClosedError", "FutureCancelledError",
                                                                        "CancelledError")
            if lost:
                raise ClusterError(f"lost the Dask scheduler while {what} ({type(e).__name__}: {e})") from e
            raise ClusterError(f"a Dask task failed while {what}: {type(e).__name__}: {e}") from e
        fut.release()  # its result lives on the driver now, not pinned in a worker's memory
        del futures[key]
        on_result(key, result)


def _saved_shards(shards_dir: Path, plan: list[tuple[int, int]], batch_size: int, fresh, resume: bool) -> dict:
    """The saved shard states a run can use, ``{lo: TopK}``; clears the rest.

    Without ``resume`` every saved shard is cleared.  With it, every shard file is
    read and checked *before* anything is deleted: one from other weights, images,
    preprocessing, k or layers stops the run (``ConfigError``) and deletes nothing;
    one from another plan (``--shard-size`` or ``--batch-size``) or unreadable (a crash
    while writing) is cleared and mined again.
    """
    from .deconvnet.topk import TopK
    from .errors import DataError

    remove_stale_parts(shards_dir)  # temporary files of an interrupted atomic write
    usable: dict[int, Any] = {}
    clear: list[Path] = []
    for p in sorted(shards_dir.glob("shard-*.npz")):
        m = _SHARD_NAME.match(p.name)
        if not resume or not m:
            clear.append(p)
            continue
        lo, hi, batch = int(m.group(1)), int(m.group(2)), int(m.group(3))
        try:
            state = TopK.load(p)
        except DataError:
            clear.append(p)  # unreadable: mine it again
            continue
        state.check_compatible(fresh, f"resume from {p}")  # refuse before deleting anything
        if (lo, hi) in plan and batch == batch_size and state.covered == [[lo, hi]]:
            usable[lo] = state
        else:
            clear.append(p)
    for p in clear:
        p.unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)
    return usable


def mine_on_cluster(client, model, folder, transform, layers: list[str], shapes: dict, k: int,
                    fingerprint: dict, n_files: int, *, batch_size: int = 32,
                    shard_size: int = DEFAULT_SHARD_SIZE, threads: int = 1, shards_dir: Path,
                    resume: bool = False, progress: Callable[[int, int, int], None] | None = None):
    """Mine images ``[0, n_files)`` of ``folder`` on the cluster; return the merged :class:`TopK`.

    Each finished shard's state is saved to ``shards_dir`` as it arrives; with
    ``resume`` the shards already there (same plan, same fingerprint) are not mined
    again (see :func:`_saved_shards` for what is refused and what is cleared).
    States are merged in shard order as soon as the next one in order is there, so
    the driver holds only the states that arrived early.
    ``progress(images, shards, total)`` is called once with what was already done
    (``total`` = the number of shards) and then once per finished shard (``shards =
    1``, ``total = 0``).
    """
    from .deconvnet.topk import TopK

    plan = plan_shards(n_files, shard_size, batch_size)
    shards_dir.mkdir(parents=True, exist_ok=True)
    fresh = TopK(shapes, k, fingerprint)
    done = _saved_shards(shards_dir, plan, batch_size, fresh, resume)
    if progress is not None:
        progress(sum(hi - lo for lo, hi in plan if lo in done), len(done), len(plan))
    merged, next_shard = fresh, 0

    def merge_ready() -> None:  # fixed order: the result does not depend on arrival
        nonlocal merged, next_shard
        while next_shard < len(plan) and plan[next_shard][0] in done:
            merged = merged.merge(done.pop(plan[next_shard][0]))
            next_shard += 1

    merge_ready()
    todo = [(lo, hi) for lo, hi in plan[next_shard:] if lo not in done]
    if todo:
        run, shipped = _ship_model(client, model, layers)
        tcfg = transform.config.to_dict()
        futures, ranges = {}, {}
        for lo, hi in todo:
            part = _part_of(folder, range(lo, hi))
            key = f"zfnet-shard-{run}-{lo}-{hi}"
            futures[key] = client.submit(_mine_shard, shipped, part, lo, hi, tcfg, list(layers), dict(shapes), k,
                                         dict(fingerprint), batch_size, threads, key=key, pure=False)
            ranges[key] = (lo, hi)

        def arrived(key, state):
            lo, hi = ranges[key]
            state.save(shard_path(shards_dir, lo, hi, batch_size))
            done[lo] = state
            merge_ready()
            if progress is not None:
                progress(hi - lo, 1, 0)

        try:
            _gather(client, futures, arrived, f"mining {len(todo)} shards")
        except ClusterError as e:
            saved = len(list(shards_dir.glob("shard-*.npz")))
            raise ClusterError(f"{e}. {saved} of {len(plan)} shards are saved in {shards_dir}: run again "
                               "with --resume (resume=True) to mine only the others") from e
        finally:
            shipped.release()
    return merged


def views_on_cluster(client, model, folder, transform, records: list[dict], *, rule: str = "deconvnet",
                     chunk: int = 16, chunks_per_task: int = 2, progress: Callable[[int], None] | None = None):
    """:func:`~zfnet.figures.units.unit_views` of ``records`` on the cluster.

    The records are cut into exactly the chunks ``unit_views`` forms in one process
    (per layer, ordered by image and channel, ``chunk`` at a time), so every forward
    pass sees the batch it sees there; whole chunks, ``chunks_per_task`` of them, make
    a task.  Returns ``(views, unreadable, decoded)`` as ``unit_views`` fills them,
    views in the order of ``records``.
    """
    from .figures.units import unit_chunks

    chunks = [part for _, part in unit_chunks(records, chunk)]
    tasks = [sum(chunks[t: t + chunks_per_task], []) for t in range(0, len(chunks), chunks_per_task)]
    views: list[Any] = [None] * len(records)
    unreadable: dict[int, str] = {}
    decoded: dict[int, np.ndarray] = {}
    if not records:
        return views, unreadable, decoded
    run, shipped = _ship_model(client, model, {r["layer"] for r in records})
    tcfg = transform.config.to_dict()
    futures, members = {}, {}
    for n, task in enumerate(tasks):
        part = _part_of(folder, {records[i]["image"] for i in task})
        key = f"zfnet-views-{run}-{n}"
        futures[key] = client.submit(_views_task, shipped, part, tcfg, [records[i] for i in task], rule, chunk,
                                     key=key, pure=False)
        members[key] = task

    def arrived(key, result):
        got, lost, pics = result
        for i, v in zip(members[key], got):
            views[i] = v
        unreadable.update(lost)
        decoded.update(pics)
        if progress is not None:
            progress(len(members[key]))

    try:
        _gather(client, futures, arrived, f"projecting {len(records)} units")
    finally:
        shipped.release()
    return views, unreadable, decoded
