"""The trainer: schedule, SGD, renormalisation, augmentation, packing, exact resume, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfnet.data.augment import center_boxes, crop_resize, normalize_batch, random_boxes
from zfnet.data.packed import load_folder, load_packed, pack_dataset, pack_folder
from zfnet.errors import ConfigError, DataError
from zfnet.models import Network
from zfnet.nn import Conv2d, Dropout, Flatten, Linear, MaxPool2d
from zfnet.train import SGD, TrainConfig, Trainer, evaluate, load_checkpoint, lr_at, renormalize_filters


# ---------------------------------------------------------------- small pieces


def test_config_validation():
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({"lr": 0.1, "nesterov": True})
    c = TrainConfig(keep_epochs=(5, 1, 1))
    assert c.keep_epochs == (1, 5)
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_lr_schedules():
    c = TrainConfig(lr=0.1, epochs=10, warmup_epochs=1, schedule="cosine")
    assert lr_at(c, 0, 10) == pytest.approx(0.01)  # warm-up from lr / W
    assert lr_at(c, 9, 10) == pytest.approx(0.1)
    assert lr_at(c, 10, 10) == pytest.approx(0.1)  # cosine starts at the peak
    assert lr_at(c, 55, 10) == pytest.approx(0.05)  # half way through the cosine part
    assert lr_at(c, 100, 10) == pytest.approx(0.0, abs=1e-12)
    s = TrainConfig(lr=0.1, epochs=10, warmup_epochs=0, schedule="step", milestones=(3, 6), gamma=0.1)
    assert [round(lr_at(s, e * 10, 10), 6) for e in (0, 2, 3, 5, 6, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def tiny_net(seed=0, classes=3) -> Network:
    rng = np.random.default_rng(seed)
    layers = [
        Conv2d("conv1", 3, 4, 3, stride=2, padding=1, rng=rng),
        MaxPool2d("pool1", 3, 2, ceil_mode=True),
        Flatten("flatten"),
        Linear("fc6", 4 * 4 * 4, 8, rng=rng),
        Dropout("drop6", 0.5, seed=seed + 6),
        Linear("fc8", 8, classes, relu=False, rng=rng),
    ]
    return Network(layers, {"arch": "tiny", "num_classes": classes, "input_size": [16, 16]})


def test_sgd_matches_the_formula():
    model = tiny_net()
    w0 = {k: v.copy() for k, v in model.state_dict().items()}
    grads = {k: np.full_like(v, 0.5) for k, v in w0.items()}
    opt = SGD(model, momentum=0.9, weight_decay=0.1)
    opt.step(model, grads, lr=0.2)
    opt.step(model, grads, lr=0.2)
    for k, w in model.state_dict().items():
        wd = 0.1 if k.endswith("weight") else 0.0
        v1 = 0.5 + wd * w0[k]
        w1 = w0[k] - 0.2 * v1
        v2 = 0.9 * v1 + 0.5 + wd * w1
        np.testing.assert_allclose(w, w1 - 0.2 * v2, rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("ratios", [False, True])
def test_sgd_in_pieces_gives_the_whole_array_update_bit_for_bit(monkeypatch, ratios):
    """A parameter bigger than one piece (262,144 values) is updated piece by piece on
    two threads: the same float32 operations as the whole-array formula, so the same bits."""
    from zfnet.models import Network
    from zfnet.nn import Flatten, Linear

    monkeypatch.setenv("ZFNET_NUM_THREADS", "2")
    rng = np.random.default_rng(3)
    model = Network([Flatten("flat"), Linear("fc", 700, 600, relu=False, rng=rng)], {"arch": "t"})
    assert model.layer("fc").weight.size > 1 << 18
    w0 = {k: v.copy() for k, v in model.state_dict().items()}
    opt = SGD(model, momentum=0.9, weight_decay=5e-4)
    v = {k: np.zeros_like(w) for k, w in w0.items()}
    w = {k: x.copy() for k, x in w0.items()}
    for step in range(3):
        grads = {k: rng.standard_normal(x.shape).astype(np.float32) for k, x in w0.items()}
        opt.step(model, grads, lr=0.05, ratios=ratios)
        for k in w:  # the formula on whole arrays, in SGD.step's order of operations
            v[k] *= np.float32(0.9)
            v[k] += grads[k]
            if k.endswith("weight"):
                v[k] += np.float32(5e-4) * w[k]
            w[k] -= np.float32(0.05) * v[k]
        for k, x in model.state_dict().items():
            np.testing.assert_array_equal(x, w[k], err_msg=f"{k}, step {step}")
            np.testing.assert_array_equal(opt.buffers[k], v[k], err_msg=f"{k} momentum, step {step}")


def test_renormalize_filters():
    model = tiny_net()
    w = model.layer("conv1").weight
    w[0] = 3.0  # RMS 3
    w[1] = 0.5  # RMS 0.5
    before = w[2:].copy()
    counts = renormalize_filters(model, 1.0)
    assert counts == {"conv1": 1}
    assert np.sqrt(np.mean(w[0] ** 2)) == pytest.approx(1.0)
    assert np.allclose(w[1], 0.5) and np.array_equal(w[2:], before)
    assert renormalize_filters(model, None) == {}


def naive_bilinear(img, box, out, flip):
    """One image, loops: sample at top + (i + 1/2) h / out - 1/2 (clamped), bilinear."""
    h, w, _ = img.shape
    top, left, bh, bw = box
    res = np.zeros((3, out, out))
    for i in range(out):
        for j in range(out):
            jj = out - 1 - j if flip else j
            y = min(max(top + (i + 0.5) * bh / out - 0.5, 0), h - 1)
            x = min(max(left + (jj + 0.5) * bw / out - 0.5, 0), w - 1)
            y0, x0 = int(math.floor(y)), int(math.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            res[:, i, j] = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
                            + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
    return res


def test_crop_resize_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 13, 13, 3), dtype=np.uint8)
    boxes, flips = random_boxes(rng, 4, (13, 13), min_scale=0.2)
    flips[:2] = [True, False]
    out = crop_resize(imgs, boxes, 9, flips)
    assert out.shape == (4, 3, 9, 9) and out.dtype == np.float32
    for b in range(4):
        np.testing.assert_allclose(out[b], naive_bilinear(imgs[b].astype(float), boxes[b], 9, flips[b]),
                                   rtol=1e-5, atol=1e-3)


def test_random_boxes_are_inside_and_reproducible():
    a = random_boxes(np.random.default_rng(5), 200, (30, 20), min_scale=0.3)
    b = random_boxes(np.random.default_rng(5), 200, (30, 20), min_scale=0.3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    top, left, h, w = a[0].T
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= 30 + 1e-9) and np.all(left + w <= 20 + 1e-9)
    assert 0.3 < a[1].mean() < 0.7
    assert not random_boxes(np.random.default_rng(5), 50, (8, 8), flip=False)[1].any()


def test_center_view_is_the_image_itself_and_normalisation():
    imgs = np.random.default_rng(1).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    boxes, flips = center_boxes(2, (12, 12))
    assert not flips.any()
    x = crop_resize(imgs, boxes, 12, flips)
    np.testing.assert_array_equal(x, imgs.transpose(0, 3, 1, 2))
    n = normalize_batch(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    np.testing.assert_allclose(n, (imgs.transpose(0, 3, 1, 2) / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- packed data


def make_folder(root: Path, n_per_class=4, size=20, classes=("n02", "n01", "n03")):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth pictures, as photos are
                arr = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))
                if i == 0:
                    Image.fromarray(arr).save(d / f"{i}.JPEG", quality=90)  # right size: bytes kept
                elif i == 1:
                    Image.fromarray(arr[:, :, 0]).convert("L").resize((size + 6, size)).save(d / f"{i}.png")
                else:
                    Image.fromarray(arr).save(d / f"{i}.png")
    (root / "train" / "n01" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def test_pack_and_load_both_encodings(tmp_path):
    src = make_folder(tmp_path / "src")
    for enc in ("raw", "jpeg"):
        dst = tmp_path / enc
        meta = pack_dataset(src, dst, size=16, encoding=enc, shard_mib=3000 / 2**20, workers=2)
        assert meta["classes"] == ["n01", "n02", "n03"]  # sorted: wnid order defines the labels
        tr = load_packed(dst, "train")
        assert tr.images.shape == (12, 16, 16, 3) and tr.images.dtype == np.uint8
        assert tr.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert [s["path"] for s in meta["splits"]["train"]["skipped"]] == ["n01/broken.jpg"]
        assert len(meta["splits"]["train"]["shards"]) > 1  # tiny shard limit: several shards
        for s in meta["splits"]["train"]["shards"]:
            assert (dst / s["file"]).stat().st_size < 3000 + 16 * 16 * 3 + 200
        folder = load_folder(src / "train", size=16)
        if enc == "raw":
            np.testing.assert_array_equal(tr.images, folder.images)
        else:  # PNGs are re-encoded as JPEG: close, not equal
            assert np.abs(tr.images.astype(int) - folder.images.astype(int)).mean() < 8  # chroma subsampling


def test_pack_keeps_jpeg_bytes_and_rejects_bad_files(tmp_path):
    src = make_folder(tmp_path / "src", size=16)
    pack_folder(src / "train", tmp_path / "p", "train", size=16, encoding="jpeg")
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    sh = meta["splits"]["train"]["shards"][0]
    blob = np.load(tmp_path / "p" / sh["file"]).tobytes()
    off = np.load(tmp_path / "p" / sh["offsets"])
    assert blob[off[0] : off[1]] == (src / "train" / "n01" / "0.JPEG").read_bytes()
    # a different class list for a later split is refused
    with pytest.raises(DataError, match="not among"):
        pack_folder(src / "val", tmp_path / "p", "val", size=16, classes=["n01"])
    with pytest.raises(ConfigError, match="size 16 jpeg"):
        pack_folder(src / "val", tmp_path / "p", "val", size=8, encoding="jpeg")
    # damage: a truncated offsets file and a missing shard
    np.save(tmp_path / "p" / sh["offsets"], off[:-1])
    with pytest.raises(DataError, match="offsets"):
        load_packed(tmp_path / "p", "train")
    (tmp_path / "p" / sh["file"]).unlink()
    with pytest.raises(DataError, match="missing"):
        load_packed(tmp_path / "p", "train")
    with pytest.raises(DataError, match="no split"):
        load_packed(tmp_path / "p", "test")


# ---------------------------------------------------------------- training runs


class Split:
    def __init__(self, images, labels, names):
        self.images, self.labels, self.names = images, labels, names

    def __len__(self):
        return len(self.labels)


def tiny_data(n=24, size=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[:, :, :, 0] = np.where(labels[:, None, None] == 0, 230, images[:, :, :, 0] // 3)  # learnable cue
    return Split(images, labels, ["a", "b", "c"])


def tiny_config(**kw):
    base = dict(arch="tiny", epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, input_size=16,
                keep_epochs=(0, 1), log_every=1, renorm_radius=0.5)
    base.update(kw)
    return TrainConfig(**base)


def run(tmp, config, **kw):
    trainer = Trainer(config, tiny_data(), tiny_data(12, seed=1), tmp, model=tiny_net(), progress=False, **kw)
    return trainer, trainer.fit(resume=True)


def test_resume_is_exact(tmp_path):
    straight, summary = run(tmp_path / "a", tiny_config())
    assert summary["status"] == "done" and summary["epoch"] == 2 and summary["step"] == 6
    ref = straight.model.state_dict()

    # 1 epoch, then resume for the second
    t1, s1 = run(tmp_path / "b", tiny_config(), stop_at_epoch=1)
    assert s1["status"] == "stopped" and s1["epoch"] == 1
    t2, s2 = run(tmp_path / "b", tiny_config())
    assert s2["status"] == "done"
    for k, v in t2.model.state_dict().items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)

    # interrupted after every single step (mid-epoch and at epoch ends): still identical
    runs = 0
    while True:
        t, s = run(tmp_path / "c", tiny_config(), time_limit=0)
        runs += 1
        if s["status"] == "done":
            break
    assert runs >= 5
    for k, v in t.model.state_dict().items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)
    # the metrics of the resumed runs equal the straight run's, record for record
    def epochs(p):
        recs = [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
        return [(r["epoch"], r["train_loss"], r["val_acc"]) for r in recs if r["event"] == "epoch"]
    assert epochs(tmp_path / "a") == epochs(tmp_path / "b") == epochs(tmp_path / "c")
    steps = [json.loads(line)["step"] for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "step"]
    assert steps == list(range(1, 7))  # no duplicates left by the interruptions


def test_run_outputs_and_checkpoint_contents(tmp_path):
    trainer, summary = run(tmp_path, tiny_config(epochs=3, keep_epochs=(0, 2)))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "epoch-000.npz", "epoch-002.npz", "final.npz", "last.npz", "metrics.jsonl"]
    ck = load_checkpoint(tmp_path / "last.npz")
    assert ck["state"]["epoch"] == 3 and ck["state"]["step"] == 9
    assert set(ck["momentum"]) == set(ck["params"]) == set(trainer.model.state_dict())
    from zfnet.weights import read_npz

    arrays, meta = read_npz(tmp_path / "final.npz")
    assert arrays["conv1.weight"].dtype == np.float16
    assert meta["training"]["epoch"] == 3 and meta["class_names"] == ["a", "b", "c"]
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["input_size"] == [16, 16]
    # the renormalisation radius held after every step
    w = trainer.model.layer("conv1").weight
    assert np.sqrt((w.reshape(4, -1) ** 2).mean(axis=1)).max() <= 0.5 + 1e-6
    hist = summary["history"]
    assert len(hist) == 3 and all(0 <= h["val_acc"] <= 1 for h in hist)


def test_training_learns_the_easy_cue(tmp_path):
    cfg = tiny_config(epochs=8, lr=0.1, renorm_radius=None, keep_epochs=())
    trainer, summary = run(tmp_path, cfg)
    hist = summary["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    res = evaluate(trainer.model, tiny_data(12, seed=1).images, tiny_data(12, seed=1).labels, batch_size=5,
                   input_size=16)
    assert res["count"] == 12 and res["per_class_acc"][0] == 1.0  # the red class is easy


def test_resume_refuses_a_different_config(tmp_path):
    run(tmp_path, tiny_config(), stop_at_epoch=1)
    with pytest.raises(ConfigError, match="different config"):
        run(tmp_path, tiny_config(lr=0.2))


def test_trainer_on_gpu_matches_numpy(xp, tmp_path):
    if xp is np:
        pytest.skip("the comparison needs CuPy; NumPy runs are covered above")
    cpu, _ = run(tmp_path / "cpu", tiny_config(epochs=1))
    gpu_tr = Trainer(tiny_config(epochs=1), tiny_data(), None, tmp_path / "gpu", device="gpu", model=tiny_net(),
                     progress=False)
    gpu_tr.fit()
    for k, v in gpu_tr.model.state_dict().items():
        np.testing.assert_allclose(v, cpu.model.state_dict()[k], rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- command line


def test_cli_pack_train_resume_evaluate(tmp_path, capsys):
    from zfnet.cli import main

    src = make_folder(tmp_path / "src", n_per_class=2, size=40, classes=("n01", "n02"))
    assert main(["pack-data", str(src), str(tmp_path / "packed"), "--size", "224"]) == 0
    args = ["train", "--data", str(tmp_path / "packed"), "--out", str(tmp_path / "run"), "--arch", "zfnet",
            "--fc-width", "8", "--epochs", "2", "--batch-size", "2", "--lr", "0.001", "--no-progress",
            "--keep-epochs", "1", "--device", "cpu"]
    assert main(args + ["--stop-at-epoch", "1"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert main(args + ["--resume", "--lr", "0.5"]) == 2  # a changed setting is refused
    assert main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "done: 2/2 epochs" in out
    assert (tmp_path / "run" / "final.npz").exists() and (tmp_path / "run" / "epoch-001.npz").exists()
    assert main(["evaluate", "--weights", str(tmp_path / "run" / "final.npz"), "--data", str(tmp_path / "packed"),
                 "--json", str(tmp_path / "ev.json"), "--device", "cpu"]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["count"] == 4 and len(ev["per_class_acc"]) == 2

    # the figures from the run's checkpoints
    assert main(["fig4", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "packed"), "--images", "3",
                 "--units", "1", "--layers", "conv1", "conv2", "--out", str(tmp_path / "f4.png"),
                 "--json", str(tmp_path / "f4.json"), "--device", "cpu"]) == 0
    rec = json.loads((tmp_path / "f4.json").read_text())
    assert rec["columns"] == ["epoch 1", "epoch 2 (final)"] and (tmp_path / "f4.png").stat().st_size > 0
    # checkpoints from several runs (a warm restart counts from 0 again): titles given
    assert main(["fig4", "--checkpoints", str(tmp_path / "run" / "epoch-001.npz"), str(tmp_path / "run" / "final.npz"),
                 "--labels", "ep 1", "ep 2", "--data", str(tmp_path / "packed"), "--images", "3", "--units", "1",
                 "--layers", "conv1", "--out", str(tmp_path / "f4b.png"), "--json", str(tmp_path / "f4b.json"),
                 "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "f4b.json").read_text())["columns"] == ["ep 1", "ep 2"]
    from zfnet.models import alexnet
    from zfnet.weights import save

    ax = alexnet("caffe", num_classes=2, fc_width=8)
    ax.config.update(input_size=[224, 224], resize=224, channel_order="RGB", mean=[0.485, 0.456, 0.406],
                     std=[0.229, 0.224, 0.225], scale=1 / 255)
    save(ax, tmp_path / "ax.npz", dtype="float16")
    assert main(["fig6", "--weights", str(tmp_path / "ax.npz"), str(tmp_path / "run" / "final.npz"),
                 "--data", str(tmp_path / "packed"), "--images", "3", "--units", "2", "--evaluate",
                 "--out", str(tmp_path / "f6.png"), "--json", str(tmp_path / "f6.json"), "--device", "cpu"]) == 0
    meas = json.loads((tmp_path / "f6.json").read_text())
    assert set(meas) == {"AlexNet 11x11/4", "ZFNet 7x7/2", "definitions"}
    assert 0 <= meas["ZFNet 7x7/2"]["val_acc"] <= 1
    assert "dead conv1 filters" in capsys.readouterr().out


def test_imagenette_subset_trains_if_present(shared_dir, tmp_path):
    """Two steps of zfnet on one real Imagenette image per class (skips without ../shared)."""
    import shutil

    root = shared_dir / "data" / "imagenette" / "val"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    for d in sorted(root.iterdir()):
        (tmp_path / "img" / d.name).mkdir(parents=True)
        shutil.copy(sorted(d.iterdir())[0], tmp_path / "img" / d.name)  # a temporary copy, outside the repo
    data = load_folder(tmp_path / "img", size=224)
    assert len(data) == 10 and data.names[0] == "tench"
    cfg = TrainConfig(arch="zfnet", fc_width=16, epochs=1, batch_size=4, lr=0.001, keep_epochs=(), log_every=1)
    tr = Trainer(cfg, data, None, tmp_path / "run", progress=False)
    summary = tr.fit()
    assert summary["status"] == "done" and summary["step"] == 2
    assert np.isfinite(summary["history"][0]["train_loss"])


def test_evaluate_honours_bgr_weights():
    rgb = tiny_net()
    bgr = tiny_net()
    bgr.layer("conv1").weight = rgb.layer("conv1").weight[:, ::-1].copy()  # the same filters, BGR-ordered
    data = tiny_data(9, seed=3)
    pre = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "scale": 1 / 255}
    a = evaluate(rgb, data.images, data.labels, input_size=16, preprocess={**pre, "channel_order": "RGB"})
    b = evaluate(bgr, data.images, data.labels, input_size=16,
                 preprocess={**pre, "mean": pre["mean"][::-1], "channel_order": "BGR"})
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["correct"] == b["correct"]


# ------------------------------------------- parameterisation of layer 1 (issue 20)


def test_low_frequency_fraction_reference_filters(rng):
    """Constant -> 1; 7x7 checkerboard -> ~0.01; white noise -> the disc's share of the grid (13/49)."""
    from zfnet.figures.measures import low_frequency_fraction

    assert low_frequency_fraction(np.ones((2, 3, 7, 7))) == pytest.approx([1.0, 1.0])
    checker = (-1.0) ** np.add.outer(np.arange(7), np.arange(7))
    assert 0.0 < low_frequency_fraction(np.broadcast_to(checker, (1, 3, 7, 7)))[0] < 0.02
    noise = np.median(low_frequency_fraction(rng.standard_normal((96, 3, 7, 7))))
    assert 0.24 < noise < 0.30  # 13/49 = 0.265 in expectation; 96 filters of 147 numbers each
    smooth = np.exp(-np.add.outer((np.arange(7) - 3.0) ** 2, (np.arange(7) - 3.0) ** 2) / 8)  # a soft blob
    assert low_frequency_fraction(smooth[None, None])[0] > 0.95
    with pytest.raises(ValueError, match="expected a"):
        low_frequency_fraction(np.ones((3, 7, 7)))


