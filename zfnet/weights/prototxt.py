"""A small parser for the protobuf *text* format (Caffe ``.prototxt`` files).

Grammar (the subset Caffe network definitions use)::

    message := { field }
    field   := NAME [":"] "{" message "}"        sub-message ("<" ">" also accepted)
             | NAME ":" value                     scalar
             | NAME ":" "[" value {"," value} "]" list shorthand for a repeated field
    value   := STRING {STRING} | NUMBER | IDENT   (adjacent strings concatenate)

``#`` starts a comment; ``,`` or ``;`` may follow a field.  Numbers become ``int`` or
``float``; ``true``/``false`` become ``bool``; ``inf``/``nan`` become ``float``; other
identifiers (enum values such as ``MAX``) stay ``str``.

Without the ``.proto`` schema the parser cannot know which fields are repeated, so a
field seen once is a scalar (or dict) and a field seen twice becomes a list.  Names
in ``repeated`` (by default the fields Caffe nets repeat: ``layer``, ``bottom``,
``top``, ``input_dim`` ...) are *always* lists, so ``net["layer"]`` is a list even for
a one-layer net.

The parser is a loop over tokens with an explicit stack, so deep nesting cannot
exhaust Python's recursion limit, and it runs in time linear in the text.
"""

from __future__ import annotations

import bisect
import os
import re
from typing import Any

from ..errors import WeightsError

__all__ = ["parse_prototxt", "CAFFE_REPEATED"]

# Fields that are `repeated` in caffe.proto and commonly appear once.
CAFFE_REPEATED = frozenset({
    "layer", "layers", "bottom", "top", "input", "input_dim", "input_shape", "dim",
    "param", "include", "exclude", "loss_weight", "mean_value", "stage", "blobs",
})

_TOKEN = re.compile(
    r"""
    (?P<skip>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?(?![\w.]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>\[\]:,;])
    """,
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f",
                   "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}
_CLOSE = {"{": "}", "<": ">"}


def _unescape(body: str) -> str:
    """C-style escapes of a protobuf text string (\\n, \\", \\xHH, \\ooo)."""
    def sub(m: re.Match) -> str:
        e = m.group(1)
        if e[0] in "xX" and len(e) > 1:
            return chr(int(e[1:], 16))
        if e[0] in "01234567":
            return chr(int(e, 8))
        return _SIMPLE_ESCAPES.get(e, e)
    return _ESCAPE.sub(sub, body)


def _number(text: str) -> int | float:
    if len(text) > 400:  # Python refuses int() of > 4300 digits; no Caffe field needs 400
        raise ValueError(f"a number of {len(text)} characters")
    t = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x", "+0x")) else text
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", t):
        return int(t, 16)
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    return float(t)


def _ident_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "t"):
        return True
    if low in ("false", "f"):
        return False
    if low in ("inf", "infinity", "-inf", "-infinity", "nan", "-nan"):
        return float(low.replace("infinity", "inf"))
    return text


