"""Hypothesis strategies for fuzzing the parsers of bytes from outside: the inputs that
random bytes almost never hit (deep nesting, digits that are not ASCII, a value of the
wrong type in a document that is otherwise right), shared by the fuzz properties under
tests/unit."""

from __future__ import annotations

import itertools
import json

from hypothesis import strategies as st

# Characters that look harmless and are not: digits str.isdigit() takes and int() does not
# (superscripts) or does (Arabic-Indic), line ends a `$` regex lets through, NUL, controls.
TRICKY_CHARS = "\u00b2\u00b3\u00b9\u0661\u0662\uff11\n\r\t\0\x7f\x85\u2028 \"'\\:[]{}/.,-+#=e"


def _json(allow_nan: bool) -> st.SearchStrategy[object]:
    scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=allow_nan)
               | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)


json_values = _json(allow_nan=True)
# For round trips: NaN is never equal to itself, so a decoded NaN would not compare equal.
json_comparable = _json(allow_nan=False)
tricky_text = st.text(alphabet=st.sampled_from(TRICKY_CHARS) | st.characters(
    blacklist_categories=["Cs"]), max_size=24)


@st.composite
def nested(draw: st.DrawFn, opener: str = "[") -> str:
    """Brackets nested past any recursion limit, as a parser meets them in a hostile
    document."""
    return opener * draw(st.integers(900, 100_000))


def json_bytes(values: st.SearchStrategy[object] = json_values) -> st.SearchStrategy[bytes]:
    """JSON text, nesting bombs, or any bytes."""
    return st.one_of(values.map(lambda v: json.dumps(v).encode()),
                     nested().map(str.encode), nested("{\"a\":").map(str.encode),
                     st.binary(max_size=64))


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at arbitrary places, as a stream socket may deliver it."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(v), repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string, \uXXXX escapes and all
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"


toml_scalars = (st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats()
                | tricky_text)
# TOML values as text: any type in any field, and arrays nested past the recursion limit.
toml_values = st.one_of(
    st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3),
                 max_leaves=8).map(_toml),
    nested())


@st.composite
def toml_documents(draw: st.DrawFn, base: str) -> str:
    """`base` (key = value lines) with one line's value, a new key, or a new table replaced
    by something drawn; now and then any text at all."""
    lines = base.strip().splitlines()
    i = draw(st.integers(0, len(lines)))
    key = lines[i].split("=", 1)[0].strip() if i < len(lines) and "=" in lines[i] else (
        draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=24)))
    line = f"{key} = {draw(toml_values)}"
    if draw(st.booleans()):
        table = draw(st.sampled_from(["[timing]", "[proxy]", "[compare]", "[[disks]]",
                                      "[[compare.pass_through]]"]))
        line = f"{table}\n{line}"
    doc = "\n".join([*lines[:i], line, *lines[i + 1:]]) + "\n"
    return draw(st.just(doc) | st.text(max_size=80))


# HTTP request heads (colo_orch's API): mostly the right words, with now and then any
# latin-1 text, a tricky character often at the end, where a regex's `$` lets "\n" through.
LATIN1 = st.characters(max_codepoint=0xFF)
VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
TRICKY = st.sampled_from([c for c in TRICKY_CHARS if c <= "\xff"])
PIECE = st.one_of(st.text(LATIN1 | TRICKY, max_size=12),
                  st.tuples(st.text(VISIBLE, max_size=6), TRICKY).map("".join))
METHODS = st.sampled_from(["GET", "POST", "PUT", "get", ""]) | PIECE
TARGETS = (st.sampled_from(["/state", "/checkpoint", "/metrics", "/", "/state?x=1"])
           | PIECE.map("/".__add__))
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2"]) | PIECE
NAMES = st.sampled_from(["Host", "Content-Length", "Authorization", "Transfer-Encoding"]) | PIECE
VALUES = (st.sampled_from(["0", "12", "Bearer " + "t" * 16, "localhost"])
          | st.integers(-5, 10**14).map(str) | PIECE)
HEADERS = st.lists(st.tuples(NAMES, VALUES).map(lambda h: f"{h[0]}: {h[1]}"), max_size=5)


def http_heads() -> st.SearchStrategy[bytes]:
    return st.tuples(METHODS, TARGETS, VERSIONS, HEADERS, PIECE).map(
        lambda t: "\r\n".join([f"{t[0]} {t[1]} {t[2]}", *t[3], "", t[4]]).encode("latin-1"))
