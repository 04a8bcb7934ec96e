"""A minimal Protocol Buffers wire-format decoder and encoder (no protobuf package).

Caffe stores a trained net as one serialised ``NetParameter`` message.  Reading it
needs only the wire format, which is small enough to write out here.  A message is a
sequence of *fields*; each starts with a varint *tag*::

    tag = (field_number << 3) | wire_type

and the wire type says how long the value is:

====  ===============  ==============================================================
wire  name             value bytes
====  ===============  ==============================================================
0     VARINT           base-128 varint: 7 bits per byte, low group first, the high
                       bit of each byte set when another byte follows (<= 10 bytes)
1     I64              8 bytes little-endian (double, fixed64)
2     LEN              varint length n, then n bytes (string, bytes, sub-message,
                       *packed* repeated scalars laid end to end)
3, 4  SGROUP, EGROUP   deprecated groups (not used by caffe.proto; refused here)
5     I32              4 bytes little-endian (float, fixed32)
====  ===============  ==============================================================

Negative ``int32``/``int64`` values are varints of their 64-bit two's complement.
Nothing says which fields a message has: a reader skips the field numbers it does not
know, which is how one decoder reads every Caffe version.

Decoding works on ``bytes`` plus ``(start, end)`` offsets, so a 200 MB model is never
copied while its structure is walked; packed floats become arrays with one
:func:`numpy.frombuffer`.  Every length is checked against ``end`` before use, so a
corrupt length fails with :class:`ProtobufError` instead of reading past the message
or allocating what the data cannot back.

References
----------
Protocol Buffers documentation, "Encoding" (protobuf.dev/programming-guides/encoding).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from ..errors import WeightsError

__all__ = [
    "ProtobufError",
    "VARINT", "I64", "LEN", "I32",
    "Field",
    "read_varint", "read_tag", "read_value", "iter_fields",
    "to_signed", "packed_array", "packed_varints", "fixed_run",
    "encode_varint", "encode_tag", "field_varint", "field_len", "field_string",
    "field_packed", "field_packed_varints",
]

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_MAX_FIELD = (1 << 29) - 1
_U64 = (1 << 64) - 1


class ProtobufError(WeightsError):
    """Malformed wire-format data (the caller adds the file name)."""


class Field(NamedTuple):
    """One decoded field.

    ``value`` is the integer for VARINT fields; for LEN, I32 and I64 fields the
    payload is ``buf[start:end]`` and ``value`` is None.
    """

    number: int
    wire: int
    value: int | None
    start: int
    end: int


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``buf[pos]``; return ``(value, next_pos)``.

    ``value = sum_i (b_i & 0x7f) << (7 i)`` over the bytes up to the first with its
    high bit clear; at most 10 bytes (64 bits).
    """
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtobufError(f"varint runs past the end of its message (offset {pos})")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise ProtobufError(f"varint longer than 10 bytes (offset {pos})")
    if value > _U64:
        raise ProtobufError(f"varint overflows 64 bits (offset {pos})")
    return value, pos


def to_signed(value: int, bits: int = 64) -> int:
    """Reinterpret an unsigned varint as a two's-complement ``int32``/``int64``."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def read_tag(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Decode a field tag; return ``(field_number, wire_type, next_pos)``."""
    tag, pos = read_varint(buf, pos, end)
    number, wire = tag >> 3, tag & 7
    if number == 0 or number > _MAX_FIELD:
        raise ProtobufError(f"invalid field number {number} (offset {pos})")
    if wire in (SGROUP, EGROUP):
        raise ProtobufError(f"group wire type in field {number} is not supported (offset {pos})")
    if wire > I32:
        raise ProtobufError(f"invalid wire type {wire} in field {number} (offset {pos})")
    return number, wire, pos


def read_value(buf: bytes, wire: int, pos: int, end: int) -> tuple[int | None, int, int, int]:
    """Read the value of a field whose tag ended at ``pos``.

    Returns ``(varint_value_or_None, payload_start, payload_end, next_pos)``.
    """
    if wire == VARINT:
        value, nxt = read_varint(buf, pos, end)
        return value, pos, nxt, nxt
    if wire == LEN:
        n, pos = read_varint(buf, pos, end)
        if n > end - pos:
            raise ProtobufError(f"length {n} at offset {pos} runs past the end of its message "
                                f"({end - pos} bytes left)")
        return None, pos, pos + n, pos + n
    width = 8 if wire == I64 else 4
    if pos + width > end:
        raise ProtobufError(f"fixed-width value at offset {pos} runs past the end of its message")
    return None, pos, pos + width, pos + width