class _Tokens:
    """Token stream with line numbers for error messages."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.items: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise self.error(pos, f"unexpected character {text[pos]!r}")
            if m.lastgroup != "skip":
                self.items.append((m.lastgroup, m.group(), pos))
            pos = m.end()
        self.i = 0

    def line(self, pos: int) -> int:
        return bisect.bisect_right(self.newlines, pos - 1) + 1 if pos else 1

    def error(self, pos: int, what: str) -> WeightsError:
        return WeightsError(f"{self.source}:{self.line(pos)}: {what}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.items[self.i] if self.i < len(self.items) else None

    def next(self, what: str) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise self.error(len(self.text), f"unexpected end of text, expected {what}")
        self.i += 1
        return tok


def _scalar(tokens: _Tokens) -> Any:
    kind, text, pos = tokens.next("a value")
    if kind == "string":
        parts = [_unescape(text[1:-1])]
        while (nxt := tokens.peek()) is not None and nxt[0] == "string":
            parts.append(_unescape(tokens.next("a string")[1][1:-1]))
        return "".join(parts)
    if kind == "number":
        try:
            return _number(text)
        except ValueError as exc:
            raise tokens.error(pos, f"bad number {text[:40]!r} ({exc})") from exc
    if kind == "ident":
        return _ident_value(text)
    raise tokens.error(pos, f"expected a value, found {text!r}")


def _add(msg: dict, lists: dict[int, set], name: str, value: Any, repeated: frozenset,
         many: bool = False) -> None:
    """Store ``value`` under ``name``: append if repeated, else scalar then list."""
    seen = lists.setdefault(id(msg), set())
    values = value if many else [value]
    if name in seen:
        msg[name].extend(values)
    elif name in msg or name in repeated or many:
        msg[name] = ([msg[name]] if name in msg else []) + list(values)
        seen.add(name)
    else:
        msg[name] = value


def parse_prototxt(source: str | os.PathLike, repeated: frozenset | set = CAFFE_REPEATED
                   ) -> dict[str, Any]:
    """Parse a protobuf text-format message (a Caffe ``.prototxt``) into dicts and lists.

    Parameters
    ----------
    source : str or os.PathLike
        The text itself, or the path of a file holding it (a ``PathLike``, or a str
        without newlines or braces that names an existing file).
    repeated : set of str
        Field names that are always lists, even when they occur once.

    Returns
    -------
    dict
        Field name -> value; sub-messages are dicts; repeated fields are lists.

    Raises
    ------
    WeightsError
        Syntax error (the message gives the file or ``<text>`` and the line), or an
        unreadable file.

    Examples
    --------
    >>> net = parse_prototxt('name: "n" layer { name: "c" convolution_param { num_output: 8 } }')
    >>> net["layer"][0]["convolution_param"]["num_output"]
    8
    """
    repeated = frozenset(repeated)
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and "\n" not in source and "{" not in source
        and len(source) < 4096 and os.path.isfile(source)
    ):
        name = os.fspath(source)
        try:
            with open(name, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise WeightsError(f"{name}: cannot read prototxt ({exc})") from exc
    elif isinstance(source, str):
        name, text = "<text>", source
    else:
        raise WeightsError(f"parse_prototxt expects text or a path, got {type(source).__name__}")

    tokens = _Tokens(text, name)
    root: dict[str, Any] = {}
    lists: dict[int, set] = {}
    stack: list[tuple[dict, str | None, int]] = [(root, None, 0)]  # (message, closer, pos)
    while tokens.peek() is not None:
        kind, text_, pos = tokens.next("a field")
        msg, closer, _ = stack[-1]
        if kind == "punct" and text_ == closer:
            stack.pop()
            if (sep := tokens.peek()) is not None and sep[1] in ",;":
                tokens.next("separator")
            continue
        if kind != "ident":
            raise tokens.error(pos, f"expected a field name, found {text_!r}")
        field = text_
        colon = tokens.peek() is not None and tokens.peek()[1] == ":"
        if colon:
            tokens.next(":")
        nxt = tokens.peek()
        if nxt is not None and nxt[1] in _CLOSE:
            tokens.next("{")
            child: dict[str, Any] = {}
            _add(msg, lists, field, child, repeated)
            stack.append((child, _CLOSE[nxt[1]], nxt[2]))
            continue
        if not colon:
            raise tokens.error(pos, f"expected ':' or '{{' after field '{field}'")
        if nxt is not None and nxt[1] == "[":
            tokens.next("[")
            values = []
            if tokens.peek() is not None and tokens.peek()[1] == "]":
                tokens.next("]")
            else:
                while True:
                    values.append(_scalar(tokens))
                    k, t, p = tokens.next("',' or ']'")
                    if t == "]":
                        break
                    if t != ",":
                        raise tokens.error(p, f"expected ',' or ']' in list '{field}', found {t!r}")
            _add(msg, lists, field, values, repeated, many=True)
        else:
            _add(msg, lists, field, _scalar(tokens), repeated)
        if (sep := tokens.peek()) is not None and sep[1] in ",;":
            tokens.next("separator")
    if len(stack) > 1:
        _, closer, pos = stack[-1]
        raise tokens.error(pos, f"message opened here is never closed (missing '{closer}')")
    return root
