"""The ``zfnet`` command line: help for everything, every value checked before any work.

A bad value must end the command at parse time with argparse's one-line error that
names the option (exit status 2), before anything is mined, loaded or written.  The
commands' work is swapped for functions that fail the test if they are called.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zfnet.cli import build_parser, main, subcommands
from zfnet.cli import visualize
from zfnet.errors import WeightsError, ZfnetError
from zfnet.models import Network
from zfnet.nn import Conv2d, MaxPool2d


def tiny_net() -> Network:
    rng = np.random.default_rng(5)
    layers = [Conv2d("c1", 3, 4, 3, padding=1, rng=rng), MaxPool2d("p1", 2, 2),
              Conv2d("c2", 4, 6, 3, padding=1, rng=rng)]
    return Network(layers, {"arch": "tiny", "input_size": [16, 16], "resize": 16})


def _no_work(*args, **kwargs):
    raise AssertionError("work started although the command line was wrong")


@pytest.fixture
def no_work(monkeypatch):
    """Any loading of weights, making of views or mining fails the test."""
    import zfnet.figures.top9

    monkeypatch.setattr(visualize, "load_model", _no_work)
    monkeypatch.setattr(visualize, "make_demo_views", _no_work)
    monkeypatch.setattr(zfnet.figures.top9, "run_top9", _no_work)


@pytest.fixture
def tiny(monkeypatch):
    """The visualisation commands get the tiny network whatever the weights."""
    monkeypatch.setattr(visualize, "load_model", lambda w, a=None, *caffe: (tiny_net(), "tiny weights", "tiny"))


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(path)
    return path


def refused(argv, capsys, option: str) -> str:
    """Run ``zfnet argv``; it must stop at parse time naming ``option``.  Returns stderr."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    return err


# -- help ------------------------------------------------------------------------------

def test_every_command_and_option_has_help():
    parser = build_parser()
    commands = subcommands(parser)
    assert {"top9", "filters", "featuremaps", "demo", "convert", "info", "rf", "train", "pack-data", "evaluate",
            "fig4", "fig6"} <= set(commands)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {a.dest: a.help for a in sub_action._choices_actions}
    missing = []
    for name, p in commands.items():
        if not listed.get(name):
            missing.append(f"{name}: no help line in 'zfnet --help'")
        if not p.description:
            missing.append(f"{name}: no description")
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert not missing, "\n".join(missing)