def iter_fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Yield the fields of the message ``buf[start:end]`` in order."""
    end = len(buf) if end is None else end
    pos = start
    while pos < end:
        number, wire, pos = read_tag(buf, pos, end)
        value, s, e, pos = read_value(buf, wire, pos, end)
        yield Field(number, wire, value, s, e)


def packed_array(buf: bytes, start: int, end: int, dtype: str) -> np.ndarray:
    """View a packed run of little-endian fixed-width scalars as an array (no copy).

    ``dtype`` is ``"<f4"`` (float, fixed32) or ``"<f8"`` (double, fixed64).
    """
    dt = np.dtype(dtype)
    if (end - start) % dt.itemsize:
        raise ProtobufError(f"packed {dt.name} field of {end - start} bytes is not a "
                            f"multiple of {dt.itemsize} (offset {start})")
    return np.frombuffer(buf, dtype=dt, count=(end - start) // dt.itemsize, offset=start)


def packed_varints(buf: bytes, start: int, end: int) -> list[int]:
    """Decode a packed run of varints (e.g. ``repeated int64 dim = 1 [packed]``)."""
    out = []
    pos = start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        out.append(value)
    return out


def fixed_run(buf: bytes, pos: int, end: int, tag: bytes, width: int) -> np.ndarray:
    """Payload bytes of the longest run of ``tag + width bytes`` records at ``pos``.

    A repeated float written *unpacked* is one (tag, 4 bytes) record per element.
    Reading millions of them one field at a time would take minutes in Python, so the
    run is found with one vectorised comparison.  Returns a ``(count, width)`` uint8
    array (a view); the caller resumes at ``pos + count * (len(tag) + width)``.
    """
    rec = len(tag) + width
    k = (end - pos) // rec
    tag_bytes = np.frombuffer(tag, dtype=np.uint8)
    # Look ahead in doubling blocks and stop at the first record that breaks the run, so
    # the cost is proportional to the run found, not to the rest of the message (a file
    # alternating single floats with other fields would otherwise take quadratic time).
    count, chunk = 0, 16
    while count < k:
        m = min(chunk, k - count)
        block = np.frombuffer(buf, dtype=np.uint8, count=m * rec, offset=pos + count * rec).reshape(m, rec)
        ok = np.all(block[:, : len(tag)] == tag_bytes, axis=1)  # (m,): one record per row
        if not ok.all():
            count += int(np.argmin(ok))
            break
        count, chunk = count + m, chunk * 2
    block = np.frombuffer(buf, dtype=np.uint8, count=count * rec, offset=pos).reshape(count, rec)
    return block[:, len(tag):]


# ----------------------------------------------------------------------------- encoder


def encode_varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (negative ints: pass ``value & 2**64-1``)."""
    if value < 0:
        value &= _U64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_tag(number: int, wire: int) -> bytes:
    """The tag varint ``(number << 3) | wire``."""
    return encode_varint((number << 3) | wire)


def field_varint(number: int, value: int) -> bytes:
    """A VARINT field (int32/int64/uint/bool/enum; negatives as 64-bit two's complement)."""
    return encode_tag(number, VARINT) + encode_varint(value)


def field_len(number: int, payload: bytes) -> bytes:
    """A LEN field: sub-message, bytes or packed scalars."""
    return encode_tag(number, LEN) + encode_varint(len(payload)) + payload


def field_string(number: int, text: str) -> bytes:
    """A UTF-8 string field."""
    return field_len(number, text.encode("utf-8"))


def field_packed(number: int, values: np.ndarray, dtype: str = "<f4") -> bytes:
    """A packed repeated float (``"<f4"``) or double (``"<f8"``) field."""
    return field_len(number, np.ascontiguousarray(values, dtype=dtype).tobytes())


def field_packed_varints(number: int, values) -> bytes:
    """A packed repeated varint field (e.g. BlobShape.dim)."""
    return field_len(number, b"".join(encode_varint(int(v)) for v in values))
