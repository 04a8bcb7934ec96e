"""Training ZFNet and AlexNet from scratch with our own ops: SGD, a schedule, augmentation, exact resume.

The recipe (the defaults of :class:`TrainConfig`; ``docs/training.md`` says why)
-----------------------------------------------------------------------------
* **Loss**: mean softmax cross-entropy (:func:`zfnet.ops.softmax_cross_entropy`).
* **Optimiser**: SGD with momentum ``mu = 0.9`` in PyTorch's form,
  ``v <- mu v + g + lambda w``, ``w <- w - eta_t v``, weight decay
  ``lambda = 5e-4`` on weights (not on biases), as in the paper (section 3).
* **Learning rate** ``eta_t``: per step; a linear warm-up from ``eta / W`` to ``eta``
  over ``warmup_epochs`` (``W`` steps), then either ``"cosine"``,
  ``eta_t = eta (1 + cos(pi t)) / 2`` with ``t`` the fraction of the remaining steps
  done, or ``"step"``, ``eta`` times ``gamma`` for every milestone epoch passed (the
  paper divided by 10 by hand when the validation error stalled).
* **Augmentation**: random-resized crops of area ``U(min_scale, 1)`` and aspect
  ratio ``[3/4, 4/3]`` of the stored ``S x S`` image, resized to the input size,
  mirrored with probability 1/2 (:mod:`zfnet.data.augment`); evaluation uses the
  whole (centre) image.  Pixels are normalised with ImageNet's RGB mean and std on a
  0..1 scale, so inputs have roughly unit standard deviation.
* **Filter renormalisation** (paper section 3, optional): after each step, every
  convolution filter whose RMS ``sqrt(mean_{c,u,v} w[o,c,u,v]^2)`` exceeds
  ``renorm_radius`` is scaled back to it.  The paper's radius, 0.1, is for inputs in
  about [-128, 128] (pixel std about 58).  Our inputs are that divided by about 58,
  and ``w . x`` is unchanged when ``x`` is divided by what ``w`` is multiplied by, so
  the same constraint on conv1 is an RMS of about ``0.1 * 58 = 5.8`` here: far above
  where our filters live (He initialisation gives conv1 an RMS of 0.12).  We keep
  the paper's intent (stop a few filters from dominating) with the paper's ratio of
  radius to initial scale, 10, applied to conv1's He scale: ``renorm_radius = 1.0``
  in our recipe, applied to every convolution (it binds, if at all, in layer 1).
* **Batches**: each epoch is a fresh permutation of the training set cut into
  ``floor(N / batch)`` full batches (the remainder is left out of that epoch, a
  different remainder every epoch), so every step has the same batch size.

Determinism and exact resume
----------------------------
All randomness comes from three kinds of :class:`numpy.random.Generator`, each
seeded from ``seed``: the epoch permutations, the augmentation draws, and each
dropout layer's own generator (the model's weights are initialised from ``seed``
too).  A checkpoint (``last.npz``, written at the end of every epoch and when a run
is stopped between steps by a time limit, Ctrl-C or SIGTERM) holds the parameters,
the momentum buffers, the current epoch's permutation, the step counters and every
generator's state, so a resumed run computes exactly what the uninterrupted run
would have (bit for bit on NumPy; see ``tests/test_train.py``).  Snapshots of the
weights alone (the native format, :func:`zfnet.weights.save`) are kept at chosen
epochs for the feature-evolution figure, plus ``final.npz``.

Runs on NumPy or CuPy: the model and the training images are moved to the device;
crops, flips and normalisation run there, and only the random numbers are drawn on
the host.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .backend import asnumpy, get_array_module, to_device
from .data.augment import center_boxes, crop_resize, normalize_batch, random_boxes
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD  # the package's one copy, re-exported here
from ._files import atomic_write
from .data_parallel import data_parallel_forward_backward, shard_count
from ._memory import keep_freed_memory
from .errors import ConfigError, WeightsError
from .nn import Conv2d, Dropout
from .ops import softmax_cross_entropy
from .ops._parallel import parallel_pieces

__all__ = [
    "TrainConfig",
    "SGD",
    "lr_at",
    "renormalize_filters",
    "initialize",
    "preprocess_for",
    "evaluate",
    "Trainer",
    "load_checkpoint",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

CHECKPOINT_FORMAT = "zfnet-train-checkpoint"
CHECKPOINT_VERSION = 1
ARCHS = ("zfnet", "alexnet", "alexnet-torchvision")
INPUT_SCALES = ("unit", "pixel")

# Recipe keys added after checkpoints were first written, with the value an older
# checkpoint (which lacks them) was trained with: resuming it keeps its recipe.
LEGACY_DEFAULTS = {"input_scale": "unit", "init_std": None, "conv1_init_std": None, "init_from": None}

# Options that only change how a run is watched, not what it computes: they may
# differ between a run and its resumption.
RUNTIME_KEYS = ("log_every", "eval_every", "keep_epochs", "snapshot_dtype")


@dataclass
class TrainConfig:
    """Everything that determines a training run (see the module docstring).

    Parameters
    ----------
    arch : {"zfnet", "alexnet", "alexnet-torchvision"}
    fc_width : int
        Width of fc6 and fc7 (the paper's 4096 is for 1000 classes; 1024 for 10).
    epochs, batch_size : int
    lr, momentum, weight_decay : float
    schedule : {"cosine", "step"}
    warmup_epochs : float
    milestones : tuple of int
        Epochs after which the step schedule multiplies the rate by ``gamma``.
    gamma : float
    min_scale : float
        Smallest crop area fraction; 1.0 with ``flip=False`` means no augmentation.
    flip : bool
    renorm_radius : float or None
        RMS radius of the filter renormalisation; None or 0 turns it off.
    input_scale : {"unit", "pixel"}
        ``"unit"``: ``(pixel / 255 - mean) / std`` with ImageNet's mean/std (inputs of
        about unit spread); ``"pixel"``: ``pixel - 255 mean`` (the paper's and Caffe's
        scale, about [-128, 128]).  Recorded in the weights' preprocessing.
    init_std : float or None
        Every conv and fc weight drawn from ``N(0, init_std^2)`` (the paper: 1e-2);
        None keeps He normal, ``N(0, 2 / fan_in)``.
    conv1_init_std : float or None
        conv1's weights from ``N(0, conv1_init_std^2)`` whatever ``init_std`` says;
        None: as the other layers.  Default 1e-3: with He's 0.12 the filters stay
        buried in their initial noise (``docs/training.md``, "Layer 1 that learns").
    init_from : str or None
        Start from the weights in this file instead of a random draw: a native
        ``.npz`` of the same architecture and classes, or a training checkpoint
        (``last.npz``, its float32 parameters only).  The optimizer, schedule and
        data order start afresh (a warm restart); the file's SHA-256 is recorded in
        ``metrics.jsonl`` and in every snapshot's ``training`` metadata.
    input_size : int
        Side of the network input (224 for both networks here).
    seed : int
    keep_epochs : tuple of int
        Epochs whose weights are kept as snapshots (``epoch-NNN.npz``); 0 is the
        initialisation.  The final weights are always kept (``final.npz``).
    eval_every : int
        Evaluate on the validation split every this many epochs (and after the last).
    val_limit, train_limit : int or None
        Use an evenly spaced subset of this many images (quick runs).
    log_every : int
        Steps per ``step`` record in ``metrics.jsonl``.
    snapshot_dtype : {"float16", "float32"}
    """

    arch: str = "zfnet"
    fc_width: int = 1024
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    milestones: tuple = (15, 25)
    gamma: float = 0.1
    min_scale: float = 0.35
    flip: bool = True
    renorm_radius: float | None = 1.0
    input_scale: str = "unit"
    init_std: float | None = None
    conv1_init_std: float | None = 1e-3
    init_from: str | None = None
    input_size: int = 224
    seed: int = 0
    keep_epochs: tuple = (1, 2, 5, 10, 20)
    eval_every: int = 1
    val_limit: int | None = None
    train_limit: int | None = None
    log_every: int = 20
    snapshot_dtype: str = "float16"

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        self.keep_epochs = tuple(sorted({int(e) for e in self.keep_epochs}))
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.schedule in ("cosine", "step"), "schedule must be 'cosine' or 'step'"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 < self.min_scale <= 1, "min_scale must be in (0, 1]"),
            (self.renorm_radius is None or self.renorm_radius >= 0, "renorm_radius must be >= 0"),
            (self.input_size >= 16, "input_size must be >= 16"),
            (self.input_scale in INPUT_SCALES, f"input_scale must be one of {', '.join(INPUT_SCALES)}"),
            (self.init_std is None or self.init_std > 0, "init_std must be positive (or None: He)"),
            (self.conv1_init_std is None or self.conv1_init_std > 0,
             "conv1_init_std must be positive (or None: as the other layers)"),
            (self.init_from is None or (isinstance(self.init_from, str) and self.init_from.strip() != ""),
             "init_from must be a file path (or None)"),
            (self.eval_every >= 1 and self.log_every >= 1, "eval_every and log_every must be >= 1"),
            (self.snapshot_dtype in ("float16", "float32"), "snapshot_dtype must be float16 or float32"),
            (all(e >= 0 for e in self.keep_epochs), "keep_epochs must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"training config: {msg}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"], d["keep_epochs"] = list(self.milestones), list(self.keep_epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"training config: unknown keys {unknown}")
        return cls(**d)


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of (0-based) ``step`` under ``config``'s warm-up and schedule."""
    warm = config.warmup_epochs * steps_per_epoch
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "cosine":
        total = config.epochs * steps_per_epoch
        t = (step - warm) / max(total - warm, 1)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    epoch = step // steps_per_epoch
    return config.lr * config.gamma ** sum(epoch >= m for m in config.milestones)


