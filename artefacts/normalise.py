"""Normalisers: the bytes of an output whose digest decides early cutoff.

A recipe may name a normaliser for an output (DESIGN.md, "Incremental semantics"). The chef
that made the output computes `normalised_digest(path, spec)`; when it equals the previous
run's, dependants need not run even though the raw bytes (and the store digest) differ.

Spec strings (`parse_spec`):

- `"none"`: the bytes as they are; the digest equals the file's raw digest.
- `"pdf"`: drops what a PDF writer changes on every run: Info and embedded-file dates
  (`/CreationDate`, `/ModDate`), the trailer `/ID`, XMP dates and ids in `/Type /Metadata`
  streams (`xmp:CreateDate`, `xmp:ModifyDate`, `xmp:MetadataDate`, `xmpMM:DocumentID`,
  `xmpMM:InstanceID`), and every byte offset those may shift: classic xref tables, xref streams,
  `startxref`, trailer `/Prev` and `/XRefStm`, object-stream offset headers, and the `/Length`
  of any stream whose content was normalised. Flate-compressed object streams and metadata
  streams are inflated so that dates inside them are found too. `/PTEX.Fullbanner` and
  `/Producer` are kept: they change only with the toolchain.
  A PDF above `PDF_MAX_BYTES` is digested raw (it would have to be held in memory whole):
  correct, merely without cutoff for its volatile parts.
- `"latex-aux"` (alias `"aux"`): drops lines of a LaTeX `.aux` that cannot change the next
  run's output; see `_latex_aux`. Streams line by line.
- `"regex:<python regex>"`: drops every line in which the pattern is found (`re.search`, with
  `re.MULTILINE`, on the line without its end-of-line, decoded as UTF-8 with surrogateescape).
  Streams line by line; a pattern never spans lines.

Adding a normaliser is one function: decorate it with `@_register("name", "alias", ...)`. It
receives the open file (binary) and `emit`, to be called with the normalised bytes in order.
One that takes an argument (`"name:<arg>"`) is a factory: `@_register("name", takes_argument=True)`
on a function `(arg) -> Transform`.

A normalised digest means something only together with its spec: callers keep the two together
(the spec belongs in the producing step's action key), never comparing digests across specs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from protocol.digests import ALGORITHMS, DEFAULT_ALGORITHM

CHUNK_BYTES = 1 << 20
# Above this a PDF is digested raw: its normalisation needs the whole file in memory.
PDF_MAX_BYTES = 256 << 20
# An inflated object or metadata stream larger than this is left compressed (zip-bomb guard).
PDF_MAX_INFLATED_BYTES = 64 << 20

Emit = Callable[[bytes | memoryview], object]
Transform = Callable[[BinaryIO, Emit], None]


class NormaliserError(ValueError):
    """A normaliser spec that cannot be used: unknown name, missing or malformed argument."""


@dataclass(frozen=True)
class Normaliser:
    """A parsed spec: `transform` writes a file's normalised bytes to `emit`, streaming where it can."""

    spec: str
    transform: Transform

    def normalise(self, data: bytes) -> bytes:
        """The normalised form of bytes already in memory."""
        out = bytearray()
        self.transform(io.BytesIO(data), out.extend)
        return bytes(out)

    def digest(self, path: Path, algo: str = DEFAULT_ALGORITHM) -> str:
        """`algo:<hex>` of the normalised bytes of the file at `path`."""
        hasher = _new_hasher(algo)
        with open(path, "rb") as source:
            self.transform(source, hasher.update)
        return f"{algo}:{hasher.hexdigest()}"


@dataclass(frozen=True)
class _Entry:
    factory: Callable[[str | None], Transform]
    takes_argument: bool


_REGISTRY: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}


def _register(name: str, *aliases: str, takes_argument: bool = False) -> Callable[[Callable], Callable]:
    def add(function: Callable) -> Callable:
        factory = function if takes_argument else (lambda _argument: function)
        _REGISTRY[name] = _Entry(factory, takes_argument)
        _ALIASES.update(dict.fromkeys(aliases, name))
        return function

    return add


def known_specs() -> list[str]:
    """Every spec form `parse_spec` accepts, for messages and `--help` texts."""
    forms = [f"{name}:<arg>" if entry.takes_argument else name for name, entry in _REGISTRY.items()]
    return forms + [f"{alias} (= {name})" for alias, name in _ALIASES.items()]


