"""A pickle machine for checkpoints: the opcodes a state dict uses, run by hand, metered.

:func:`zfnet.weights.read_pth` must read a Python pickle that may be hostile.  A
restricted :class:`pickle.Unpickler` (only ``find_class`` overridden) stops a pickle
from *calling* anything unexpected, but the file still steers everything else the
standard unpickler does:

* ``BUILD`` sets attributes on whatever object is on the stack, including the
  stand-ins the restricted loader hands to every file, so one hostile file could
  corrupt every later load in the process;
* dict keys and set elements are hashed however big they are: 40 levels of
  ``t_i = (t_{i-1}, t_{i-1})``, each level a memo reference to the one below, are a
  330-byte pickle whose top tuple costs 2**40 element hashes;
* every byte may create an object of a few hundred bytes (``EMPTY_SET``: 1 byte,
  216 bytes of heap), so a few megabytes of pickle claim gigabytes.

:func:`run_pickle` executes the same opcodes with three rules.

1. **Nothing outside this load's own containers is ever changed.**  ``APPEND(S)``
   extends only lists, ``SETITEM(S)`` fills only dicts, ``ADDITEMS`` only sets, all
   built by this machine during this call.  ``BUILD`` is accepted only on an
   ``OrderedDict`` (``torch.save`` attaches ``_metadata`` to a state dict that way)
   and its state is dropped, never applied.  Globals, calls (``REDUCE``) and
   persistent ids are delegated to the caller's three callbacks, which decide what
   exists; instance-creating opcodes (``NEWOBJ``, ``OBJ``, ``INST``, ``EXT*``) and
   out-of-band buffers are refused.
2. **Work is metered.**  Each opcode costs 1 unit, each stack item moved into a
   container 1, each node of a dict key or set element 1.  Keys are walked
   *before* they are hashed: only ``None``, bool, int (``|v| < 2**61 - 1``, where
   ``hash(v) == v`` and distinct ints never collide), float, str, bytes and tuples of
   these, at most :data:`KEY_NODES` nodes (a memo-shared subtree counted every time it
   is reached) and :data:`KEY_DEPTH` levels; at most :data:`COMPOSITE_KEYS` tuple
   keys per pickle (tuple hashes are not randomised, so colliding tuple keys can be
   crafted; the cap bounds what collisions can cost).  After ``b`` bytes of pickle::

       work <= WORK_PER_BYTE * b + WORK_SLACK              (8 b + 65536)

   Every unit is O(1) interpreter work except hashing a str or bytes key, which is
   linear in its length, paid for by the bytes that spelled it (hashes are cached),
   and decimal integers, which are capped at :data:`MAX_DIGITS` digits.  So parsing
   ``p`` bytes of pickle takes O(p) time, whatever the bytes are.
3. **Memory is metered.**  Every object the machine creates is charged its
   :func:`sys.getsizeof`, every container's growth the growth of its
   ``getsizeof``, every stack and memo slot 8 bytes (interned singletons: small
   ints, ``None``, one-character strings are free).  After ``b`` bytes::

       heap <= HEAP_PER_BYTE * b + HEAP_SLACK               (16 b + 32 MiB)

   Real state-dict pickles use under 10 bytes of heap per byte, and the constant
   alone holds hundreds of thousands of tensor records.

Every refusal is a :class:`~zfnet.errors.WeightsError` naming the file, the pickle,
the opcode and its byte offset.

References
----------
Python's ``Lib/pickle.py`` (``_Unpickler``) and ``Lib/pickletools.py`` (the opcode
table and its documentation) define the opcodes; this machine implements their
meaning for the data types a checkpoint holds.
"""

from __future__ import annotations

import codecs
import pickletools
import reprlib
import struct
import sys
from collections import OrderedDict
from typing import Any, Callable

from ..errors import WeightsError

__all__ = [
    "run_pickle",
    "WORK_PER_BYTE", "WORK_SLACK", "HEAP_PER_BYTE", "HEAP_SLACK",
    "KEY_NODES", "KEY_DEPTH", "COMPOSITE_KEYS", "MAX_DIGITS",
]