class SGD:
    """Stochastic gradient descent with momentum and weight decay, PyTorch's form.

    ``v <- mu v + (g + lambda w)``, ``w <- w - eta v`` for every parameter, with
    ``lambda = 0`` for biases.  (Caffe folds ``eta`` into ``v`` instead; the two
    agree while ``eta`` is constant.)  Buffers live on the parameters' device and
    are keyed like ``model.state_dict()``.
    """

    def __init__(self, model, momentum: float = 0.9, weight_decay: float = 5e-4):
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: dict = {}
        for key, layer, attr in model.named_parameters():
            w = layer.params()[attr]
            self.buffers[key] = get_array_module(w).zeros_like(w)

    def step(self, model, grads: dict, lr: float, ratios: bool = False) -> dict:
        """Update ``model``'s parameters in place from ``grads`` (``model.gradients()``).

        With ``ratios=True`` also return, per weight (not bias), the relative size of
        this step, ``||eta v|| / ||w||`` (Frobenius norms, ``w`` before the step): the
        number that says whether a layer is learning (about 1e-3 is the usual healthy
        value; far below it the layer hardly moves from its initialisation).
        """
        out = {}
        for key, layer, attr in model.named_parameters():
            w, g, v = layer.params()[attr], grads[key], self.buffers[key]
            mu, eta = w.dtype.type(self.momentum), w.dtype.type(lr)
            lam = w.dtype.type(self.weight_decay) if self.weight_decay and attr == "weight" else None
            if ratios and attr == "weight":  # ||eta v|| needs the whole new v before w moves
                self._velocity(v, g, w, mu, lam)
                xp = get_array_module(w)
                out[key] = float(lr * xp.linalg.norm(v.ravel()) / max(float(xp.linalg.norm(w.ravel())), 1e-30))
                w -= eta * v
            elif isinstance(w, np.ndarray) and w.flags.c_contiguous and v.flags.c_contiguous:
                # NumPy: both updates a piece at a time (in cache), the pieces shared among CPU threads
                wf, gf, vf = w.reshape(-1), np.ascontiguousarray(g).reshape(-1), v.reshape(-1)

                def piece(lo, hi, wf=wf, gf=gf, vf=vf, mu=mu, lam=lam, eta=eta):
                    self._velocity(vf[lo:hi], gf[lo:hi], wf[lo:hi], mu, lam)
                    wf[lo:hi] -= eta * vf[lo:hi]

                parallel_pieces(wf.size, wf.itemsize, piece, 1 << 18)
            else:
                self._velocity(v, g, w, mu, lam)
                w -= eta * v
        return out

    @staticmethod
    def _velocity(v, g, w, mu, lam) -> None:
        """``v <- mu v + g (+ lam w)`` in place, in that order of operations (every path rounds alike)."""
        v *= mu
        v += g
        if lam is not None:
            v += lam * w

    def state_dict(self) -> dict:
        return {k: asnumpy(v) for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        for k, v in self.buffers.items():
            if k not in state or tuple(state[k].shape) != tuple(v.shape):
                raise WeightsError(f"{source}: momentum for {k} missing or of the wrong shape")
            self.buffers[k] = get_array_module(v).asarray(state[k], dtype=v.dtype)


def renormalize_filters(model, radius: float | None):
    """Scale back every conv filter whose RMS exceeds ``radius``; return how many were.

    ``rms[o] = sqrt(mean_{c,u,v} w[o,c,u,v]^2)``; filters with ``rms[o] > radius``
    become ``w[o] * radius / rms[o]`` (paper section 3).  Returns a dict
    ``{layer name: number of filters scaled}``.
    """
    counts = {}
    if not radius:
        return counts
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            w = layer.weight
            xp = get_array_module(w)
            rms = xp.sqrt((w * w).reshape(w.shape[0], -1).mean(axis=1))  # (C_out,)
            over = rms > radius
            n = int(over.sum())
            if n:
                scale = xp.where(over, radius / xp.maximum(rms, 1e-12), 1).astype(w.dtype)
                w *= scale.reshape(-1, 1, 1, 1)
            counts[layer.name] = n
    return counts


def initialize(model, config: TrainConfig) -> None:
    """Redraw the weights the recipe asks for (``init_std``, ``conv1_init_std``).

    With both None the model keeps its own (He normal) initialisation.  Otherwise
    every conv and fc weight (in ``model.named_parameters()`` order) is drawn from
    ``N(0, init_std^2)`` and the first convolution's from ``N(0, conv1_init_std^2)``,
    from a generator seeded by ``config.seed``; biases stay zero.
    """
    if config.init_std is None and config.conv1_init_std is None:
        return
    rng = np.random.default_rng([config.seed, 1])  # a stream of its own, not the model's
    first_conv = True
    for _, layer, attr in model.named_parameters():
        w = layer.params()[attr]
        if attr != "weight" or w.ndim not in (2, 4):
            continue
        std = config.init_std
        if w.ndim == 4 and first_conv:
            first_conv = False
            std = config.conv1_init_std if config.conv1_init_std is not None else std
        if std is not None:
            w[...] = rng.standard_normal(w.shape).astype(w.dtype) * w.dtype.type(std)


def load_initial_weights(model, path: str | os.PathLike, preprocess: dict | None = None) -> str:
    """Copy the parameters in ``path`` into ``model``; return the file's SHA-256.

    ``path`` is a native weights ``.npz`` (as ``zfnet.weights.save`` writes, e.g. a
    run's ``final.npz``) or a training checkpoint (``last.npz``).  Every parameter
    of ``model`` must be present with its shape (same architecture, ``fc_width``
    and number of classes); a native file must also record the preprocessing
    ``preprocess`` (mean, std, scale, channel order) the new run trains with, or
    the start would be on inputs of another scale.  Raises ``ConfigError`` or
    ``WeightsError`` naming the file and the mismatch.
    """
    import hashlib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"init_from {path}: no such file")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    try:
        state = load_checkpoint(path)["params"]
        theirs = None
    except WeightsError:  # not a checkpoint: a native weights file (read as arrays, never unpickled)
        from .weights import read_npz

        state, theirs = read_npz(path)
        theirs = theirs or {}
    if theirs is not None and preprocess is not None:
        keys = ("mean", "std", "scale", "channel_order")
        diff = {k: (theirs.get(k), preprocess.get(k)) for k in keys
                if not _same_number_list(theirs.get(k), preprocess.get(k))}
        if diff:
            raise ConfigError(f"init_from {path}: its weights expect another preprocessing "
                              f"(key: (file, this run)): {diff}; set --input-scale to match")
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    wrong = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in ours.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)}
    if missing or wrong:
        raise ConfigError(f"init_from {path}: not the weights of this network "
                          f"(missing: {missing[:5]}, shape (file, network): {dict(list(wrong.items())[:5])}); "
                          f"check --arch, --fc-width and the number of classes")
    model.load_state_dict({k: np.asarray(state[k], np.float32) for k in ours}, source=str(path))
    return digest.hexdigest()