def parse_spec(spec: str) -> Normaliser:
    """The normaliser a spec string names; NormaliserError for anything unknown or malformed."""
    name, colon, argument = spec.partition(":")
    name = _ALIASES.get(name, name)
    entry = _REGISTRY.get(name)
    if entry is None:
        raise NormaliserError(f"unknown normaliser {spec!r}; known: {', '.join(known_specs())}")
    if entry.takes_argument and not colon:
        raise NormaliserError(f"normaliser {name!r} needs an argument: {name}:<arg>")
    if not entry.takes_argument and colon:
        raise NormaliserError(f"normaliser {name!r} takes no argument, got {spec!r}")
    return Normaliser(spec, entry.factory(argument if colon else None))


def normalised_digest(path: Path, spec: str, algo: str = DEFAULT_ALGORITHM) -> str:
    """`algo:<hex>` of the bytes of `path` as normaliser `spec` leaves them."""
    return parse_spec(spec).digest(path, algo)


class _Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...


def _new_hasher(algo: str) -> _Hasher:
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "blake3":
        # The project's declared dependency; imported here so that sha256 users never load it.
        import blake3

        return blake3.blake3()
    raise ValueError(f"unknown digest algorithm {algo!r}; known: {', '.join(ALGORITHMS)}")


# --- none -----------------------------------------------------------------------------------


@_register("none")
def _identity(source: BinaryIO, emit: Emit) -> None:
    while chunk := source.read(CHUNK_BYTES):
        emit(chunk)


# --- line filters: regex and latex-aux --------------------------------------------------------


def _drop_lines(source: BinaryIO, emit: Emit, drop: Callable[[bytes], bool]) -> None:
    """Emit every line (with its end-of-line) that `drop` refuses; `drop` sees it without."""
    for line in source:  # buffered, one line at a time: memory stays bounded by the longest line
        if not drop(line.rstrip(b"\r\n")):
            emit(line)


@_register("regex", takes_argument=True)
def _regex(pattern: str | None) -> Transform:
    if not pattern:
        raise NormaliserError("regex normaliser needs a non-empty pattern (an empty one drops every line)")
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except re.error as error:
        raise NormaliserError(f"bad regex in normaliser 'regex:{pattern}': {error}") from error

    def matches(line: bytes) -> bool:
        return compiled.search(line.decode("utf-8", "surrogateescape")) is not None

    return lambda source, emit: _drop_lines(source, emit, matches)


# Lines a LaTeX .aux may contain that never change the next run's output.
#
# Kept on purpose, although sometimes proposed for dropping:
# - `\gdef \@abspage@last{N}`: the page count, which "page X of Y" prints.
# - hyperref's `\providecommand\hyper@newdestlabel[2]{}` and its other boilerplate: identical on
#   every run of a document, so dropping it gains no cutoff; it defines macros the next run reads.
# - `\relax` and every other line: LaTeX writes the .aux deterministically; what changes is
#   what the document changed, and the next run reads it.
_AUX_VOLATILE = (
    # minted's list of its Pygments cache files, read only to delete stale ones; it changes when
    # the cache does, not the document (latexmk's minted example ignores the same lines).
    re.compile(rb"\\gdef\\minted@oldcachelist\{,\s*"),
    re.compile(rb"\s*[\w-]+\.pygstyle,?\}?\s*"),
    re.compile(rb"\s*[0-9A-Fa-f]+\.pygtex,?\}?\s*"),
)
# Whatever a rule says, a line mentioning one of these is kept: they are the .aux's meaning
# (cross-references, citations, contents lists, BibTeX's input, page count, included .aux files).
_AUX_PROTECTED = re.compile(
    rb"\\(?:newlabel|bibcite|@writefile|citation|bibdata|bibstyle|@input|@setckpt|abx@aux@|gdef\s*\\@abspage@last)"
)


def _aux_line_is_volatile(line: bytes) -> bool:
    if _AUX_PROTECTED.search(line):
        return False
    # TeX discards a comment line whole, end-of-line included: dropping it is exactly neutral.
    if line.lstrip(b" \t").startswith(b"%"):
        return True
    return any(rule.fullmatch(line) for rule in _AUX_VOLATILE)


@_register("latex-aux", "aux")
def _latex_aux(source: BinaryIO, emit: Emit) -> None:
    _drop_lines(source, emit, _aux_line_is_volatile)


# --- pdf ------------------------------------------------------------------------------------