WORK_PER_BYTE = 8
WORK_SLACK = 1 << 16
HEAP_PER_BYTE = 16
HEAP_SLACK = 32 << 20
KEY_NODES = 64
KEY_DEPTH = 16
COMPOSITE_KEYS = 256
MAX_DIGITS = 4300  # CPython's own default limit for int(str); int() is quadratic in it
_SLOT = 8          # one pointer: a stack, memo or container slot
_HASH_MODULUS = sys.hash_info.modulus  # hash(i) == i for 0 <= i < this (2**61 - 1)
_KEY_ATOMS = (type(None), bool, float, str, bytes)
_EMPTY = object()  # a memo slot never stored


class _Refused(Exception):
    """A rule of the machine was broken; :func:`run_pickle` adds file and position."""


def _charge_of(obj: Any) -> int:
    """Heap bytes a newly pushed object costs (interned singletons cost nothing)."""
    t = type(obj)
    if obj is None or t is bool or (t is int and -5 <= obj <= 256):
        return 0
    if (t is str or t is bytes) and len(obj) <= 1:
        return 0
    return sys.getsizeof(obj)


def _describe(obj: Any) -> str:
    """What an object is, for messages (never its possibly huge contents)."""
    t = type(obj)
    if t in (list, tuple, dict, set, frozenset, OrderedDict):
        return f"a {t.__name__} of {len(obj)} items"
    if t in (int, float, bool, str, bytes, type(None)):
        return f"a {t.__name__}"
    return reprlib.repr(obj)