def test_initialize_small_conv1_and_paper_scale():
    from zfnet.train import initialize

    assert TrainConfig().conv1_init_std == 1e-3  # the recipe's default (docs/training.md)
    he = tiny_net()
    model = tiny_net()
    initialize(model, TrainConfig(conv1_init_std=1e-3))
    w1 = model.layer("conv1").weight
    assert w1.std() == pytest.approx(1e-3, rel=0.35)  # 108 numbers
    np.testing.assert_array_equal(model.layer("fc6").weight, he.layer("fc6").weight)  # others keep He
    initialize(model, TrainConfig(init_std=0.01, conv1_init_std=None))
    assert model.layer("fc6").weight.std() == pytest.approx(0.01, rel=0.1)
    assert model.layer("conv1").weight.std() == pytest.approx(0.01, rel=0.35)
    assert np.all(model.layer("fc6").bias == 0)
    before = model.state_dict()
    initialize(model, TrainConfig(conv1_init_std=None))  # nothing asked: nothing changes
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("scale", ["unit", "pixel"])
def test_weights_record_the_input_scale_they_were_trained_on(tmp_path, scale):
    """Round trip: the preprocessing saved with the weights reproduces the trainer's own evaluation."""
    from zfnet.train import IMAGENET_MEAN, IMAGENET_STD

    cfg = tiny_config(epochs=1, input_scale=scale, keep_epochs=(), snapshot_dtype="float32")
    trainer, summary = run(tmp_path, cfg)
    from zfnet.weights import read_npz  # the tiny test net is not a registered arch: read, then load

    arrays, meta = read_npz(tmp_path / "final.npz")
    if scale == "pixel":
        assert meta["scale"] == 1.0 and meta["std"] == [1.0, 1.0, 1.0]
        assert meta["mean"] == pytest.approx([255 * m for m in IMAGENET_MEAN], abs=1e-3)
    else:
        assert meta["scale"] == pytest.approx(1 / 255) and meta["std"] == list(IMAGENET_STD)
    net = tiny_net()
    net.load_state_dict(arrays)
    val = tiny_data(12, seed=1)
    res = evaluate(net, val.images, val.labels, batch_size=5, input_size=16, preprocess=meta)
    assert res["loss"] == pytest.approx(summary["history"][-1]["val_loss"], rel=1e-5)
    # and the pixel scale really is ~58x the unit scale at the input
    x_unit = normalize_batch(np.full((1, 3, 2, 2), 200.0, np.float32), IMAGENET_MEAN, IMAGENET_STD)
    x_meta = normalize_batch(np.full((1, 3, 2, 2), 200.0, np.float32), meta["mean"], meta["std"], meta["scale"])
    ratio = float(x_meta[0, 0, 0, 0] / x_unit[0, 0, 0, 0])
    assert ratio == pytest.approx(1.0 if scale == "unit" else 255 * IMAGENET_STD[0], rel=1e-4)