_PDF_STRING = rb"(?:\((?:[^()\\]|\\.)*\)|<[0-9A-Fa-f\s]*>)"  # literal (no nested parens) or hex
_PDF_DATES = re.compile(rb"/(CreationDate|ModDate)\s*" + _PDF_STRING, re.DOTALL)
_PDF_ID = re.compile(rb"/ID\s*\[\s*" + _PDF_STRING + rb"\s*" + _PDF_STRING + rb"\s*\]", re.DOTALL)
_PDF_XREF_TABLE = re.compile(
    rb"^xref[ \t]*\r?\n(?:[ \t]*\d+[ \t]+\d+[ \t]*\r?\n(?:\d{10}[ \t]+\d{5}[ \t]+[nf][ \t]*\r?\n?)*)*", re.MULTILINE
)
_PDF_STARTXREF = re.compile(rb"startxref\s+\d+")
_PDF_TRAILER_OFFSETS = re.compile(rb"/(Prev|XRefStm)\s+\d+")
_PDF_OBJ = re.compile(rb"(?<![0-9])(\d+)\s+\d+\s+obj\b")
_PDF_OBJ_BODY_END = re.compile(rb"endobj|>>\s*stream(?:\r\n|\n|\r)")
_PDF_ENDOBJ = re.compile(rb"endobj")
_PDF_BARE_INT = re.compile(rb"\s*\d+\s*")
_PDF_LENGTH = re.compile(rb"/Length\s+(\d+)(?:\s+\d+\s+R)?\b")
_PDF_INDIRECT_LENGTH = re.compile(rb"/Length\s+(\d+)\s+\d+\s+R")
_PDF_FIRST = re.compile(rb"/First\s+(\d+)\b")
# Keys of a normalised stream that count its encoded bytes, with pdfTeX's fixed-width padding.
_PDF_SIZE_KEYS = re.compile(rb"/(?:Length|First)\s+\d+(?:\s+\d+\s+R)?[ \t]*")
_PDF_TYPE = re.compile(rb"/Type\s*/(\w+)")
_PDF_FLATE_ONLY = re.compile(rb"/Filter\s*(?:/FlateDecode|\[\s*/FlateDecode\s*\])")
_XMP_VOLATILE = rb"(?:xmp:CreateDate|xmp:ModifyDate|xmp:MetadataDate|xmpMM:DocumentID|xmpMM:InstanceID)"
_XMP_ELEMENT = re.compile(rb"<(" + _XMP_VOLATILE + rb")(\s[^>]*)?>[^<]*</\1\s*>")
_XMP_ATTRIBUTE = re.compile(rb"(?<![\w:])(" + _XMP_VOLATILE + rb")\s*=\s*(?:\"[^\"]*\"|'[^']*')")


@_register("pdf")
def _pdf(source: BinaryIO, emit: Emit) -> None:
    head = source.read(1024)
    if b"%PDF-" not in head or _size(source) > PDF_MAX_BYTES:
        # Not a PDF after all, or too big to hold: the raw bytes, which is never wrong.
        emit(head)
        _identity(source, emit)
        return
    for segment in _PdfScan(head + source.read()).segments():
        emit(segment)


def _size(source: BinaryIO) -> int:
    try:
        return os.fstat(source.fileno()).st_size
    except (OSError, io.UnsupportedOperation):  # in-memory bytes: already held whole
        return 0


def _normalise_dict_text(text: bytes) -> bytes:
    return _PDF_DATES.sub(rb"/\1 (normalised)", text)


def _normalise_top_level(text: bytes) -> bytes:
    """Text between objects: header, comments, xref tables and trailers."""
    text = _PDF_XREF_TABLE.sub(b"xref\n", text)
    text = _PDF_STARTXREF.sub(b"startxref", text)
    text = _PDF_TRAILER_OFFSETS.sub(rb"/\1 (offset)", text)
    text = _PDF_ID.sub(b"/ID [(normalised)]", text)
    return _normalise_dict_text(text)


def _normalise_xmp(data: bytes) -> bytes:
    data = _XMP_ELEMENT.sub(rb"<\1\2>normalised</\1>", data)
    return _XMP_ATTRIBUTE.sub(rb'\1="normalised"', data)


def _normalise_object_stream(data: bytes, dictionary: bytes) -> bytes:
    """Dates inside an object stream; its header of byte offsets is reduced to object numbers."""
    first = _PDF_FIRST.search(dictionary)
    split = int(first.group(1)) if first else 0
    header, body = data[:split], data[split:]
    normalised = _normalise_dict_text(body)
    if normalised == body:
        return data
    numbers = header.split()[0::2]  # pairs of (object number, offset): the offsets may have moved
    return b" ".join(numbers) + b"\n" + normalised