class _Machine:
    """The state of one run: stack, mark stack, memo, meters.  See :func:`run_pickle`."""

    def __init__(self, data: bytes, start: int, find_class: Callable[[str, str], Any],
                 reduce: Callable[[Any, tuple], Any],
                 persistent_load: Callable[[Any], Any] | None) -> None:
        self.data = data
        self.start = start
        self.pos = start
        self.at = start  # offset of the opcode being run
        self.find_class = find_class
        self.reduce = reduce
        self.persistent_load = persistent_load
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: list = []
        self.memo_used = 0
        self.work = 0
        self.heap = 0
        self.composite_keys = 0
        self.done = False
        self.value: Any = None

    # -- meters --------------------------------------------------------------------
    # Opcodes only add to the meters; the loop in run() compares them with their
    # bounds after every opcode, so a run stops at the end of the first opcode that
    # passes one (an opcode's own cost is linear in the stack items it consumes).
    def charge(self, work: int = 0, heap: int = 0) -> None:
        self.work += work
        self.heap += heap

    def over_budget(self, b: int) -> _Refused:
        """The error for a meter past its bound after ``b`` bytes."""
        if self.work > WORK_PER_BYTE * b + WORK_SLACK:
            return _Refused(
                f"{self.work} work units after {b} bytes, more than the {WORK_PER_BYTE} per byte "
                f"+ {WORK_SLACK} any pickle needs (keys re-walked through the memo?)"
            )
        return _Refused(
            f"{self.heap} bytes of objects after {b} bytes of pickle, more than the "
            f"{HEAP_PER_BYTE} per byte + {HEAP_SLACK >> 20} MiB a checkpoint needs "
            "(a memory amplification?)"
        )

    def push_new(self, obj: Any) -> None:
        """Push an object this opcode created, charging its size."""
        self.stack.append(obj)
        self.heap += _charge_of(obj)

    def grow(self, container: Any, before: int) -> None:
        """Charge the growth of ``container`` since its ``getsizeof`` was ``before``."""
        self.heap += max(0, sys.getsizeof(container) - before)

    def check_key(self, key: Any) -> Any:
        """Walk a dict key / set element before anything hashes it; return it."""
        t = type(key)
        if t is str or (t is int and -_HASH_MODULUS < key < _HASH_MODULUS):
            self.charge(work=1)  # the common cases, without the walk
            return key
        nodes, todo = 0, [(key, 1)]
        while todo:
            obj, depth = todo.pop()
            nodes += 1
            t = type(obj)
            if t is tuple:
                if depth >= KEY_DEPTH and obj:
                    raise _Refused(f"a dict key or set element nests tuples deeper than {KEY_DEPTH} levels")
                if nodes + len(todo) + len(obj) > KEY_NODES:
                    raise _Refused(f"a dict key or set element has more than {KEY_NODES} parts "
                                   "(counting a memo-shared part each time it appears)")
                todo.extend((x, depth + 1) for x in obj)
            elif t is int:
                if not -_HASH_MODULUS < obj < _HASH_MODULUS:
                    raise _Refused("an integer dict key or set element beyond +-(2**61 - 1)")
            elif t not in _KEY_ATOMS:
                raise _Refused(f"{_describe(obj)} cannot be a dict key or set element in a checkpoint")
        if type(key) is tuple:
            self.composite_keys += 1
            if self.composite_keys > COMPOSITE_KEYS:
                raise _Refused(f"more than {COMPOSITE_KEYS} tuple-valued dict keys or set elements")
        self.charge(work=nodes)
        return key

    # -- reading arguments ---------------------------------------------------------
    def take(self, n: int) -> bytes:
        """The next ``n`` bytes; a length the data cannot back is refused unread."""
        if n < 0 or n > len(self.data) - self.pos:
            raise _Refused(f"an argument of {n} bytes, but only {len(self.data) - self.pos} remain")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def line(self) -> bytes:
        """The bytes up to the next newline (protocol 0 arguments), newline dropped."""
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise _Refused("a text argument without its newline")
        out = self.data[self.pos:end]
        self.pos = end + 1
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def decimal(self, text: bytes) -> int:
        if len(text) > MAX_DIGITS + 2:
            raise _Refused(f"a decimal integer of {len(text)} digits (at most {MAX_DIGITS})")
        return int(text, 0)  # as pickle.py reads them

    def pop_mark(self) -> list:
        if not self.metastack:
            raise _Refused("no MARK to pop to")
        items = self.stack
        self.stack = self.metastack.pop()
        self.charge(work=len(items))
        return items

    def pop(self) -> Any:
        if not self.stack:
            raise _Refused("the stack is empty")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise _Refused("the stack is empty")
        return self.stack[-1]

    # -- memo ------------------------------------------------------------------------
    def put(self, index: int) -> None:
        # Picklers number memo entries 0, 1, 2, ... one per object already built, and
        # every object costs at least one byte: an index past that is a crafted file
        # claiming a huge memo table.
        if index < 0 or index > self.at - self.start:
            raise _Refused(f"memo index {index} at byte {self.at}, more than the "
                           f"{self.at - self.start} bytes before it could need (a crafted file?)")
        value = self.top()
        if index >= len(self.memo):
            grow = index + 1 - len(self.memo)
            self.memo.extend([_EMPTY] * grow)
            self.charge(heap=_SLOT * grow)
        if self.memo[index] is _EMPTY:
            self.memo_used += 1
        self.memo[index] = value

    def get(self, index: int) -> None:
        if not 0 <= index < len(self.memo) or self.memo[index] is _EMPTY:
            raise _Refused(f"memo entry {index} is read before it is stored")
        self.stack.append(self.memo[index])

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> Any:
        data, ops, start = self.data, _OPS, self.start
        while not self.done:
            pos = self.at = self.pos
            if pos >= len(data):
                raise _Refused("the pickle ends before its STOP opcode")
            op = ops.get(data[pos])
            self.pos = pos + 1
            if op is None:
                known = pickletools.code2op.get(chr(data[pos]))
                raise _Refused(f"opcode {known.name} is not used by checkpoints" if known
                               else f"unknown opcode {data[pos:pos + 1]!r}")
            op(self)
            self.work += 1       # the opcode itself
            self.heap += _SLOT   # at most one new stack slot
            b = self.pos - start
            if self.work > WORK_PER_BYTE * b + WORK_SLACK or self.heap > HEAP_PER_BYTE * b + HEAP_SLACK:
                raise self.over_budget(b)
        return self.value


# ------------------------------------------------------------------------- opcodes
# One function per opcode, registered in _OPS by its byte.  pickletools.py documents
# each opcode's argument and stack effect; the names below are its names.

_OPS: dict[int, Callable[[_Machine], None]] = {}


def _op(code: bytes):
    def register(fn):
        _OPS[code[0]] = fn
        return fn
    return register


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


@_op(b"\x80")
def _proto(m: _Machine) -> None:
    version = m.uint(1)
    if version > 5:
        raise _Refused(f"unsupported pickle protocol {version}")


@_op(b"\x95")
def _frame(m: _Machine) -> None:
    m.take(8)  # a framing hint (protocol 4+): the frame's length, nothing to do


@_op(b".")
def _stop(m: _Machine) -> None:
    m.value = m.pop()
    m.done = True