def test_paper_renormalisation_binds_on_conv1(tmp_path):
    """Pixel-scale inputs, init 1e-2, radius 0.1 (the paper's recipe): conv1's filters hit the radius."""
    cfg = tiny_config(epochs=3, input_scale="pixel", init_std=0.01, conv1_init_std=None, renorm_radius=0.1, lr=0.2,
                      keep_epochs=())
    trainer, summary = run(tmp_path, cfg)
    w = trainer.model.layer("conv1").weight
    rms = np.sqrt((w.reshape(4, -1).astype(np.float64) ** 2).mean(axis=1))
    assert rms.max() <= 0.1 + 1e-6
    assert sum(h["renormalized"]["conv1"] for h in summary["history"]) > 0  # it bound, it was not idle
    assert np.isclose(rms, 0.1, rtol=1e-4).any()


def test_step_records_carry_update_ratios_and_conv1_measures(tmp_path):
    trainer, _ = run(tmp_path, tiny_config(epochs=1, keep_epochs=(), conv1_init_std=None))
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["event"] == "step"]
    assert steps and all(set(r["update_ratio"]) == {"conv1.weight", "fc6.weight", "fc8.weight"} for r in steps)
    assert all(0 < v < 1 for r in steps for v in r["update_ratio"].values())
    assert all(0 <= r["conv1_lowfreq"] <= 1 and r["conv1_dead"] == 0 for r in steps)
    epoch = [r for r in recs if r["event"] == "epoch"][0]
    assert "conv1_lowfreq" in epoch


