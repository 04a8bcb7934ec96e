"""Mining on a Dask cluster (``zfnet.cluster``, ``zfnet top9 --workers/--scheduler``).

The contract: ``top9.json`` (and the figures) of a cluster run are identical to the
single-process run's, record for record and bit for bit; a worker killed mid-run
changes nothing; a lost scheduler ends the run with ``ClusterError`` and ``resume``
mines only the shards that were not saved.

Dask runs real worker processes here (``LocalCluster``), two of them, so the tests
take a few seconds each; without ``dask.distributed`` they skip, except the ones
that check what a user without it is told.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfnet.cluster import plan_shards
from zfnet.errors import ConfigError
from zfnet.figures.top9 import run_top9
from zfnet.models import Network
from zfnet.nn import LRN, Conv2d, MaxPool2d

N_IMAGES = 40


def net() -> Network:
    """Big enough that a convolution's sums are long (bit-identity means something)."""
    rng = np.random.default_rng(7)
    layers = [Conv2d("c1", 3, 16, 5, stride=2, padding=2, rng=rng), MaxPool2d("p1", 3, 2, ceil_mode=True),
              LRN("n1", 5, 1e-2, 0.75, 2.0), Conv2d("c2", 16, 24, 3, padding=1, rng=rng)]
    return Network(layers, {"arch": "clustertest", "input_size": [40, 40], "resize": 40})


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster_images")
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        sub = root / f"class{i % 3}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 44, 3), dtype=np.uint8)).save(sub / f"im{i:03d}.png")
    (root / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


KW = dict(layers=["c1", "c2"], k=3, units=3, batch_size=4, workers=0, progress=False, tile=24, gallery=False,
          weights_label="cluster test")


@pytest.fixture(scope="module")
def single(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    run_top9(net(), images, out, **KW)
    return out


def test_plan_shards_cover_in_whole_batches() -> None:
    plan = plan_shards(103, 10, 4)  # 10 -> 12, a multiple of the batch size
    assert plan[0] == (0, 12) and plan[-1] == (96, 103)
    assert all(b[0] == a[1] for a, b in zip(plan, plan[1:])) and all((hi - lo) % 4 == 0 for lo, hi in plan[:-1])
    assert plan_shards(0, 8, 4) == []
    with pytest.raises(ConfigError):
        plan_shards(10, 0, 4)


def test_a_tasks_folder_lists_only_its_images_and_cannot_be_walked(images) -> None:
    from zfnet.cluster import _part_of
    from zfnet.data import ImageFolder

    folder = ImageFolder(images)
    part = _part_of(folder, range(8, 12))
    assert len(part.paths) == 12 and part.paths[9] == folder.paths[9] and part.path(11) == folder.path(11)
    with pytest.raises(IndexError):
        part.paths[3]
    with pytest.raises(TypeError):  # never a silently empty or truncated list
        list(part.paths)
    with pytest.raises(TypeError):
        folder.paths[9] in part.paths


def test_without_dask_the_user_is_told_how_to_install(monkeypatch, capsys, images, tmp_path) -> None:
    import importlib.util

    from zfnet.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a))
    with pytest.raises(SystemExit) as exc:  # refused at parse time, before any work
        main(["top9", "--arch", "zfnet", "--images", str(images), "--out", str(tmp_path / "o"), "--workers", "2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --workers" in err and "zfnet[dask]" in err
    assert not (tmp_path / "o").exists()


def test_shard_size_alone_is_refused(capsys, images, tmp_path) -> None:
    from zfnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["top9", "--arch", "zfnet", "--images", str(images), "--out", str(tmp_path / "o"), "--shard-size", "64"])
    assert exc.value.code == 2 and "argument --shard-size" in capsys.readouterr().err


# -- with a real local cluster -----------------------------------------------------------

try:
    import distributed
except ImportError:  # the tests above still run: they check what a user without it sees
    distributed = None

needs_dask = pytest.mark.skipif(distributed is None,
                                reason="dask.distributed is not installed (pip install 'zfnet[dask]')")


@pytest.fixture(scope="module")
def client():
    if distributed is None:
        pytest.skip("dask.distributed is not installed (pip install 'zfnet[dask]')")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        with distributed.Client(c) as cl:
            yield cl


def same_outputs(a: Path, b: Path) -> None:
    da, db = (json.loads((p / "top9.json").read_text()) for p in (a, b))
    assert da["results"] == db["results"]  # every record: image, position, value (float repr: bit-exact)
    assert da == db
    for png in sorted(a.glob("*.png")):
        assert png.read_bytes() == (b / png.name).read_bytes(), png.name


@needs_dask
def test_cluster_run_equals_single_process(client, images, single, tmp_path) -> None:
    res = run_top9(net(), images, tmp_path, cluster=client, shard_size=8, **KW)
    same_outputs(single, tmp_path)
    assert len(list((tmp_path / "shards").glob("shard-*.npz"))) == 6  # 41 files, 8 per shard
    assert [s["path"] for s in res.skipped] == ["class1/broken.png"]  # found by a worker, reported once
    assert res.state.n_images == N_IMAGES


@needs_dask
def test_resume_mines_only_missing_shards(client, images, single, tmp_path) -> None:
    run_top9(net(), images, tmp_path, cluster=client, shard_size=8, **KW)
    shards = sorted((tmp_path / "shards").glob("shard-*.npz"))
    kept = {p.name: p.stat().st_mtime_ns for p in shards[::2]}
    for p in shards[1::2]:
        p.unlink()
    (tmp_path / "topk_state.npz").unlink()
    (tmp_path / "top9.json").unlink()
    run_top9(net(), images, tmp_path, cluster=client, shard_size=8, resume=True, **KW)
    same_outputs(single, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in sorted((tmp_path / "shards").glob("shard-*.npz"))
            if p.name in kept} == kept  # the saved shards were read, not mined again
    again = run_top9(net(), images, tmp_path, cluster=client, shard_size=8, resume=True, **KW)
    assert again.images_per_second == 0 and again.seconds_mining == 0  # a finished state: nothing to mine
    same_outputs(single, tmp_path)


@needs_dask
def test_resume_refuses_other_inputs_before_deleting_and_clears_another_plan(client, images, tmp_path) -> None:
    run_top9(net(), images, tmp_path, cluster=client, shard_size=8, **KW)
    shards = sorted(p.name for p in (tmp_path / "shards").glob("shard-*.npz"))
    assert shards and all(name.endswith("-b4.npz") for name in shards)
    (tmp_path / "topk_state.npz").unlink()
    other = net()
    other.layers[0].weight = other.layers[0].weight * 2
    with pytest.raises(ConfigError, match="different inputs"):
        run_top9(other, images, tmp_path, cluster=client, shard_size=8, resume=True,
                 **dict(KW, weights_label="other weights"))
    assert sorted(p.name for p in (tmp_path / "shards").glob("shard-*.npz")) == shards  # nothing deleted
    run_top9(net(), images, tmp_path, cluster=client, shard_size=8, resume=True, **dict(KW, batch_size=8))
    again = sorted(p.name for p in (tmp_path / "shards").glob("shard-*.npz"))
    assert again and all(name.endswith("-b8.npz") for name in again)  # another batch size: mined again


@needs_dask
def test_a_worker_killed_mid_run_changes_nothing(client, images, single, tmp_path) -> None:
    flag = tmp_path / "kill-once"
    flag.write_text("")
    # The variable reaches the running workers only; a restarted worker has the nanny's environment.
    spec = f"16:{flag}"
    client.run(lambda: os.environ.__setitem__("ZFNET_TEST_SHARD_EXIT", spec))
    try:
        run_top9(net(), images, tmp_path / "out", cluster=client, shard_size=8, **KW)
    finally:
        client.run(lambda: os.environ.pop("ZFNET_TEST_SHARD_EXIT", None))
    assert not flag.exists()  # the worker really died in shard [16, 24)
    same_outputs(single, tmp_path / "out")


@needs_dask
def test_lost_scheduler_is_a_clear_error_then_resume(images, single, tmp_path) -> None:
    from zfnet.cluster import ClusterError

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    out = tmp_path / "out"
    errors: list[BaseException] = []
    try:
        address = cluster.scheduler_address
        with distributed.Client(cluster) as cl:
            cl.run(lambda: os.environ.__setitem__("ZFNET_TEST_SHARD_SLEEP", "1.5"))

        def run():
            try:
                run_top9(net(), images, out, cluster=address, shard_size=4, **KW)
            except BaseException as e:  # noqa: BLE001 -- handed to the test thread
                errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 120
        while not list((out / "shards").glob("shard-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        cluster.close()  # the scheduler (and its workers) go away mid-run
    t.join(180)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClusterError), errors
    assert "scheduler" in str(errors[0]) and "--resume" in str(errors[0])
    saved = len(list((out / "shards").glob("shard-*.npz")))
    assert 1 <= saved < 11
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c2:
        run_top9(net(), images, out, cluster=c2.scheduler_address, shard_size=4, resume=True, **KW)
    same_outputs(single, out)