@_op(b"(")
def _mark(m: _Machine) -> None:
    m.metastack.append(m.stack)
    m.stack = []


@_op(b"0")
def _pop(m: _Machine) -> None:
    if m.stack:
        m.stack.pop()
    else:
        m.pop_mark()


@_op(b"1")
def _pop_mark(m: _Machine) -> None:
    m.pop_mark()


@_op(b"2")
def _dup(m: _Machine) -> None:
    m.stack.append(m.top())


# -- scalars ---------------------------------------------------------------------------
@_op(b"N")
def _none(m: _Machine) -> None:
    m.stack.append(None)


@_op(b"\x88")
def _newtrue(m: _Machine) -> None:
    m.stack.append(True)


@_op(b"\x89")
def _newfalse(m: _Machine) -> None:
    m.stack.append(False)


@_op(b"I")
def _int(m: _Machine) -> None:
    text = m.line()  # protocol 0 spells the bools I00 / I01
    m.push_new(False if text == b"00" else True if text == b"01" else m.decimal(text))


@_op(b"J")
def _binint(m: _Machine) -> None:
    m.push_new(struct.unpack("<i", m.take(4))[0])


@_op(b"K")
def _binint1(m: _Machine) -> None:
    m.push_new(m.uint(1))


@_op(b"M")
def _binint2(m: _Machine) -> None:
    m.push_new(m.uint(2))


@_op(b"L")
def _long(m: _Machine) -> None:
    text = m.line()
    m.push_new(m.decimal(text[:-1] if text.endswith(b"L") else text))


@_op(b"\x8a")
def _long1(m: _Machine) -> None:
    m.push_new(int.from_bytes(m.take(m.uint(1)), "little", signed=True))


@_op(b"\x8b")
def _long4(m: _Machine) -> None:
    n = struct.unpack("<i", m.take(4))[0]
    m.push_new(int.from_bytes(m.take(n), "little", signed=True))


@_op(b"F")
def _float(m: _Machine) -> None:
    m.push_new(float(m.line()))


@_op(b"G")
def _binfloat(m: _Machine) -> None:
    m.push_new(struct.unpack(">d", m.take(8))[0])


# -- strings ---------------------------------------------------------------------------
@_op(b"S")
def _string(m: _Machine) -> None:
    text = m.line()
    if len(text) < 2 or text[:1] not in (b"'", b'"') or text[-1:] != text[:1]:
        raise _Refused("a STRING argument without matching quotes")
    m.push_new(_utf8(codecs.escape_decode(text[1:-1])[0]))


@_op(b"T")
def _binstring(m: _Machine) -> None:
    m.push_new(_utf8(m.take(struct.unpack("<i", m.take(4))[0])))


@_op(b"U")
def _short_binstring(m: _Machine) -> None:
    m.push_new(_utf8(m.take(m.uint(1))))


@_op(b"V")
def _unicode(m: _Machine) -> None:
    m.push_new(m.line().decode("raw-unicode-escape"))


@_op(b"X")
def _binunicode(m: _Machine) -> None:
    m.push_new(_utf8(m.take(m.uint(4))))


@_op(b"\x8c")
def _short_binunicode(m: _Machine) -> None:
    m.push_new(_utf8(m.take(m.uint(1))))


@_op(b"\x8d")
def _binunicode8(m: _Machine) -> None:
    m.push_new(_utf8(m.take(m.uint(8))))


@_op(b"B")
def _binbytes(m: _Machine) -> None:
    m.push_new(m.take(m.uint(4)))


@_op(b"C")
def _short_binbytes(m: _Machine) -> None:
    m.push_new(m.take(m.uint(1)))


@_op(b"\x8e")
def _binbytes8(m: _Machine) -> None:
    m.push_new(m.take(m.uint(8)))


# -- containers ------------------------------------------------------------------------
@_op(b")")
def _empty_tuple(m: _Machine) -> None:
    m.stack.append(())


@_op(b"t")
def _tuple(m: _Machine) -> None:
    m.push_new(tuple(m.pop_mark()))


def _tuple_n(n: int):
    def op(m: _Machine) -> None:
        if len(m.stack) < n:
            raise _Refused("the stack is empty")
        items = tuple(m.stack[-n:])
        del m.stack[-n:]
        m.charge(work=n)
        m.push_new(items)
    return op


_OPS[0x85], _OPS[0x86], _OPS[0x87] = _tuple_n(1), _tuple_n(2), _tuple_n(3)