def test_demo_help_names_the_default_weights_and_folder(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "zfnet-imagenette.npz" in text and "demo_weights" not in text
    assert "relative to the current folder" in text and "--random-weights" in text


# -- numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("tile", ["-4", "0", "x"])
def test_top9_tile_must_be_a_positive_integer(tile, tmp_path, capsys, no_work):
    err = refused(["top9", "--images", tmp_path, "--out", tmp_path / "out", "--tile", tile], capsys, "--tile")
    assert "positive integer" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("units", ["-2", "0", "3,x", ",", "-1,4", "some"])
def test_units_must_be_positive_all_or_channels(units, tmp_path, capsys, no_work):
    err = refused(["top9", "--images", tmp_path, "--out", tmp_path / "out", f"--units={units}"], capsys, "--units")
    assert "_units_arg" not in err and "invalid" not in err and "'all'" in err
    refused(["demo", "--out", tmp_path / "demo", f"--units={units}"], capsys, "--units")
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()


@pytest.mark.parametrize("text, value", [("16", 16), ("all", "all"), ("3,17,40", [3, 17, 40]), ("5,", [5]),
                                         ("0,2", [0, 2])])
def test_units_values(text, value, tmp_path):
    args = build_parser().parse_args(["top9", "--images", str(tmp_path), "--out", "o", "--units", text])
    assert args.units == value


def test_top9_limit_must_be_positive(tmp_path, capsys, no_work):
    err = refused(["top9", "--images", tmp_path, "--out", tmp_path / "out", "--limit", "-5"], capsys, "--limit")
    assert "start=" not in err and "positive integer" in err


def test_demo_views_must_be_positive(tmp_path, capsys, no_work):
    refused(["demo", "--out", tmp_path / "demo", "--views", "-3"], capsys, "--views")
    refused(["demo", "--out", tmp_path / "demo", "--views", "0"], capsys, "--views")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("argv, option", [
    (["top9", "--k", "0"], "--k"),
    (["top9", "--batch-size", "0"], "--batch-size"),
    (["top9", "--workers", "-1"], "--workers"),
    (["top9", "--decode-threads", "-1"], "--decode-threads"),
    (["top9", "--workers", "2", "--scheduler", "tcp://h:1"], "--scheduler"),
    (["top9", "--seed", "-1"], "--seed"),
    (["demo", "--k", "-9"], "--k"),
    (["train", "--data", ".", "--epochs", "0"], "--epochs"),
    (["train", "--data", ".", "--batch-size", "-2"], "--batch-size"),
    (["train", "--data", ".", "--lr", "0"], "--lr"),
    (["train", "--data", ".", "--lr", "nan"], "--lr"),
    (["train", "--data", ".", "--momentum", "1"], "--momentum"),
    (["train", "--data", ".", "--min-scale", "0"], "--min-scale"),
    (["train", "--data", ".", "--weight-decay", "-1e-4"], "--weight-decay"),
    (["train", "--data", ".", "--input-size", "8"], "--input-size"),
    (["train", "--data", ".", "--milestones", "10", "-3"], "--milestones"),
    (["train", "--data", ".", "--time-limit", "-1"], "--time-limit"),
    (["train", "--data", ".", "--workers", "0"], "--workers"),
    (["train", "--data", ".", "--init-std", "-0.01"], "--init-std"),
    (["pack-data", "src", "dst", "--workers", "0"], "--workers"),
    (["pack-data", "src", "dst", "--shard-mib", "0"], "--shard-mib"),
    (["evaluate", "--weights", "w.npz", "--data", ".", "--batch-size", "0"], "--batch-size"),
    (["fig4", "--run", ".", "--data", ".", "--images", "0"], "--images"),
    (["fig4", "--run", ".", "--data", ".", "--tile", "-64"], "--tile"),
    (["fig6", "--weights", "w.npz", "--data", ".", "--units", "0"], "--units"),
])
def test_numbers_that_must_be_positive(argv, option, tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] in ("top9",):
        argv = argv + ["--images", ".", "--out", "out"]
    if argv[0] == "demo":
        argv = argv + ["--out", "out"]
    refused(argv, capsys, option)
    assert not (tmp_path / "out").exists()


def test_device_gpu_needs_cupy(tmp_path, capsys, no_work):
    from zfnet.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is available here")
    err = refused(["top9", "--images", tmp_path, "--out", tmp_path / "out", "--device", "gpu"], capsys, "--device")
    assert "CuPy" in err
    refused(["featuremaps", "--image", tmp_path, "--layer", "c1", "--out", tmp_path / "f.png", "--device", "tpu"],
            capsys, "--device")


# -- files and folders -----------------------------------------------------------------

def test_top9_out_that_is_a_file(tmp_path, capsys, no_work):
    (tmp_path / "notes.txt").write_text("mine")
    err = refused(["top9", "--images", tmp_path, "--out", tmp_path / "notes.txt"], capsys, "--out")
    assert "is a file, expected a folder" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    refused(["top9", "--images", tmp_path, "--out", tmp_path / "notes.txt" / "sub"], capsys, "--out")
    refused(["demo", "--out", tmp_path / "notes.txt"], capsys, "--out")


def test_top9_images_must_be_a_folder(tmp_path, capsys, no_work):
    err = refused(["top9", "--images", tmp_path / "missing", "--out", tmp_path / "out"], capsys, "--images")
    assert "no such folder" in err and not (tmp_path / "out").exists()


def test_top9_missing_weights_stop_before_mining(tmp_path, capsys, monkeypatch):
    import zfnet.figures.top9

    monkeypatch.setattr(zfnet.figures.top9, "run_top9", _no_work)
    assert main(["top9", "--weights", str(tmp_path / "w.npz"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    assert "w.npz" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["name_without_extension", "folder", "picture.jpg"])
def test_featuremaps_out_must_be_a_png_file(out, tmp_path, image, capsys, no_work):
    (tmp_path / "folder").mkdir()
    err = refused(["featuremaps", "--image", image, "--layer", "c1", "--out", tmp_path / out], capsys, "--out")
    assert ".png" in err


def test_featuremaps_replaces_an_existing_png_only_with_force(tmp_path, image, capsys, tiny):
    out = tmp_path / "fm.png"
    out.write_bytes(b"keep me")
    err = refused(["featuremaps", "--image", image, "--layer", "c1", "--out", out], capsys, "--out")
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    assert main(["featuremaps", "--image", str(image), "--layer", "c1", "--out", str(out), "--force"]) == 0
    assert Image.open(out).size[0] > 0


def test_featuremaps_unknown_layer_stops_before_reading_the_image(tmp_path, image, capsys, tiny, monkeypatch):
    import zfnet.figures.top9

    monkeypatch.setattr(zfnet.figures.top9, "transform_for", _no_work)
    assert main(["featuremaps", "--image", str(image), "--layer", "conv9", "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "--layer" in err and "conv9" in err and "c1, p1, c2" in err
    assert not (tmp_path / "f.png").exists()


def test_filters_one_naming_scheme(tmp_path, capsys, tiny):
    assert main(["filters", "--out", str(tmp_path / "folder")]) == 0
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["filters_c1.png", "filters_c1_shared.png"]
    assert main(["filters", "--out", str(tmp_path / "x.png")]) == 0
    assert sorted(p.name for p in tmp_path.glob("x*.png")) == ["x.png", "x_shared.png"]
    assert main(["filters", "--out", str(tmp_path / "y.png"), "--scaling", "shared"]) == 0
    assert (tmp_path / "y.png").is_file() and not (tmp_path / "y_shared.png").exists()
    capsys.readouterr()
    err = refused(["filters", "--out", tmp_path / "x.png"], capsys, "--out")  # x.png exists now
    assert "--force" in err
    assert main(["filters", "--out", str(tmp_path / "x.png"), "--force"]) == 0
    assert main(["filters", "--out", str(tmp_path / "folder")]) == 0  # a folder: files replaced, as its help says


def test_convert_checks_source_and_destination_first(tmp_path, capsys, monkeypatch):
    import zfnet.weights

    monkeypatch.setattr(zfnet.weights, "load", _no_work)
    src = tmp_path / "w.npz"
    src.write_bytes(b"not read")
    (tmp_path / "file").write_text("")
    err = refused(["convert", tmp_path / "missing.pth", tmp_path / "o.npz"], capsys, "SRC")
    assert "no such file" in err
    err = refused(["convert", src, tmp_path / "file" / "x.npz"], capsys, "DST")
    assert "is a file" in err and ".part" not in err
    err = refused(["convert", src, tmp_path / "x.pt"], capsys, "DST")
    assert ".npz" in err
    (tmp_path / "old.npz").write_bytes(b"old")
    err = refused(["convert", src, tmp_path / "old.npz"], capsys, "DST")
    assert "--force" in err and (tmp_path / "old.npz").read_bytes() == b"old"
    refused(["convert", src, tmp_path / "o.npz", "--classes", tmp_path / "no-classes.txt"], capsys, "--classes")


def test_convert_creates_the_destination_folder(tmp_path, capsys):
    from zfnet.models import zfnet
    from zfnet.weights import load, save

    save(zfnet(num_classes=3, fc_width=8, seed=0), tmp_path / "w.npz", dtype="float16")
    dst = tmp_path / "new" / "deeper" / "w.npz"
    assert main(["convert", str(tmp_path / "w.npz"), str(dst)]) == 0
    assert load(dst).num_classes == 3
    capsys.readouterr()
    refused(["convert", tmp_path / "w.npz", dst], capsys, "DST")  # exists now
    assert main(["convert", str(tmp_path / "w.npz"), str(dst), "--force", "--dtype", "float16"]) == 0


def test_training_commands_check_files_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "val").mkdir(parents=True)
    (tmp_path / "w.npz").write_bytes(b"")
    refused(["train", "--data", "nowhere"], capsys, "--data")
    err = refused(["train", "--data", "data"], capsys, "--data")  # no train/ inside
    assert "train/" in err
    refused(["pack-data", "data", "packed"], capsys, "SRC")  # no train/ split
    assert not (tmp_path / "packed").exists()
    refused(["evaluate", "--weights", "missing.npz", "--data", "data"], capsys, "--weights")
    err = refused(["evaluate", "--weights", "w.npz", "--data", "data", "--json", "out.txt"], capsys, "--json")
    assert ".json" in err
    (tmp_path / "fig4.png").write_bytes(b"old")
    err = refused(["fig4", "--checkpoints", "w.npz", "--data", "data", "--split", "val"], capsys, "--out")
    assert "--force" in err and (tmp_path / "fig4.png").read_bytes() == b"old"
    refused(["fig4", "--run", "data", "--data", "data", "--split", "val", "--out", "f.png"], capsys, "--run")
    with pytest.raises(SystemExit):  # neither --run nor --checkpoints
        main(["fig4", "--data", "data"])
    assert "--run" in capsys.readouterr().err
    err = refused(["fig4", "--checkpoints", "w.npz", "w.npz", "--labels", "a", "--data", "data", "--split", "val",
                   "--out", "f4.png"], capsys, "--labels")
    assert "1 labels for 2" in err
    err = refused(["fig6", "--weights", "w.npz", "w.npz", "--labels", "one", "--data", "data"], capsys, "--labels")
    assert "1 labels for 2" in err
    refused(["fig6", "--weights", "w.npz", "--data", "data", "--out", "fig6"], capsys, "--out")


# -- demo weights ----------------------------------------------------------------------

def test_demo_stops_without_trained_weights(tmp_path, capsys, monkeypatch, no_work):
    import zfnet.weights

    monkeypatch.setattr(zfnet.weights, "bundled_weights_path", lambda name="zfnet-imagenette.npz": None)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "no trained weights" in err and "--random-weights" in err and "--weights" in err
    assert not (tmp_path / "demo").exists()
    args = build_parser().parse_args(["demo"])
    with pytest.raises(WeightsError):
        visualize.resolve_weights(args)
    assert issubclass(WeightsError, ZfnetError)


def test_demo_weights_default_to_the_bundled_file(monkeypatch, tmp_path):
    import zfnet.weights

    fake = tmp_path / "bundled.npz"
    monkeypatch.setattr(zfnet.weights, "bundled_weights_path", lambda name="zfnet-imagenette.npz": fake)
    path, arch, why = visualize.demo_weights()
    assert path == str(fake) and arch == "zfnet" and str(fake) in why
    parse = build_parser().parse_args
    assert visualize.resolve_weights(parse(["demo"]))[0] == str(fake)
    assert visualize.resolve_weights(parse(["demo", "--random-weights"]))[0] is None
    assert visualize.resolve_weights(parse(["demo", "--weights", "w.npz"]))[0] == "w.npz"


def test_demo_weights_and_random_weights_exclude_each_other(tmp_path, capsys, no_work):
    refused(["demo", "--out", tmp_path / "d", "--weights", "w.npz", "--random-weights"], capsys, "--random-weights")


def test_demo_prints_its_weights_and_reruns_with_fewer_views(tmp_path, capsys, tiny):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--random-weights", "--units", "1", "--layers", "c1", "--k", "2"]
    assert main(argv + ["--views", "6"]) == 0
    assert "weights: random weights (--random-weights)" in capsys.readouterr().out
    assert main(argv + ["--views", "3"]) == 0
    assert len(list((out / "images").rglob("*.jpg"))) == 3  # the first run's extra views are gone


# -- benchmarks ------------------------------------------------------------------------

def test_benchmarks_without_torch_say_how_to_install_it():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    # `python -m benchmarks` with torch made unimportable (None in sys.modules), installed or not
    code = "import runpy, sys; sys.modules['torch'] = None; runpy.run_module('benchmarks', run_name='__main__')"
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "pip install torch" in res.stderr and "Traceback" not in res.stderr


def test_squeezenet_accuracy_names_missing_data(tmp_path, capsys):
    from benchmarks.squeezenet_accuracy import main as accuracy

    assert accuracy(["--weights", str(tmp_path / "w.npz"), "--data", str(tmp_path / "val"),
                     "--classes", str(tmp_path / "classes.txt")]) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and "--data" in err and "--classes" in err and "Imagenette" in err


def test_train_shortens_openblas_spin_unless_set():
    """`zfnet train` sets OPENBLAS_THREAD_TIMEOUT=4 before NumPy loads; other commands do
    not, a value already set wins, and a process that imported NumPy first is left
    alone (OpenBLAS has read the variable by then)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}

    def run(argv, first="", **extra):
        code = (f"import sys; sys.argv = {argv!r}; {first}import zfnet.cli, os; "
                "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
        res = subprocess.run([sys.executable, "-c", code], env=dict(env, **extra), capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    assert run(["zfnet", "train", "--data", "x"]) == "4"
    assert run(["zfnet", "top9", "--data", "x"]) == "None"
    assert run(["zfnet"]) == "None"
    assert run(["zfnet", "train"], OPENBLAS_THREAD_TIMEOUT="12") == "12"
    assert run(["zfnet", "train"], first="import numpy; ") == "None"


def test_train_keeps_freed_memory_from_the_start():
    """`zfnet train` sets the allocator (zfnet._memory.keep_freed_memory) when the command
    module loads, before any thread starts; other commands leave it alone."""
    import subprocess
    import sys

    def run(argv):
        code = (f"import sys; sys.argv = {argv!r}; import zfnet.cli, zfnet._memory as m; "
                "print('keep' in m._done)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    from zfnet._memory import _mallopt

    if not _mallopt():  # not glibc: the setting cannot be made anywhere
        pytest.skip("keep_freed_memory needs glibc")
    assert run(["zfnet", "train", "--data", "x"]) == "True"
    assert run(["zfnet", "top9", "--data", "x"]) == "False"
