"""Streaming top-k mining: the k images that most excite each unit of a layer.

The paper's Fig. 2 shows, for a feature map, "the top 9 activations ... across the
validation data", each from a different image.  For every chosen layer and every
channel ``c`` we therefore keep the k best *candidates*, where an image ``n``
contributes one candidate per channel: its spatial argmax

.. math::

    (y^*, x^*) = \\operatorname{argmax}_{(y, x)} a_{n, c, y, x}, \\qquad
    v_{n, c} = a_{n, c, y^*, x^*}

(ties within a map go to the first position in row-major order).  Candidates are
ranked by the strict total order

.. math::

    (v, n, p) \\prec (v', n', p') \\iff v > v' \\text{ or } (v = v' \\text{ and } n < n')
    \\text{ or } (v = v', n = n', p < p')

-- higher value first, then lower image index, then lower flat position
``p = y W + x`` -- so the top k of any set of candidates is unique.  Two things
follow, and they are what make the miner safe to stop and to split:

* **streaming**: the top k of a union is the top k of the union of top-k lists,
  so a batch is folded into a ``(C, k)`` table and dropped; memory is
  ``O(layers x C x k)`` whatever the dataset size;
* **resume and merge are exact**: a run interrupted after image ``m`` and resumed
  from its saved state, or the merge of the states of two shards, ends with the
  same table, bit for bit, as one uninterrupted run.  Merging is also idempotent:
  an image seen by both shards contributes the same candidate twice, and the
  duplicate is dropped.

:class:`TopK` is the table; :func:`mine` drives a network over an
:class:`~zfnet.data.ImageBatches` and checkpoints the table atomically.

References
----------
Zeiler & Fergus (2014), section 4 and Fig. 2.  Yosinski et al. (2015), "Understanding
neural networks through deep visualization" (the deep-visualization toolbox's
"max" images use the same per-image spatial argmax).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..backend import asnumpy, get_array_module
from .._files import atomic_write
from ..errors import ConfigError, DataError, ShapeError

__all__ = ["TopK", "LayerTopK", "mine", "paths_digest", "STATE_VERSION"]

#: Version of the saved state layout; bumped when it changes.
STATE_VERSION = 1

_EMPTY_IMAGE = np.iinfo(np.int64).max  # sorts after every real image index


class LayerTopK:
    """The top-k table of one layer: ``(C, k)`` values, images and positions.

    Row ``c`` holds channel ``c``'s candidates best first; unused slots have value
    ``-inf`` and image ``-1``.

    Attributes
    ----------
    values : float32 (C, k)
    images : int64 (C, k)
        Image indices (into the folder's sorted list), -1 where empty.
    ys, xs : int32 (C, k)
        Position of the candidate in the layer's ``(H, W)`` map.
    map_size : (H, W)
    """

    def __init__(self, channels: int, k: int, map_size: tuple[int, int]):
        self.k = int(k)
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.values = np.full((channels, k), -np.inf, np.float32)
        self.images = np.full((channels, k), -1, np.int64)
        self.ys = np.zeros((channels, k), np.int32)
        self.xs = np.zeros((channels, k), np.int32)

    @property
    def channels(self) -> int:
        return self.values.shape[0]

    def counts(self) -> np.ndarray:
        """Filled slots per channel, int (C,)."""
        return (self.images >= 0).sum(axis=1)

    def fold(self, values: np.ndarray, images: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
        """Fold candidates into the table, keeping the top k per channel.

        Parameters
        ----------
        values : float32 (C, M)
        images : int64 (C, M)
        ys, xs : int (C, M)
            M candidates per channel (one per image, or another table's rows).
        """
        w = self.map_size[1]
        v = np.concatenate([self.values, values.astype(np.float32)], axis=1)  # (C, k + M)
        n = np.concatenate([self.images, images.astype(np.int64)], axis=1)
        y = np.concatenate([self.ys, ys.astype(np.int32)], axis=1)
        x = np.concatenate([self.xs, xs.astype(np.int32)], axis=1)
        empty = n < 0
        n_key = np.where(empty, _EMPTY_IMAGE, n)
        pos = y.astype(np.int64) * w + x
        # lexsort's LAST key is the primary one: -value, then image, then position.
        order = np.lexsort((pos, n_key, -v.astype(np.float64)), axis=1)  # (C, k + M)
        v, n, y, x, n_key = (np.take_along_axis(a, order, axis=1) for a in (v, n, y, x, n_key))
        # The same image may arrive twice (merging overlapping shards, re-running a
        # batch after an interruption).  Keep its best-ranked copy only: sort each
        # row by (image, rank) so copies are adjacent, flag all but the first.
        rank = np.broadcast_to(np.arange(v.shape[1]), v.shape)
        by_image = np.lexsort((rank, n_key), axis=1)
        n_sorted = np.take_along_axis(n, by_image, axis=1)
        dup_sorted = np.zeros(n.shape, bool)
        dup_sorted[:, 1:] = (n_sorted[:, 1:] == n_sorted[:, :-1]) & (n_sorted[:, 1:] >= 0)
        if dup_sorted.any():
            dup = np.zeros_like(dup_sorted)
            np.put_along_axis(dup, by_image, dup_sorted, axis=1)
            v = np.where(dup, -np.inf, v)
            n = np.where(dup, -1, n)
            n_key = np.where(dup, _EMPTY_IMAGE, n_key)
            pos = y.astype(np.int64) * w + x
            order = np.lexsort((pos, n_key, -v.astype(np.float64)), axis=1)
            v, n, y, x = (np.take_along_axis(a, order, axis=1) for a in (v, n, y, x))
        self.values, self.images = v[:, : self.k].copy(), n[:, : self.k].copy()
        self.ys, self.xs = y[:, : self.k].copy(), x[:, : self.k].copy()
        self.ys[self.images < 0] = 0
        self.xs[self.images < 0] = 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerTopK):
            return NotImplemented
        return (
            self.k == other.k
            and self.map_size == other.map_size
            and all(
                np.array_equal(getattr(self, a), getattr(other, a))
                for a in ("values", "images", "ys", "xs")
            )
        )


def paths_digest(paths: Sequence[str]) -> str:
    """SHA-256 of the newline-joined relative paths: identifies a dataset's order.

    Each path is digested as the bytes the operating system gave (surrogate-escaped
    names that are not valid UTF-8 included).
    """
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def _merge_ranges(ranges: Iterable[Sequence[int]]) -> list[list[int]]:
    """Union of half-open ``[lo, hi)`` ranges, sorted and coalesced."""
    out: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


class TopK:
    """Streaming top-k tables for several layers, with save, load and merge.

    Parameters
    ----------
    shapes : mapping of layer name -> (C, H, W) or (C,)
        The activation shape (without the batch axis) of each mined layer.  A fully
        connected layer, ``(C,)``, is treated as a 1 x 1 map.
    k : int
        Candidates kept per channel (9 in the paper).
    fingerprint : mapping, optional
        What the table was mined from (architecture, weights digest, dataset
        digest, preprocessing).  Resuming and merging require equal fingerprints.

    Attributes
    ----------
    layers : dict of str -> LayerTopK
    covered : list of [lo, hi)
        Image-index ranges that have been processed (including skipped files).
    n_images : int
        Images folded in.
    skipped : list of dict
        ``{"index", "path", "kind", "detail"}`` of files that could not be read.
    notes : list of dict
        ``{"index", "path", "text"}`` of files used with a remark.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]], k: int = 9, fingerprint: Mapping[str, Any] | None = None):
        if k < 1:
            raise ConfigError(f"k={k}: must be at least 1")
        if not shapes:
            raise ConfigError("TopK needs at least one layer")
        self.k = int(k)
        self.fingerprint: dict[str, Any] = dict(fingerprint or {})
        self.layers: dict[str, LayerTopK] = {}
        for name, shape in shapes.items():
            shape = tuple(int(s) for s in shape)
            if len(shape) == 1:
                shape = shape + (1, 1)
            if len(shape) != 3:
                raise ShapeError(f"layer {name!r}: expected a (C, H, W) or (C,) shape, got {shape}")
            self.layers[name] = LayerTopK(shape[0], k, shape[1:])
        self.covered: list[list[int]] = []
        self.n_images = 0
        self.skipped: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []

    # -- folding in activations ------------------------------------------------
    def update(self, layer: str, activation, image_indices) -> None:
        """Fold one batch of one layer's activations into its table.

        Parameters
        ----------
        layer : str
        activation : array (N, C, H, W) or (N, C), NumPy or CuPy
        image_indices : int array (N,)
            Global image indices (positions in the folder's sorted list).

        Notes
        -----
        The spatial argmax is taken on the array's own device; only ``(N, C)``
        values and positions come back to the host.
        """
        if layer not in self.layers:
            raise ConfigError(f"TopK has no layer {layer!r}; it mines {', '.join(self.layers)}")
        table = self.layers[layer]
        xp = get_array_module(activation)
        if activation.ndim == 2:
            activation = activation[:, :, None, None]  # (N, C, 1, 1)
        n, c, h, w = activation.shape
        if (c, h, w) != (table.channels,) + table.map_size:
            raise ShapeError(
                f"layer {layer!r}: activation shape {(c, h, w)} does not match the table's "
                f"{(table.channels,) + table.map_size}"
            )
        idx = np.asarray(image_indices, np.int64).reshape(-1)
        if idx.shape[0] != n:
            raise ShapeError(f"layer {layer!r}: {n} activations but {idx.shape[0]} image indices")
        flat = activation.reshape(n, c, h * w)  # (N, C, H*W)
        arg = flat.argmax(axis=2)  # (N, C); first maximum in row-major order
        val = xp.take_along_axis(flat, arg[:, :, None], axis=2)[:, :, 0]  # (N, C)
        arg, val = asnumpy(arg).astype(np.int64), asnumpy(val).astype(np.float32)
        if not np.isfinite(val).all():
            bad = sorted(set(idx[~np.isfinite(val).all(axis=1)].tolist()))[:5]
            raise DataError(f"layer {layer!r}: non-finite activations for images {bad} (broken weights?)")
        # Channels become rows: (N, C) -> (C, N).
        table.fold(val.T, np.broadcast_to(idx, (c, n)), (arg // w).T, (arg % w).T)

    def update_all(self, activations: Mapping[str, Any], image_indices) -> None:
        """:meth:`update` every mined layer from a dict of activations (e.g. a Trace's)."""
        for name in self.layers:
            if name not in activations:
                raise ConfigError(f"activations have no layer {name!r} (have: {', '.join(activations)})")
            self.update(name, activations[name], image_indices)
        self.n_images += len(np.asarray(image_indices).reshape(-1))

    def mark_covered(self, lo: int, hi: int) -> None:
        """Record that image indices ``[lo, hi)`` have been processed."""
        self.covered = _merge_ranges(self.covered + [[lo, hi]])

    def next_index(self, start: int = 0) -> int:
        """Where a run that began at image ``start`` resumes: the end of the covered
        range holding ``start`` (``start`` itself if nothing was covered)."""
        for lo, hi in self.covered:
            if lo <= start < hi:
                return hi
        return start

    # -- results ---------------------------------------------------------------
    def records(self, paths: Sequence[str] | None = None, min_value: float | None = None) -> list[dict[str, Any]]:
        """Every filled slot as a dict: layer, channel, rank, image, [path], y, x, value.

        Ordered by layer (mining order), channel, rank (0 = strongest).

        Parameters
        ----------
        paths : sequence of str, optional
            The folder's paths, to add ``path`` to each record.
        min_value : float, optional
            Keep only slots whose value is strictly greater (``0.0``: only
            activations where the unit fired, the top-9 pipeline's choice).  A unit
            that fired in fewer than ``k`` images then has fewer records, and a unit
            that never fired (a *dead* unit) has none.
        """
        out = []
        for name, t in self.layers.items():
            for c in range(t.channels):
                for r in range(t.k):
                    n = int(t.images[c, r])
                    if n < 0 or (min_value is not None and not t.values[c, r] > min_value):
                        break  # slots are sorted best first: the rest are empty or weaker
                    rec = {"layer": name, "channel": c, "rank": r, "image": n}
                    if paths is not None:
                        rec["path"] = paths[n]
                    rec.update(y=int(t.ys[c, r]), x=int(t.xs[c, r]), value=float(t.values[c, r]))
                    out.append(rec)
        return out

    def firing_counts(self, threshold: float = 0.0) -> dict[str, np.ndarray]:
        """Per layer, how many of each channel's ``k`` slots hold a value above ``threshold``.

        ``count[c] = #{r : values[c, r] > threshold}``, an int array ``(C,)`` with
        values in ``0..k``: ``min(k, number of images in which channel c fired)``.
        ``0`` is a *dead* unit (it never fired on this data; the paper's Fig. 6
        counts them), ``0 < count < k`` a *weak* one.
        """
        return {name: (t.values > threshold).sum(axis=1).astype(np.int64) for name, t in self.layers.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopK):
            return NotImplemented
        return (
            self.k == other.k
            and list(self.layers) == list(other.layers)
            and all(self.layers[n] == other.layers[n] for n in self.layers)
            and self.covered == other.covered
            and self.n_images == other.n_images
        )

    # -- merge -----------------------------------------------------------------
    def check_compatible(self, other: "TopK", what: str) -> None:
        """Raise ``ConfigError`` unless ``other`` was mined with the same k, layers and
        model/data fingerprint, so that the two can be merged (or one resumed as the
        other); ``what`` names the operation in the message."""
        if self.k != other.k:
            raise ConfigError(f"cannot {what}: k={self.k} vs k={other.k}")
        mine_shapes = {n: (t.channels,) + t.map_size for n, t in self.layers.items()}
        their_shapes = {n: (t.channels,) + t.map_size for n, t in other.layers.items()}
        if mine_shapes != their_shapes:
            raise ConfigError(f"cannot {what}: layers {mine_shapes} vs {their_shapes}")
        keys = set(self.fingerprint) | set(other.fingerprint)
        diff = [k for k in sorted(keys) if self.fingerprint.get(k) != other.fingerprint.get(k)]
        if diff:
            raise ConfigError(
                f"cannot {what}: the states were mined from different inputs ("
                + "; ".join(f"{k}: {self.fingerprint.get(k)!r} vs {other.fingerprint.get(k)!r}" for k in diff)
                + ")"
            )

    def merge(self, other: "TopK") -> "TopK":
        """The state of one run over both shards' images (neither input changes).

        Raises
        ------
        ConfigError
            Different k, layers or fingerprints.
        """
        self.check_compatible(other, "merge")
        out = TopK({n: (t.channels,) + t.map_size for n, t in self.layers.items()}, self.k, self.fingerprint)
        for name, t in out.layers.items():
            for src in (self.layers[name], other.layers[name]):
                t.fold(src.values, src.images, src.ys, src.xs)
        out.covered = _merge_ranges(self.covered + other.covered)
        seen = {s["index"] for s in self.skipped}
        out.skipped = sorted(self.skipped + [s for s in other.skipped if s["index"] not in seen], key=lambda s: s["index"])
        seen = {s["index"] for s in self.notes}
        out.notes = sorted(self.notes + [s for s in other.notes if s["index"] not in seen], key=lambda s: s["index"])
        # Images in the overlap of the two covered sets were counted twice.
        overlap = _overlap(self.covered, other.covered)
        skipped_in_overlap = sum(1 for s in self.skipped if any(lo <= s["index"] < hi for lo, hi in overlap))
        out.n_images = self.n_images + other.n_images - (sum(hi - lo for lo, hi in overlap) - skipped_in_overlap)
        return out

    # -- persistence -----------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The JSON part of the state."""
        return {
            "version": STATE_VERSION,
            "k": self.k,
            "layers": {n: [t.channels, *t.map_size] for n, t in self.layers.items()},
            "fingerprint": self.fingerprint,
            "covered": self.covered,
            "n_images": self.n_images,
            "skipped": self.skipped,
            "notes": self.notes,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state to ``path`` (an ``.npz``) atomically; also ``path.json`` for people.

        The arrays and the JSON metadata go into one ``.npz`` (the JSON as a
        string array, so loading needs no pickle), written to a temporary file in
        the same folder and renamed over ``path``: a crash mid-write leaves the
        previous state intact.  The ``.json`` beside it is a readable copy of the
        metadata; :meth:`load` does not read it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"meta_json": np.array(json.dumps(self.meta()))}
        for i, t in enumerate(self.layers.values()):
            arrays[f"l{i}_values"] = t.values
            arrays[f"l{i}_images"] = t.images
            arrays[f"l{i}_ys"] = t.ys
            arrays[f"l{i}_xs"] = t.xs
        atomic_write(path, lambda f: np.savez(f, **arrays))
        text = json.dumps(self.meta(), indent=1)
        atomic_write(path.with_suffix(".json"), lambda f: f.write(text.encode("utf-8")))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TopK":
        """Read a state written by :meth:`save` (``allow_pickle=False``).

        Raises
        ------
        DataError
            Missing, unreadable or inconsistent file, naming the problem.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise DataError(f"top-k state {str(path)!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise DataError(f"top-k state {str(path)!r} is not a readable .npz: {e}") from None
        try:
            meta = json.loads(str(data["meta_json"]))
            if meta.get("version") != STATE_VERSION:
                raise DataError(f"top-k state {str(path)!r} has version {meta.get('version')}, expected {STATE_VERSION}")
            state = cls({n: s for n, s in meta["layers"].items()}, meta["k"], meta["fingerprint"])
            for i, t in enumerate(state.layers.values()):
                for a, dtype in (("values", np.float32), ("images", np.int64), ("ys", np.int32), ("xs", np.int32)):
                    arr = data[f"l{i}_{a}"]
                    if arr.shape != (t.channels, t.k) or arr.dtype != dtype:
                        raise DataError(
                            f"top-k state {str(path)!r}: array l{i}_{a} has shape {arr.shape} dtype {arr.dtype}, "
                            f"expected {(t.channels, t.k)} {np.dtype(dtype)}"
                        )
                    setattr(t, a, arr.copy())
            state.covered = _merge_ranges(meta["covered"])
            state.n_images = int(meta["n_images"])
            state.skipped = list(meta["skipped"])
            state.notes = list(meta["notes"])
        except KeyError as e:
            raise DataError(f"top-k state {str(path)!r} lacks {e}") from None
        return state


def _overlap(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    out = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if hi > lo:
                out.append([lo, hi])
    return out


def mine(
    forward: Callable[[Any], Mapping[str, Any]],
    batches,
    state: TopK,
    *,
    state_path: str | os.PathLike | None = None,
    save_every: int = 20,
    progress: Callable[[int], None] | None = None,
    to_device: Callable[[np.ndarray], Any] | None = None,
) -> TopK:
    """Run ``forward`` over ``batches`` and fold every batch into ``state``.

    Parameters
    ----------
    forward : callable
        ``forward(x) -> {layer: activation}`` for a ``(B, 3, H, W)`` batch (e.g.
        ``lambda x: model.forward(x, upto=top, keep=layers, caches=False).activations``).
    batches : ImageBatches
        Visited in order; its ``start`` must be where ``state`` left off.
    state : TopK
        Updated in place (and returned).
    state_path : path, optional
        Where to checkpoint.  Saved every ``save_every`` batches, at the end, and
        when interrupted (KeyboardInterrupt); a checkpoint covers exactly the
        batches processed, so ``--resume`` continues where it stopped.
    progress : callable, optional
        Called with the number of files each batch advanced.
    to_device : callable, optional
        Moves a batch to the model's device (e.g. ``zfnet.backend.to_device(x, "gpu")``).

    Returns
    -------
    TopK
    """
    start = batches.start
    covered_to = start
    n_images_at_cover = state.n_images
    known = {s["index"] for s in state.skipped}

    def checkpoint() -> None:
        state.mark_covered(start, covered_to)
        for s in batches.skipped:
            if s.index < covered_to and s.index not in known:
                state.skipped.append({"index": s.index, "path": s.path, "kind": s.kind, "detail": s.detail})
                known.add(s.index)
        state.skipped.sort(key=lambda s: s["index"])
        noted = {n["index"] for n in state.notes}
        for n in batches.notes:
            if n.index < covered_to and n.index not in noted:
                state.notes.append({"index": n.index, "path": n.path, "text": n.text})
        state.notes.sort(key=lambda s: s["index"])
        if state_path is not None:
            state.save(state_path)

    since_save = 0
    try:
        for batch in batches:
            x = batch.images if to_device is None else to_device(batch.images)
            acts = forward(x)
            state.update_all(acts, batch.indices)
            advanced = batches.position - covered_to
            covered_to, n_images_at_cover = batches.position, state.n_images
            if progress is not None:
                progress(advanced)
            since_save += 1
            if state_path is not None and since_save >= save_every:
                checkpoint()
                since_save = 0
        if progress is not None and batches.position > covered_to:
            progress(batches.position - covered_to)  # trailing files that were all skipped
        covered_to = batches.position
        checkpoint()
    except KeyboardInterrupt:
        # Everything up to the last finished batch is safe to keep.  A batch that
        # was half folded in when the interrupt came is run again on resume; its
        # candidates are then duplicates, which fold() drops, so only the image
        # count needs rolling back.
        state.n_images = n_images_at_cover
        checkpoint()
        raise
    return state