@_op(b"]")
def _empty_list(m: _Machine) -> None:
    m.push_new([])


@_op(b"l")
def _list(m: _Machine) -> None:
    m.push_new(list(m.pop_mark()))


def _target_list(m: _Machine) -> list:
    target = m.top()
    if type(target) is not list:
        raise _Refused(f"APPEND(S) onto {_describe(target)}; only lists are appended to")
    return target


@_op(b"a")
def _append(m: _Machine) -> None:
    item = m.pop()
    target = _target_list(m)
    before = sys.getsizeof(target)
    target.append(item)
    m.charge(work=1)
    m.grow(target, before)


@_op(b"e")
def _appends(m: _Machine) -> None:
    items = m.pop_mark()
    target = _target_list(m)
    before = sys.getsizeof(target)
    target.extend(items)
    m.grow(target, before)


@_op(b"}")
def _empty_dict(m: _Machine) -> None:
    m.push_new({})


def _fill_dict(m: _Machine, target: dict, items: list) -> None:
    if len(items) % 2:
        raise _Refused("a dict built from an odd number of stack items")
    before = sys.getsizeof(target)
    for i in range(0, len(items), 2):
        target[m.check_key(items[i])] = items[i + 1]
    m.grow(target, before)


@_op(b"d")
def _dict(m: _Machine) -> None:
    items = m.pop_mark()
    target: dict = {}
    _fill_dict(m, target, items)
    m.push_new(target)


def _target_dict(m: _Machine) -> dict:
    target = m.top()
    if type(target) not in (dict, OrderedDict):
        raise _Refused(f"SETITEM(S) on {_describe(target)}; only dicts are filled")
    return target


@_op(b"s")
def _setitem(m: _Machine) -> None:
    value = m.pop()
    key = m.pop()
    _fill_dict(m, _target_dict(m), [key, value])


@_op(b"u")
def _setitems(m: _Machine) -> None:
    items = m.pop_mark()
    _fill_dict(m, _target_dict(m), items)


@_op(b"\x8f")
def _empty_set(m: _Machine) -> None:
    m.push_new(set())


