"""Compute the ZFNet receptive-field table of docs/math.md and check it by brute force.

Run from the repository root:  python docs/check_rf_table.py

Part 1 applies the recurrence (docs/math.md, "Receptive fields"):

    size_l  = size_{l-1}  + (k_l - 1) * jump_{l-1}
    jump_l  = jump_{l-1}  * s_l
    start_l = start_{l-1} + ((k_l - 1) / 2 - p_l) * jump_{l-1}

Part 2 measures the same thing without the recurrence.  Convolution and pooling act
on rows and columns independently, so one axis suffices: a 1-D signal of length 224
goes through 1-D stand-ins for the layers (a window sum for a convolution, a window
max with -inf padding for a pool, with the same k, s, p and ceil mode).  Every input
sample is pushed up by a large delta, and each unit of each layer is checked for a
change.  The set of samples that move unit i must be exactly the recurrence's box
[start + i*jump - (size-1)/2, start + i*jump + (size-1)/2] clipped to [0, 223].
Part 3 checks the "two methods" claim: every unit whose box lies inside the image
equals the same layers without padding applied to the crop of its box (a 1-element
output).  Only NumPy is needed.
"""

from __future__ import annotations

import numpy as np

# name, kind, k, s, p, ceil_mode   (LRN and ReLU act per position: they change nothing here)
ZFNET = [
    ("conv1", "conv", 7, 2, 1, False),
    ("pool1", "pool", 3, 2, 0, True),
    ("conv2", "conv", 5, 2, 0, False),
    ("pool2", "pool", 3, 2, 0, True),
    ("conv3", "conv", 3, 1, 1, False),
    ("conv4", "conv", 3, 1, 1, False),
    ("conv5", "conv", 3, 1, 1, False),
    ("pool5", "pool", 3, 2, 0, True),
]


def out_size(n, k, s, p, ceil_mode):
    """floor((n + 2p - k)/s) + 1, or PyTorch's ceil-mode rule."""
    if not ceil_mode:
        return (n + 2 * p - k) // s + 1
    out = -(-(n + 2 * p - k) // s) + 1
    if (out - 1) * s >= n + p:  # the last window must start inside the input or left padding
        out -= 1
    return out


def layer_1d(x, kind, k, s, p, ceil_mode):
    """A 1-D stand-in for a conv (window sum, zero padding) or a max-pool (-inf padding)."""
    n_out = out_size(len(x), k, s, p, ceil_mode)
    fill = 0.0 if kind == "conv" else -np.inf
    right = max(p, (n_out - 1) * s + k - len(x) - p)  # ceil mode may read past the right pad
    xp = np.concatenate([np.full(p, fill), x, np.full(right, fill)])
    reduce = np.sum if kind == "conv" else np.max
    return np.array([reduce(xp[i * s:i * s + k]) for i in range(n_out)])


def recurrence(layers, n_in):
    rows, size, jump, start, n = [], 1, 1, 0.0, n_in
    for name, kind, k, s, p, ceil_mode in layers:
        start = start + ((k - 1) / 2 - p) * jump
        size = size + (k - 1) * jump
        jump = jump * s
        n = out_size(n, k, s, p, ceil_mode)
        rows.append((name, k, s, p, ceil_mode, n, size, jump, start))
    return rows


def brute_force_check(layers, rows, n_in, delta=1e9):
    rng = np.random.default_rng(0)
    x = rng.random(n_in)

    def maps(sig):
        out = []
        for _, kind, k, s, p, ceil_mode in layers:
            sig = layer_1d(sig, kind, k, s, p, ceil_mode)
            out.append(sig)
        return out

    base = maps(x)
    moved = [np.zeros((len(m), n_in), dtype=bool) for m in base]  # moved[l][i, t]: sample t moves unit i
    for t in range(n_in):
        xt = x.copy()
        xt[t] += delta
        for l, m in enumerate(maps(xt)):
            moved[l][:, t] = m != base[l]
    for l, (name, *_, n, size, jump, start) in enumerate(rows):
        assert len(base[l]) == n, (name, len(base[l]), n)
        for i in range(n):
            c = start + i * jump
            lo, hi = max(int(c - (size - 1) / 2), 0), min(int(c + (size - 1) / 2), n_in - 1)
            want = np.zeros(n_in, dtype=bool)
            want[lo:hi + 1] = True
            assert (moved[l][i] == want).all(), (name, i, np.flatnonzero(moved[l][i])[[0, -1]], (lo, hi))
    return True


def crop_check(layers, rows, n_in):
    """Interior units equal the padding-free ("valid") network applied to their RF crop."""
    x = np.random.default_rng(1).random(n_in)
    full, sig = [], x
    for _, kind, k, s, p, ceil_mode in layers:
        sig = layer_1d(sig, kind, k, s, p, ceil_mode)
        full.append(sig)
    for l, (name, *_, n, size, jump, start) in enumerate(rows):
        for i in range(n):
            lo = start + i * jump - (size - 1) / 2
            if lo < 0 or lo + size > n_in:
                continue  # the box leaves the image: padding was read somewhere below
            crop = x[int(lo):int(lo) + size]
            for _, kind, k, s, p, ceil_mode in layers[:l + 1]:
                crop = layer_1d(crop, kind, k, s, 0, False)  # same layers, no padding
            assert crop.shape == (1,) and crop[0] == full[l][i], (name, i)
    return True


def interior_units(size, jump, start, n, n_in):
    """Units whose box lies inside [0, n_in): they never read padding."""
    inside = [i for i in range(n) if start + i * jump - (size - 1) / 2 >= 0
              and start + i * jump + (size - 1) / 2 <= n_in - 1]
    return f"{inside[0]}..{inside[-1]}" if inside else "none"


def main():
    rows = recurrence(ZFNET, 224)
    print("| layer | k | s | p | output (224 input) | RF size | jump | start | padding-free units |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("| input | | | | 224 | 1 | 1 | 0 | |")
    n_prev = 224
    for name, k, s, p, ceil_mode, n, size, jump, start in rows:
        shown = f"{n} (floor: {out_size(n_prev, k, s, p, False)})" if ceil_mode else f"{n}"
        print(f"| {name} | {k} | {s} | {p} | {shown} | {size} | {jump} | {start:g} "
              f"| {interior_units(size, jump, start, n, 224)} |")
        n_prev = n
    brute_force_check(ZFNET, rows, 224)
    print("\nbrute force (1-D, every unit of every layer): OK")
    crop_check(ZFNET, rows, 224)
    print("interior units == valid network on their RF crop: OK")

    stack = [(f"conv{i}", "conv", 3, 1, 1, False) for i in range(1, 6)]
    srows = recurrence(stack, 32)
    print("3x3 stack, stride 1, pad 1: RF sizes", [r[6] for r in srows])
    brute_force_check(stack, srows, 32)
    crop_check(stack, srows, 32)
    print("brute force and crop check (3x3 stack): OK")


if __name__ == "__main__":
    main()