def _inflate(data: bytes | memoryview) -> bytes | None:
    """Flate-decoded bytes, or None when they are corrupt or suspiciously large."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, PDF_MAX_INFLATED_BYTES)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out


class _PdfScan:
    """One pass over a PDF's objects, stepping over stream data by its /Length.

    Only text outside streams is searched for dates and offsets, so that the bytes of a
    compressed page or font can never be mistaken for them; object and metadata streams, the
    only streams that carry such values, are inflated and normalised.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)
        self.out: list[bytes | memoryview] = []
        self.bare_ints: dict[bytes, int] = {}  # object number -> index in `out`, for indirect /Length
        self.volatile_lengths: set[bytes] = set()

    def segments(self) -> list[bytes | memoryview]:
        position = 0
        while header := _PDF_OBJ.search(self.data, position):
            self.out.append(_normalise_top_level(self.data[position : header.start()]))
            position = self._object(header)
        self.out.append(_normalise_top_level(self.data[position:]))
        for number in self.volatile_lengths & self.bare_ints.keys():
            self.out[self.bare_ints[number]] = number + b" 0 obj (length) endobj"
        return self.out

    def _object(self, header: re.Match[bytes]) -> int:
        """Emit the object `header` starts; return the position after it."""
        end = _PDF_OBJ_BODY_END.search(self.data, header.end())
        if end is None:  # truncated: the rest is this object
            self.out.append(_normalise_dict_text(self.data[header.start() :]))
            return len(self.data)
        if end.group().startswith(b"endobj"):
            if _PDF_BARE_INT.fullmatch(self.data, header.end(), end.start()):
                self.bare_ints[header.group(1)] = len(self.out)
            self.out.append(_normalise_dict_text(self.data[header.start() : end.end()]))
            return end.end()
        dictionary = self.data[header.start() : end.start() + 2]
        return self._stream(dictionary, end.end())

    def _stream(self, dictionary: bytes, start: int) -> int:
        stop = self._stream_stop(dictionary, start)
        endobj = _PDF_ENDOBJ.search(self.data, stop)
        after = endobj.end() if endobj else len(self.data)
        kind = _PDF_TYPE.search(dictionary)
        kind_name = kind.group(1) if kind else b""
        if kind_name == b"XRef":
            self.out.append(b"(xref stream)\n")  # an index of byte offsets: nothing else lives there
            return after
        raw = self.view[start:stop]
        normalised = self._normalised_content(kind_name, dictionary, raw)
        if normalised is None:
            self.out += [_normalise_dict_text(dictionary), b"stream\n", raw, self.view[stop:after]]
            return after
        if indirect := _PDF_INDIRECT_LENGTH.search(dictionary):
            self.volatile_lengths.add(indirect.group(1))
        dictionary = _PDF_SIZE_KEYS.sub(b"", dictionary)
        self.out += [_normalise_dict_text(dictionary), b"stream (inflated)\n", normalised, self.view[stop:after]]
        return after

    def _stream_stop(self, dictionary: bytes, start: int) -> int:
        """Where the stream's data ends: by a direct /Length when it checks out, else at `endstream`."""
        length = _PDF_LENGTH.search(dictionary)
        if length and b" R" not in length.group():
            stop = start + int(length.group(1))
            if re.match(rb"\s*endstream", self.data[stop : stop + 64]):
                return stop
        found = self.data.find(b"endstream", start)
        return len(self.data) if found < 0 else found

    def _normalised_content(self, kind: bytes, dictionary: bytes, raw: memoryview) -> bytes | None:
        """Decoded, normalised content of an object or metadata stream; None when nothing changed."""
        if kind not in (b"ObjStm", b"Metadata"):
            return None
        if b"/Filter" not in dictionary:
            decoded: bytes | None = bytes(raw)
        elif _PDF_FLATE_ONLY.search(dictionary) and b"/DecodeParms" not in dictionary:
            decoded = _inflate(raw)
        else:
            decoded = None  # a filter we cannot undo: keep the raw bytes, over-sensitive but safe
        if decoded is None:
            return None
        normalised = _normalise_object_stream(decoded, dictionary) if kind == b"ObjStm" else _normalise_xmp(decoded)
        return None if normalised == decoded else normalised