@_op(b"\x90")
def _additems(m: _Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if type(target) is not set:
        raise _Refused(f"ADDITEMS on {_describe(target)}; only sets are added to")
    before = sys.getsizeof(target)
    for item in items:
        target.add(m.check_key(item))
    m.grow(target, before)


@_op(b"\x91")
def _frozenset(m: _Machine) -> None:
    m.push_new(frozenset(m.check_key(item) for item in m.pop_mark()))


# -- memo --------------------------------------------------------------------------------
@_op(b"g")
def _get(m: _Machine) -> None:
    m.get(m.decimal(m.line()))


@_op(b"h")
def _binget(m: _Machine) -> None:
    m.get(m.uint(1))


@_op(b"j")
def _long_binget(m: _Machine) -> None:
    m.get(m.uint(4))


@_op(b"p")
def _put(m: _Machine) -> None:
    m.put(m.decimal(m.line()))


@_op(b"q")
def _binput(m: _Machine) -> None:
    m.put(m.uint(1))


@_op(b"r")
def _long_binput(m: _Machine) -> None:
    m.put(m.uint(4))


@_op(b"\x94")
def _memoize(m: _Machine) -> None:
    m.put(m.memo_used)


# -- names, calls, persistent ids, state -----------------------------------------------
def _name_line(m: _Machine) -> str:
    return m.line().decode("utf-8")


@_op(b"c")
def _global(m: _Machine) -> None:
    module = _name_line(m)
    name = _name_line(m)
    m.push_new(m.find_class(module, name))


@_op(b"\x93")
def _stack_global(m: _Machine) -> None:
    name = m.pop()
    module = m.pop()
    if type(module) is not str or type(name) is not str:
        raise _Refused("STACK_GLOBAL needs two strings (module, name)")
    m.push_new(m.find_class(module, name))


@_op(b"R")
def _reduce(m: _Machine) -> None:
    args = m.pop()
    fn = m.pop()
    if type(args) is not tuple:
        raise _Refused(f"REDUCE with {_describe(args)} as its arguments; expected a tuple")
    m.charge(work=len(args))
    m.push_new(m.reduce(fn, args))


def _persistent(m: _Machine, pid: Any) -> None:
    if m.persistent_load is None:
        raise _Refused("a persistent id where none is expected")
    m.push_new(m.persistent_load(pid))


@_op(b"Q")
def _binpersid(m: _Machine) -> None:
    _persistent(m, m.pop())


@_op(b"P")
def _persid(m: _Machine) -> None:
    _persistent(m, m.line().decode("ascii"))


@_op(b"b")
def _build(m: _Machine) -> None:
    state = m.pop()
    target = m.top()
    if type(target) is not OrderedDict:
        raise _Refused(f"BUILD would set the state of {_describe(target)}; a checkpoint "
                       "sets state only on an OrderedDict (and it is dropped there)")
    ok = (type(state) in (dict, type(None))
          or (type(state) is tuple and len(state) == 2
              and all(type(s) in (dict, type(None)) for s in state)))
    if not ok:
        raise _Refused(f"BUILD with {_describe(state)} as the state of an OrderedDict")
    # The state (torch's _metadata: module versions) is not needed: dropped.


def _instance_opcode(m: _Machine) -> None:
    raise _Refused("the pickle creates an instance of a class (NEWOBJ/OBJ/INST/EXT); a "
                   "checkpoint holds only tensors, dicts, lists, tuples and scalars")


@_op(b"i")
def _inst(m: _Machine) -> None:
    # INST names its class inline: resolve it first, so that a forbidden class gets
    # the same refusal (naming it) as a GLOBAL would.
    m.find_class(_name_line(m), _name_line(m))
    _instance_opcode(m)


for _code in (b"\x81", b"\x92", b"o", b"\x82", b"\x83", b"\x84"):  # NEWOBJ(_EX), OBJ, EXT1/2/4
    _OPS[_code[0]] = _instance_opcode


# ----------------------------------------------------------------------------- entry


def run_pickle(data: bytes, start: int, *, source: str, what: str,
               find_class: Callable[[str, str], Any],
               reduce: Callable[[Any, tuple], Any],
               persistent_load: Callable[[Any], Any] | None = None) -> tuple[Any, int]:
    """Unpickle the pickle that starts at ``data[start]``; return ``(object, end)``.

    Parameters
    ----------
    data : bytes
        The buffer holding the pickle (more may follow it; ``end`` says where it
        stopped).
    start : int
        Offset of the pickle's first opcode.
    source, what : str
        The file and the name of this pickle, for messages
        (``"x.pth: cannot parse the data.pkl pickle: ..."``).
    find_class : callable ``(module, name) -> object``
        Resolves ``GLOBAL``/``STACK_GLOBAL`` (and the class of ``INST``, before
        ``INST`` is refused).  It raises for anything it does not admit.
    reduce : callable ``(fn, args) -> object``
        Carries out ``REDUCE``: ``fn`` is an object ``find_class`` returned (or any
        other object the file put there: ``reduce`` must check), ``args`` a tuple.
    persistent_load : callable ``pid -> object``, optional
        Resolves ``PERSID``/``BINPERSID``; without it a persistent id is refused.

    Returns
    -------
    (object, int)
        The unpickled object and the offset just past its ``STOP``.

    Raises
    ------
    WeightsError
        Malformed or truncated pickle, a broken rule (module docstring), a meter past
        its bound, or anything a callback raised (a ``WeightsError`` from a callback
        passes unchanged; other exceptions are wrapped with the position).

    Notes
    -----
    With ``b`` the bytes read so far, the meters are compared with their bounds after
    every opcode, and the run stops at the first opcode after which
    ``work > 8 b + 65536`` or ``heap > 16 b + 32 MiB`` (module docstring); one opcode's
    own cost is linear in the stack items it consumes, so time and memory are linear
    in the pickle's size.
    """
    m = _Machine(data, start, find_class, reduce, persistent_load)
    try:
        value = m.run()
    except WeightsError:
        raise
    except Exception as exc:  # _Refused, or a malformed argument (ValueError & co.)
        op = pickletools.code2op.get(chr(data[m.at])) if m.at < len(data) else None
        where = f"{op.name if op else 'opcode'} at byte {m.at}"
        detail = str(exc) if isinstance(exc, _Refused) else f"{type(exc).__name__}: {exc}"
        raise WeightsError(f"{source}: cannot parse the {what}: {detail} ({where})") from exc
    return value, m.pos