def test_sgd_update_ratio_is_the_relative_step():
    model = tiny_net()
    grads = {k: np.full_like(v, 0.5) for k, v in model.state_dict().items()}
    w = model.layer("fc6").weight.copy()
    ratios = SGD(model, momentum=0.9, weight_decay=0.0).step(model, grads, lr=0.1, ratios=True)
    assert set(ratios) == {"conv1.weight", "fc6.weight", "fc8.weight"}
    assert ratios["fc6.weight"] == pytest.approx(0.1 * 0.5 * np.sqrt(w.size) / np.linalg.norm(w), rel=1e-5)


def test_resume_is_exact_with_small_conv1_and_pixel_inputs(tmp_path):
    cfg = dict(conv1_init_std=1e-3, input_scale="pixel", keep_epochs=())
    straight, _ = run(tmp_path / "a", tiny_config(**cfg))
    t1, s1 = run(tmp_path / "b", tiny_config(**cfg), time_limit=0)
    assert s1["status"] == "stopped"
    t2, s2 = run(tmp_path / "b", tiny_config(**cfg))
    assert s2["status"] == "done"
    ref = straight.model.state_dict()
    for k, v in t2.model.state_dict().items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)


def test_a_checkpoint_from_before_the_new_recipe_keys_resumes_with_its_own_recipe(tmp_path):
    """Checkpoints written before input_scale/init_std/conv1_init_std existed trained with He init."""
    from zfnet.train import LEGACY_DEFAULTS, _atomic_savez
    from zfnet.weights import read_npz

    cfg = tiny_config(conv1_init_std=None)
    run(tmp_path, cfg, stop_at_epoch=1)
    arrays, meta = read_npz(tmp_path / "last.npz")
    for key in LEGACY_DEFAULTS:  # make it look like an old checkpoint
        del meta["config"][key]
    arrays["__meta__.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    _atomic_savez(tmp_path / "last.npz", arrays)
    t, s = run(tmp_path, cfg)
    assert s["status"] == "done" and s["epoch"] == 2
    with pytest.raises(ConfigError, match="conv1_init_std"):  # the new default is a different recipe
        run(tmp_path, tiny_config(epochs=3))


def test_init_from_a_run_starts_from_its_weights_and_resumes_exactly(tmp_path):
    """--init-from: a warm restart from a run's final.npz (float16) or last.npz (exact)."""
    first, _ = run(tmp_path / "first", tiny_config(keep_epochs=()))
    trained = first.model.state_dict()
    for name, exact in (("last.npz", True), ("final.npz", False)):
        src = tmp_path / "first" / name
        cfg = tiny_config(init_from=str(src), epochs=1, keep_epochs=(0,))
        t = Trainer(cfg, tiny_data(), tiny_data(12, seed=1), tmp_path / f"warm-{name}", model=tiny_net(seed=5),
                    progress=False)
        t.fit(resume=True)
        from zfnet.weights import read_npz

        start, meta = read_npz(tmp_path / f"warm-{name}" / "epoch-000.npz")
        for k, v in trained.items():
            if exact:
                np.testing.assert_array_equal(start[k].astype(np.float32), v.astype(np.float16).astype(np.float32),
                                              err_msg=k)  # the snapshot itself is float16
            else:
                np.testing.assert_array_equal(start[k], v.astype(np.float16), err_msg=k)
        assert len(meta["training"]["init_sha256"]) == 64
        assert t.model.state_dict()["fc8.weight"].tolist() != start["fc8.weight"].tolist()  # it trained on
    # a stopped warm run resumes exactly, even when the start file has gone since
    cfg = tiny_config(init_from=str(tmp_path / "first" / "last.npz"))
    straight = Trainer(cfg, tiny_data(), tiny_data(12, seed=1), tmp_path / "s", model=tiny_net(), progress=False)
    straight.fit()
    t1 = Trainer(cfg, tiny_data(), tiny_data(12, seed=1), tmp_path / "r", model=tiny_net(), progress=False,
                 time_limit=0)
    assert t1.fit(resume=True)["status"] == "stopped"
    t2 = Trainer(cfg, tiny_data(), tiny_data(12, seed=1), tmp_path / "r", model=tiny_net(), progress=False)
    assert t2.fit(resume=True)["status"] == "done"
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(t2.model.state_dict()[k], v, err_msg=k)


def test_init_from_refuses_other_networks_and_other_preprocessing(tmp_path):
    from zfnet.train import load_initial_weights

    run(tmp_path / "first", tiny_config(keep_epochs=()))
    src = str(tmp_path / "first" / "final.npz")
    wider = tiny_net()
    wider.layers[3] = Linear("fc6", 4 * 4 * 4, 5, rng=np.random.default_rng(0))  # fc6 of another width
    wider.layers[5] = Linear("fc8", 5, 3, relu=False, rng=np.random.default_rng(1))
    before = {k: v.copy() for k, v in wider.state_dict().items()}
    with pytest.raises(ConfigError, match="not the weights of this network.*fc6.weight"):
        load_initial_weights(wider, src)
    for k, v in wider.state_dict().items():  # nothing was copied
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ConfigError, match="another preprocessing"):
        run(tmp_path / "pix", tiny_config(init_from=src, input_scale="pixel"))
    with pytest.raises(ConfigError, match="no such file"):
        run(tmp_path / "gone", tiny_config(init_from=str(tmp_path / "nope.npz")))


def test_fit_keeps_freed_memory_only_when_asked(tmp_path, monkeypatch):
    """The process-wide allocator setting is opt-in: ``zfnet train`` asks for it, a
    library caller gets an unchanged process unless it does."""
    import zfnet.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_memory", lambda: calls.append(1) or True)
    run(tmp_path / "plain", tiny_config(epochs=1))
    assert calls == []
    run(tmp_path / "kept", tiny_config(epochs=1), keep_freed_memory=True)
    assert calls == [1]