def _same_number_list(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_number_list(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def preprocess_for(config: TrainConfig) -> dict:
    """The preprocessing a run trains with, as recorded in its weights' ``config``.

    ``input_scale="unit"``: ``(pixel / 255 - mean) / std`` with ImageNet's RGB mean
    and std.  ``"pixel"``: ``pixel - 255 mean`` (``scale`` 1, ``std`` 1), the
    paper's and Caffe's range of about [-128, 128].
    """
    size = config.input_size
    if config.input_scale == "pixel":
        mean, std, scale = [round(255.0 * m, 3) for m in IMAGENET_MEAN], [1.0, 1.0, 1.0], 1.0
    else:
        mean, std, scale = list(IMAGENET_MEAN), list(IMAGENET_STD), 1.0 / 255.0
    return {"input_size": [size] * 2, "crop": [size] * 2, "resize": size, "channel_order": "RGB",
            "mean": mean, "std": std, "scale": scale, "interpolation": "bilinear"}


def _even_subset(n: int, limit: int | None) -> np.ndarray:
    """``limit`` indices spread evenly over ``range(n)`` (all when None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(limit)).round().astype(np.int64))


def _to_input(images, boxes, flips, input_size, config_norm):
    x = crop_resize(images, boxes, input_size, flips)  # (B, 3, S, S), 0..255, RGB
    if config_norm["channel_order"] == "BGR":  # Caffe-trained weights (evaluate() of foreign models)
        x = x[:, ::-1]
    return normalize_batch(x, config_norm["mean"], config_norm["std"], config_norm["scale"])


def evaluate(model, images, labels, *, batch_size: int = 100, input_size: int | None = None,
             preprocess: dict | None = None, progress: bool = False) -> dict:
    """Top-1 accuracy and mean loss of ``model`` on a labelled image array.

    Parameters
    ----------
    model : Network
        Evaluated in eval mode (dropout off); its training flag is restored after.
    images : uint8 array, (N, S, S, 3), NumPy or CuPy
        Each is seen whole: its centred square resized to ``input_size``.
    labels : int array, (N,)
    batch_size : int
    input_size : int, optional
        Default: ``model.input_size[0]``.
    preprocess : dict, optional
        ``mean``, ``std``, ``scale``, ``channel_order`` (default ImageNet's RGB
        mean/std on 0..1); ``model.config`` of loaded weights works.

    Returns
    -------
    dict
        ``loss``, ``acc`` (top-1), ``correct``, ``count``, ``per_class_acc`` (list).
    """
    norm = _norm(preprocess)
    size = int(input_size or model.input_size[0])
    xp = model.xp
    was_training = model.layers[0].training
    model.eval()
    n = int(labels.shape[0])
    labels_np = asnumpy(labels).astype(np.int64)
    preds = np.empty(n, np.int64)
    loss_sum = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="eval", unit="img", leave=False)
    try:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            batch = xp.asarray(images[lo:hi])
            boxes, flips = center_boxes(hi - lo, tuple(batch.shape[1:3]))
            x = _to_input(batch, boxes, None, size, norm)
            out = model.forward(x, caches=False).output
            t = xp.asarray(labels_np[lo:hi])
            loss, _ = softmax_cross_entropy(out, t)
            loss_sum += float(loss) * (hi - lo)
            preds[lo:hi] = asnumpy(out.argmax(axis=1))
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    correct = preds == labels_np
    k = int(labels_np.max()) + 1 if n else 0
    per_class = [float(correct[labels_np == c].mean()) if np.any(labels_np == c) else float("nan") for c in range(k)]
    return {"loss": loss_sum / max(n, 1), "acc": float(correct.mean()) if n else float("nan"),
            "correct": int(correct.sum()), "count": n, "per_class_acc": per_class}


def _norm(preprocess: dict | None) -> dict:
    """The normalisation part of a preprocessing dict, read by :class:`zfnet.data.TransformConfig`.

    One source of defaults (ImageNet's RGB mean/std on 0..1) and of checks, shared
    with :meth:`zfnet.models.Network.transform`; the geometry keys are not read here
    (``evaluate`` sees each image whole at ``input_size``).
    """
    from .data import TransformConfig

    p = preprocess or {}
    cfg = TransformConfig.from_dict({k: p[k] for k in ("mean", "std", "scale", "channel_order") if k in p})
    return {"mean": cfg.mean, "std": cfg.std, "scale": cfg.scale, "channel_order": cfg.channel_order}


# ------------------------------------------------------------------- checkpoints


def _atomic_savez(path: Path, arrays: dict) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint safely (no pickles): ``{"state", "params", "momentum", "perm"}``.

    Raises
    ------
    WeightsError
        Not a readable checkpoint, naming the file.
    """
    from .weights import read_npz

    arrays, meta = read_npz(path)
    if meta is None or meta.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a zfnet training checkpoint (no {CHECKPOINT_FORMAT!r} metadata)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise WeightsError(f"{path}: checkpoint version {meta.get('version')!r}, this zfnet reads {CHECKPOINT_VERSION}")
    out = {"state": meta, "params": {}, "momentum": {}, "perm": arrays.get("perm")}
    for k, v in arrays.items():
        kind, _, key = k.partition("/")
        if kind in ("params", "momentum"):
            out[kind][key] = v
    return out


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


@dataclass
class _State:
    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps over the whole run
    step_in_epoch: int = 0  # completed steps of the current epoch
    elapsed: float = 0.0  # training seconds so far, over every session
    perm: Any = None
    history: list = field(default_factory=list)  # per-epoch summaries
    # sums over the current epoch ("ep_*") and the current log window ("win_*"),
    # kept in the checkpoint so an epoch's metrics do not depend on interruptions
    running: dict = field(default_factory=dict)

    def reset_epoch(self) -> None:
        self.running = {"ep_loss": 0.0, "ep_correct": 0.0, "ep_seen": 0, "win_loss": 0.0, "win_correct": 0.0,
                        "win_seen": 0, "renormed": {}}


@dataclass
class _Session:
    """What one call of :meth:`Trainer.fit` counts (not saved: speed is per session)."""

    t_start: float
    status: str = "done"
    seen: int = 0  # images trained on in this session
    win_t: float = 0.0  # start of the current log window
    win_seen: int = 0  # images in it (this session only)

    def new_window(self, now: float | None = None) -> None:
        self.win_t, self.win_seen = (time.perf_counter() if now is None else now), 0


class Trainer:
    """Train a network on a labelled uint8 image array; checkpoint, resume, log.

    Parameters
    ----------
    config : TrainConfig
    train : PackedSplit (or anything with ``images`` (N, S, S, 3) uint8, ``labels`` (N,), ``names``)
    val : same, optional
    out_dir : str or Path
        Receives ``last.npz`` (the resumable checkpoint), ``epoch-NNN.npz`` and
        ``final.npz`` (weights), ``metrics.jsonl`` and ``config.json``.
    device : {"cpu", "gpu"}
    model : Network, optional
        Train this network instead of building ``config.arch`` (tests use tiny ones).
    progress : bool
        tqdm bars.
    time_limit : float, optional
        Seconds; the run stops cleanly (checkpoint written) after the first step
        that ends past it.  ``resume=True`` later continues exactly.
    stop_at_epoch : int, optional
        Stop cleanly once this many epochs are complete (a GPU call of limited
        length trains a few epochs, the next call resumes).
    keep_freed_memory : bool
        On the CPU, have :meth:`fit` make this *whole process* keep the memory it
        frees (:func:`zfnet._memory.keep_freed_memory`; glibc only): steps about 20%
        faster, no page faults, but the process holds its peak memory until it
        exits and the setting cannot be undone.  ``zfnet train`` turns it on; off by
        default so that a notebook or another program is not changed behind its back.
        The data-parallel step (:mod:`zfnet.data_parallel`) needs it to have been set
        before any other thread started (``zfnet train`` sets it when the command
        starts, for GPU runs too, where it concerns only host memory): a thread
        started earlier keeps its own heap, and a shard thread
        that inherits such a heap maps its big arrays anew every step (measured:
        14,500 page faults a step, ZFNet steps of 1.5 s instead of 1.15 s).
    """

    def __init__(self, config: TrainConfig, train, val=None, out_dir="runs/train", device: str = "cpu",
                 model=None, progress: bool = True, time_limit: float | None = None,
                 stop_at_epoch: int | None = None, keep_freed_memory: bool = False):
        self.config = config
        self.train_data, self.val_data = train, val
        self.out_dir = Path(out_dir)
        self.device = device
        self.progress = progress
        self.time_limit = time_limit
        self.stop_at_epoch = stop_at_epoch
        self.keep_freed_memory = keep_freed_memory
        self.names = list(getattr(train, "names", []) or [])
        num_classes = int(np.max(asnumpy(train.labels))) + 1 if not self.names else len(self.names)
        if model is None:
            if config.arch not in ARCHS:
                raise ConfigError(f"arch {config.arch!r}: expected one of {', '.join(ARCHS)}")
            from .models import build

            model = build(config.arch, num_classes=num_classes, fc_width=config.fc_width, seed=config.seed)
        elif model.num_classes != num_classes:
            raise ConfigError(f"model has {model.num_classes} outputs, the data {num_classes} classes")
        self.model = model
        size = int(train.images.shape[1])
        initialize(self.model, config)
        self.preprocess = preprocess_for(config)
        self.init_sha256 = None  # set by fit() from config.init_from on a fresh run, or by restore()
        self.model.config.update(self.preprocess)
        if self.names:
            self.model.config["class_names"] = list(self.names)
        self.model.to(device)
        self.xp = self.model.xp
        train_idx = _even_subset(len(train.labels), config.train_limit)
        # On a GPU the whole uint8 training set goes to device memory once (1.4 GB at 224).
        whole = len(train_idx) == len(train.labels)  # no copy of a 1.4 GB array when all are used
        self.images = to_device(np.ascontiguousarray(train.images if whole else train.images[train_idx]), device)
        self.labels = to_device(asnumpy(train.labels)[train_idx].astype(np.int64), device)
        self.n_train, self.src_size = len(train_idx), size
        if self.n_train < config.batch_size:
            raise ConfigError(f"{self.n_train} training images is fewer than one batch of {config.batch_size}")
        self.steps_per_epoch = self.n_train // config.batch_size
        if val is not None:
            vi = _even_subset(len(val.labels), config.val_limit)
            self.val_images, self.val_labels = val.images[vi], asnumpy(val.labels)[vi].astype(np.int64)
        ss = np.random.SeedSequence(config.seed)
        order_seq, aug_seq = ss.spawn(2)
        self.order_rng = np.random.Generator(np.random.PCG64(order_seq))
        self.aug_rng = np.random.Generator(np.random.PCG64(aug_seq))
        self.opt = SGD(self.model, config.momentum, config.weight_decay)
        self.state = _State()

    # -- files -----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "last.npz"

    def _dropouts(self):
        return [layer for layer in self.model.layers if isinstance(layer, Dropout)]

    def save_checkpoint(self) -> Path:
        """Write ``last.npz`` atomically: everything an exact resume needs."""
        st = self.state
        meta = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(), "model_config": self.model.config,
            "epoch": st.epoch, "step": st.step, "step_in_epoch": st.step_in_epoch, "elapsed": st.elapsed,
            "n_train": self.n_train, "history": st.history, "running": st.running,
            "init_sha256": self.init_sha256,
            "rng": {"order": self.order_rng.bit_generator.state, "augment": self.aug_rng.bit_generator.state,
                    "dropout": {d.name: d.rng.bit_generator.state for d in self._dropouts()}},
        }
        arrays = {f"params/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"momentum/{k}": v for k, v in self.opt.state_dict().items()})
        if st.perm is not None:
            arrays["perm"] = np.asarray(st.perm, np.int64)
        arrays["__meta__.json"] = np.frombuffer(json.dumps(meta, sort_keys=True, default=_jsonable).encode(), np.uint8)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _atomic_savez(self.checkpoint_path, arrays)
        return self.checkpoint_path

    def restore(self, path: str | os.PathLike | None = None) -> None:
        """Load a checkpoint into this trainer (its config must match, runtime keys aside)."""
        path = Path(path or self.checkpoint_path)
        ck = load_checkpoint(path)
        meta = ck["state"]
        theirs = {k: v for k, v in {**LEGACY_DEFAULTS, **meta["config"]}.items() if k not in RUNTIME_KEYS}
        ours = {k: v for k, v in self.config.to_dict().items() if k not in RUNTIME_KEYS}
        diff = {k: (theirs.get(k), ours.get(k)) for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)}
        if diff:
            raise ConfigError(f"{path}: the checkpoint was made with a different config "
                              f"(key: (checkpoint, now)): {diff}")
        if meta["n_train"] != self.n_train:
            raise ConfigError(f"{path}: the checkpoint trained on {meta['n_train']} images, this data has {self.n_train}")
        self.model.load_state_dict(ck["params"], source=str(path))
        self.opt.load_state_dict(ck["momentum"], source=str(path))
        self.order_rng.bit_generator.state = meta["rng"]["order"]
        self.aug_rng.bit_generator.state = meta["rng"]["augment"]
        for d in self._dropouts():
            d.rng.bit_generator.state = meta["rng"]["dropout"][d.name]
        self.init_sha256 = meta.get("init_sha256")
        self.state = _State(epoch=meta["epoch"], step=meta["step"], step_in_epoch=meta["step_in_epoch"],
                            elapsed=meta["elapsed"], perm=ck["perm"], history=list(meta.get("history", [])),
                            running=dict(meta.get("running") or {}))

    def _log(self, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop records written after the checkpoint being resumed (they will be redone)."""
        p = self.out_dir / "metrics.jsonl"
        if not p.exists():
            return
        keep = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if rec.get("step", 0) <= step:
                keep.append(line)
        p.write_text("".join(s + "\n" for s in keep), encoding="utf-8")

    def _snapshot(self, name: str, extra: dict | None = None) -> Path:
        from .weights import save

        self.model.config["training"] = {"recipe": self.config.to_dict(), "epoch": self.state.epoch,
                                         "step": self.state.step, **(extra or {})}
        if self.init_sha256 is not None:
            self.model.config["training"]["init_sha256"] = self.init_sha256
        path = self.out_dir / name
        save(self.model, path, dtype=self.config.snapshot_dtype)
        return path

    # -- the loop --------------------------------------------------------------
    def _batch(self, s: int):
        cfg, xp = self.config, self.xp
        idx = self.state.perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
        boxes, flips = random_boxes(self.aug_rng, len(idx), (self.src_size, self.src_size), cfg.min_scale,
                                    flip=cfg.flip)
        didx = xp.asarray(idx)
        x = _to_input(self.images[didx], boxes, flips, cfg.input_size, _norm(self.preprocess))
        return x, self.labels[didx]

    def train_step(self, x, y, lr: float, ratios: bool = False):
        """One SGD step on a batch; returns ``(loss, correct)`` as device scalars.

        With ``ratios=True`` the update-to-weight ratios of this step are left in
        ``self.last_ratios`` (see :meth:`SGD.step`).
        """
        model = self.model
        shards = shard_count(model, x)
        if shards > 1:  # each CPU thread takes whole images (zfnet.data_parallel)
            loss, logits = data_parallel_forward_backward(model, x, y, shards)
        else:
            trace = model.forward(x)
            logits = trace.output
            loss, dlogits = softmax_cross_entropy(logits, y)
            model.backward(dlogits, trace, input_grad=False)
        r = self.opt.step(model, model.gradients(), lr, ratios=ratios)
        if ratios:
            self.last_ratios = r
        correct = (logits.argmax(axis=1) == y).sum()
        return loss, correct

    def filter_measures(self) -> dict:
        """conv1's median low-frequency fraction and how many of its filters are dead.

        Dead: RMS below 1% of the layer's median filter RMS (they stopped moving).
        """
        from .figures.measures import low_frequency_fraction

        w = asnumpy(next(layer for layer in self.model.layers if isinstance(layer, Conv2d)).weight)
        rms = np.sqrt((w.astype(np.float64) ** 2).reshape(len(w), -1).mean(axis=1))
        return {"conv1_lowfreq": float(np.nanmedian(low_frequency_fraction(w))),
                "conv1_rms": float(np.median(rms)), "conv1_dead": int((rms < 0.01 * np.median(rms)).sum())}

    # -- fit: the loop as named steps ------------------------------------------
    #
    #   fit:  _begin (new run or exact resume)
    #         for each epoch:  _train_epoch  (steps: _batch, train_step, _after_step,
    #                                          _log_window)  -> stops mid-epoch?
    #                          _end_epoch    (metrics, evaluation, snapshots, checkpoint)
    #                          _stop_reason  (between epochs)
    #         _summary
    def fit(self, resume: bool = False) -> dict:
        """Train to ``config.epochs`` (or until stopped); return a summary dict.

        With ``resume=True`` and a checkpoint in ``out_dir``, continue from it.
        The summary has ``status`` (``"done"`` or ``"stopped"``), ``epoch``,
        ``step``, ``history`` (per-epoch metrics) and ``images_per_s``.

        With ``keep_freed_memory=True`` (see the class) on the CPU, the process keeps
        the memory it frees from here on.
        """
        if self.keep_freed_memory and self.device == "cpu":
            keep_freed_memory()
        self._begin(resume)
        self.model.train()
        session = _Session(t_start=time.perf_counter())
        with _StopRequest() as stop:
            while self.state.epoch < self.config.epochs:
                why = self._train_epoch(stop, session)
                if why is not None:  # stopped inside an epoch: an exact mid-epoch checkpoint
                    self._stopped(why, mid_epoch=True)
                    session.status = "stopped"
                    break
                self._end_epoch()
                why = self._stop_reason(stop, session, between_epochs=True)
                if why is not None and self.state.epoch < self.config.epochs:
                    self._stopped(why, mid_epoch=False)
                    session.status = "stopped"
                    break
        return self._summary(session)

    def _begin(self, resume: bool) -> None:
        """Restore ``last.npz`` (``resume``) or start a new run: log, config, start weights."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.exists():
            self.restore()
            st = self.state
            self._truncate_log(st.step)
            self._log({"event": "resume", "completed_epochs": st.epoch, "step": st.step, "time": time.time()})
            return
        if resume:
            print(f"no checkpoint at {self.checkpoint_path}: starting a new run")
        (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if cfg.init_from is not None:
            self.init_sha256 = load_initial_weights(self.model, cfg.init_from, self.preprocess)
            print(f"started from the weights in {cfg.init_from} (sha256 {self.init_sha256[:12]}...)")
        self._log({"event": "start", "step": 0, "config": cfg.to_dict(), "n_train": self.n_train,
                   "device": self.device, "time": time.time(),
                   **({"init_sha256": self.init_sha256} if self.init_sha256 else {})})
        if 0 in cfg.keep_epochs:
            self._snapshot("epoch-000.npz")

    def _train_epoch(self, stop: "_StopRequest", session: "_Session") -> str | None:
        """Run the rest of the current epoch; return why it stopped early, or ``None``."""
        cfg, st = self.config, self.state
        if st.step_in_epoch == 0:
            st.perm = self.order_rng.permutation(self.n_train)
            st.reset_epoch()
        session.new_window()
        bar = self._progress_bar()
        t_step = time.perf_counter()
        try:
            while st.step_in_epoch < self.steps_per_epoch:
                lr = lr_at(cfg, st.step, self.steps_per_epoch)
                x, y = self._batch(st.step_in_epoch)
                log_now = (st.step + 1) % cfg.log_every == 0 or st.step_in_epoch + 1 == self.steps_per_epoch
                loss, correct = self.train_step(x, y, lr, ratios=log_now)
                self._after_step(loss, correct, int(y.shape[0]), lr, session)
                now = time.perf_counter()
                st.elapsed += now - t_step
                t_step = now
                if bar is not None:
                    r = st.running
                    bar.update(1)
                    bar.set_postfix(loss=f"{r['ep_loss'] / r['ep_seen']:.3f}",
                                    acc=f"{r['ep_correct'] / r['ep_seen']:.3f}", lr=f"{lr:.3g}")
                if st.step % cfg.log_every == 0 or st.step_in_epoch == self.steps_per_epoch:
                    self._log_window(lr, now, session)
                why = self._stop_reason(stop, session, now=now)
                if why is not None and st.step_in_epoch < self.steps_per_epoch:
                    return why
            return None
        finally:
            if bar is not None:
                bar.close()

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, initial=self.state.step_in_epoch, unit="step",
                    desc=f"epoch {self.state.epoch + 1}/{self.config.epochs}", dynamic_ncols=True)

    def _after_step(self, loss, correct, batch: int, lr: float, session: "_Session") -> None:
        """Renormalise, check the loss is finite, and count the step in the running sums."""
        st, r = self.state, self.state.running
        for name, n in renormalize_filters(self.model, self.config.renorm_radius).items():
            r["renormed"][name] = r["renormed"].get(name, 0) + n
        loss, correct = float(loss), float(correct)
        if not math.isfinite(loss):
            raise ConfigError(f"the loss became {loss} at step {st.step} (epoch {st.epoch + 1}); "
                              f"lower the learning rate (now {lr:.4g})")
        st.step += 1
        st.step_in_epoch += 1
        session.seen += batch
        session.win_seen += batch
        for pre in ("ep_", "win_"):
            r[pre + "loss"] += loss * batch
            r[pre + "correct"] += correct
            r[pre + "seen"] += batch

    def _log_window(self, lr: float, now: float, session: "_Session") -> None:
        """One ``step`` record: the mean loss/accuracy since the last one, speed, update ratios, conv1."""
        st, r = self.state, self.state.running
        self._log({"event": "step", "epoch": st.epoch + 1, "step": st.step, "lr": lr,
                   "loss": r["win_loss"] / r["win_seen"], "acc": r["win_correct"] / r["win_seen"],
                   "images_per_s": session.win_seen / max(now - session.win_t, 1e-9),
                   "update_ratio": getattr(self, "last_ratios", {}), **self.filter_measures()})
        r.update(win_loss=0.0, win_correct=0.0, win_seen=0)
        session.new_window(now)

    def _end_epoch(self) -> dict:
        """Close the epoch: its record (with validation when due), snapshots, ``last.npz``."""
        cfg, st = self.config, self.state
        r = st.running
        st.epoch += 1
        st.step_in_epoch = 0
        st.perm = None
        record = {"event": "epoch", "epoch": st.epoch, "step": st.step,
                  "train_loss": r["ep_loss"] / r["ep_seen"], "train_acc": r["ep_correct"] / r["ep_seen"],
                  "lr": lr_at(cfg, st.step - 1, self.steps_per_epoch), "renormalized": r["renormed"],
                  "elapsed_s": st.elapsed, **self.filter_measures()}
        if self.val_data is not None and (st.epoch % cfg.eval_every == 0 or st.epoch == cfg.epochs):
            ev = evaluate(self.model, self.val_images, self.val_labels, batch_size=cfg.batch_size,
                          input_size=cfg.input_size, preprocess=self.preprocess, progress=self.progress)
            record.update(val_loss=ev["loss"], val_acc=ev["acc"], val_count=ev["count"],
                          val_per_class_acc=ev["per_class_acc"])
            print(f"epoch {st.epoch}: val top-1 {ev['acc']:.4f} ({ev['correct']}/{ev['count']}), "
                  f"val loss {ev['loss']:.4f}")
        st.history.append({k: v for k, v in record.items() if k != "event"})
        self._log(record)
        if st.epoch in cfg.keep_epochs and st.epoch != cfg.epochs:
            self._snapshot(f"epoch-{st.epoch:03d}.npz", {"val_acc": record.get("val_acc")})
        if st.epoch == cfg.epochs:
            self._snapshot("final.npz", {"val_acc": record.get("val_acc")})
        self.save_checkpoint()
        return record

    def _stop_reason(self, stop: "_StopRequest", session: "_Session", now: float | None = None,
                     between_epochs: bool = False) -> str | None:
        """Why to stop now, or ``None``: a signal, the time limit, or (between epochs) ``stop_at_epoch``."""
        now = time.perf_counter() if now is None else now
        if stop.requested:
            return stop.requested
        if self.time_limit is not None and now - session.t_start >= self.time_limit:
            return f"time limit {self.time_limit:g} s"
        if between_epochs and self.stop_at_epoch is not None and self.state.epoch >= self.stop_at_epoch:
            return f"stop at epoch {self.stop_at_epoch}"
        return None

    def _stopped(self, why: str, mid_epoch: bool) -> None:
        """Log and report a clean stop (a mid-epoch stop writes its exact checkpoint first)."""
        st = self.state
        if mid_epoch:
            self.save_checkpoint()
            self._log({"event": "stop", "epoch": st.epoch + 1, "step": st.step, "reason": why})
            print(f"stopped ({why}) at epoch {st.epoch + 1} step {st.step_in_epoch}/{self.steps_per_epoch}; "
                  f"checkpoint {self.checkpoint_path}: run again with --resume to continue exactly")
        else:
            self._log({"event": "stop", "epoch": st.epoch, "step": st.step, "reason": why})
            print(f"stopped ({why}) after epoch {st.epoch}; run again with --resume to continue")

    def _summary(self, session: "_Session") -> dict:
        st = self.state
        wall = time.perf_counter() - session.t_start
        return {"status": session.status, "epoch": st.epoch, "step": st.step, "history": st.history,
                "images_per_s": session.seen / wall if wall > 0 else float("nan"),
                "out_dir": str(self.out_dir)}


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{obj!r} is not JSON-serialisable")

