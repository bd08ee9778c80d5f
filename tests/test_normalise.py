"""Normalisers: real pdflatex output whose only differences are dates must digest alike; real changes must not."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from conftest import require

from artefacts import normalise
from artefacts.hashing import hash_bytes
from artefacts.normalise import NormaliserError, normalised_digest, parse_spec

PDFLATEX = shutil.which("pdflatex")
needs_pdflatex = pytest.mark.usefixtures("_pdflatex")


@pytest.fixture
def _pdflatex() -> None:
    require(PDFLATEX is not None, "pdflatex is not installed")

EPOCH_2001 = {"SOURCE_DATE_EPOCH": "1000000000", "FORCE_SOURCE_DATE": "1"}
EPOCH_2023 = {"SOURCE_DATE_EPOCH": "1700000000", "FORCE_SOURCE_DATE": "1"}

ARTICLE = r"""\pdfobjcompresslevel=%(level)d
\documentclass{article}
\usepackage{hyperref}
\pdfinfo{/Title (%(title)s)}
\begin{document}
\section{Intro}\label{sec:intro}
%(body)s, see Section~\ref{sec:intro}.
\end{document}
"""

# XMP metadata in a (compressed) stream, and a date in a plain object that level 2 puts into a
# compressed object stream: where hyperxmp-like packages put them, made by pdfTeX itself.
WITH_XMP = r"""\pdfobjcompresslevel=%(level)d
\documentclass{article}
\immediate\pdfobj stream attr{/Type /Metadata /Subtype /XML}{<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns\string#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
 xmp:MetadataDate="\pdfcreationdate">
<xmp:CreateDate>\pdfcreationdate</xmp:CreateDate>
<xmp:ModifyDate>\pdfcreationdate</xmp:ModifyDate>
<xmpMM:DocumentID>uuid:\pdfcreationdate</xmpMM:DocumentID>
<xmpMM:InstanceID>uuid:\pdfcreationdate</xmpMM:InstanceID>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>}
\pdfcatalog{/Metadata \the\pdflastobj\space 0 R}
\immediate\pdfobj{<< /ModDate (\pdfcreationdate) /Note (kept) >>}
\pdfcatalog{/Extra \the\pdflastobj\space 0 R}
\begin{document}
Hello.
\end{document}
"""

PDF_DATE = re.compile(rb"D:\d{14}")


def pdflatex(workdir: Path, source: str, env: dict[str, str]) -> Path:
    """Run pdflatex once on `source` in a fresh `workdir`; the date variables come only from `env`."""
    workdir.mkdir(parents=True)
    (workdir / "doc.tex").write_text(source)
    clean = {key: value for key, value in os.environ.items() if key not in ("SOURCE_DATE_EPOCH", "FORCE_SOURCE_DATE")}
    result = subprocess.run(
        [PDFLATEX or "pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=workdir,
        env={**clean, **env},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout.decode(errors="replace")[-2000:]
    return workdir


def article(level: int = 2, body: str = "Hello", title: str = "A title") -> str:
    return ARTICLE % {"level": level, "body": body, "title": title}


def digests(path: Path) -> tuple[str, str]:
    return normalised_digest(path, "none"), normalised_digest(path, "pdf")


# --- pdf ---------------------------------------------------------------------------------------


@needs_pdflatex
@pytest.mark.parametrize("level", [0, 2], ids=["xref-table", "xref-stream"])
def test_pdf_runs_at_different_times_share_the_normalised_digest(tmp_path: Path, level: int) -> None:
    early = pdflatex(tmp_path / "early", article(level), EPOCH_2001) / "doc.pdf"
    late = pdflatex(tmp_path / "late", article(level), EPOCH_2023) / "doc.pdf"
    assert b"/CreationDate (D:20010909014640Z)" in early.read_bytes()
    assert b"/CreationDate (D:20231114221320Z)" in late.read_bytes()

    (early_raw, early_norm), (late_raw, late_norm) = digests(early), digests(late)
    assert early_raw != late_raw
    assert early_norm == late_norm


@needs_pdflatex
@pytest.mark.parametrize("level", [0, 2], ids=["xref-table", "object-streams"])
def test_pdf_dates_of_different_lengths_in_compressed_streams(tmp_path: Path, level: int) -> None:
    """Local time in two zones: `Z` against `+05'30'` shifts every later byte offset."""
    source = WITH_XMP % {"level": level}
    utc = pdflatex(tmp_path / "utc", source, {"TZ": "UTC"}) / "doc.pdf"
    india = pdflatex(tmp_path / "india", source, {"TZ": "IST-5:30"}) / "doc.pdf"
    assert utc.stat().st_size != india.stat().st_size
    assert b"xmp:CreateDate" not in india.read_bytes(), "the XMP packet should be compressed"

    (utc_raw, utc_norm), (india_raw, india_norm) = digests(utc), digests(india)
    assert utc_raw != india_raw
    assert utc_norm == india_norm
    normalised = parse_spec("pdf").normalise(india.read_bytes())
    assert not PDF_DATE.search(normalised), "a date survived normalisation"
    assert b"/Note (kept)" in normalised and b"/PTEX.Fullbanner (This is pdfTeX" in normalised


@needs_pdflatex
@pytest.mark.parametrize("change", [{"body": "Hullo"}, {"title": "Another title"}], ids=["body", "info-title"])
def test_pdf_real_change_changes_the_normalised_digest(tmp_path: Path, change: dict[str, str]) -> None:
    before = pdflatex(tmp_path / "before", article(), EPOCH_2001) / "doc.pdf"
    after = pdflatex(tmp_path / "after", article(**change), EPOCH_2023) / "doc.pdf"
    assert normalised_digest(before, "pdf") != normalised_digest(after, "pdf")


@needs_pdflatex
def test_pdf_above_the_size_limit_is_digested_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = pdflatex(tmp_path / "doc", article(), EPOCH_2001) / "doc.pdf"
    raw, normalised = digests(pdf)
    assert raw != normalised
    monkeypatch.setattr(normalise, "PDF_MAX_BYTES", pdf.stat().st_size - 1)
    assert normalised_digest(pdf, "pdf") == raw


def _handmade_pdf(date: bytes) -> bytes:
    """A classic PDF whose uncompressed XMP stream has an indirect /Length, as some writers make."""
    xmp = b"<x:xmpmeta><xmp:ModifyDate>" + date + b"</xmp:ModifyDate></x:xmpmeta>"
    objects = [
        b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R /Metadata 3 0 R >>\nendobj\n",
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n",
        b"3 0 obj\n<< /Type /Metadata /Subtype /XML /Length 4 0 R >>\nstream\n" + xmp + b"\nendstream\nendobj\n",
        b"4 0 obj\n%d\nendobj\n" % len(xmp),
        b"5 0 obj\n<< /CreationDate (D:" + date + b") >>\nendobj\n",
    ]
    body = b"%PDF-1.4\n"
    offsets = []
    for obj in objects:
        offsets.append(len(body))
        body += obj
    xref = b"xref\n0 6\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    file_id = date.hex().encode()
    trailer = b"trailer\n<< /Size 6 /Root 1 0 R /Info 5 0 R /ID [<%s> <%s>] >>\n" % (file_id, file_id)
    return body + xref + trailer + b"startxref\n%d\n%%%%EOF\n" % len(body)


def test_pdf_indirect_length_of_a_normalised_stream_is_dropped() -> None:
    pdf = parse_spec("pdf")
    short, long = _handmade_pdf(b"20240101Z"), _handmade_pdf(b"20240101120000+05'30'")
    assert pdf.normalise(short) == pdf.normalise(long)
    assert pdf.normalise(short) != pdf.normalise(short.replace(b"/Count 0", b"/Count 1"))


def test_pdf_normaliser_leaves_non_pdf_bytes_alone() -> None:
    text = b"startxref\n123\n/CreationDate (D:20240101)\n"
    assert parse_spec("pdf").normalise(text) == text


# --- latex aux ---------------------------------------------------------------------------------

LABELLED = r"""\documentclass{article}
\usepackage{hyperref}
\begin{document}
%s\section{Target}\label{target}
See Section~\ref{target}.
\end{document}
"""


@needs_pdflatex
def test_aux_normaliser_keeps_a_newlabel_change_visible(tmp_path: Path) -> None:
    first = pdflatex(tmp_path / "first", LABELLED % "", EPOCH_2001) / "doc.aux"
    moved = pdflatex(tmp_path / "moved", LABELLED % r"\section{Before}", EPOCH_2001) / "doc.aux"
    assert rb"\newlabel{target}{{1}" in first.read_bytes()
    assert rb"\newlabel{target}{{2}" in moved.read_bytes()
    assert normalised_digest(first, "latex-aux") != normalised_digest(moved, "latex-aux")


@needs_pdflatex
def test_aux_normaliser_drops_comments_and_minted_cache_list_only(tmp_path: Path) -> None:
    aux = (pdflatex(tmp_path / "doc", LABELLED % "", EPOCH_2001) / "doc.aux").read_bytes()
    normaliser = parse_spec("aux")
    assert normaliser.normalise(aux) == aux, "a real .aux has no volatile line: nothing may be dropped"

    lines = aux.splitlines(keepends=True)
    noisy = b"".join(
        [
            *lines[:3],
            b"% written at 12:34:56\n",
            b"\\gdef\\minted@oldcachelist{,\n",
            b"  default.pygstyle,\n",
            b"  3F2A9C1D0E5B7A6C4D8E9F0A1B2C3D4E.pygtex}\n",
            *lines[3:],
        ]
    )
    assert normaliser.normalise(noisy) == aux


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (rb"\newlabel{a}{{1}{1}}", rb"\newlabel{a}{{2}{1}}"),
        (rb"\bibcite{knuth}{1}", rb"\bibcite{knuth}{2}"),
        (rb"\@writefile{toc}{\contentsline {section}{\numberline {1}A}{1}}", rb"\@writefile{toc}{}"),
        (rb"\citation{knuth}", rb"\citation{lamport}"),
        (rb"\bibdata{refs}", rb"\bibdata{other}"),
        (rb"\bibstyle{plain}", rb"\bibstyle{alpha}"),
        (rb"\gdef \@abspage@last{3}", rb"\gdef \@abspage@last{4}"),
    ],
)
def test_aux_normaliser_never_hides_a_consequential_line(before: bytes, after: bytes) -> None:
    normaliser = parse_spec("latex-aux")
    assert normaliser.normalise(b"\\relax \n" + before + b"\n") != normaliser.normalise(b"\\relax \n" + after + b"\n")


def test_aux_protected_lines_survive_even_an_overbroad_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(normalise, "_AUX_VOLATILE", (re.compile(rb".*"),))
    aux = b"\\relax \n\\newlabel{a}{{1}{1}}\n\\citation{knuth}\n"
    assert parse_spec("latex-aux").normalise(aux) == b"\\newlabel{a}{{1}{1}}\n\\citation{knuth}\n"


# --- regex -------------------------------------------------------------------------------------


def test_regex_normaliser_drops_matching_lines_only() -> None:
    normaliser = parse_spec(r"regex:^# built \d+")
    assert normaliser.normalise(b"a\n# built 2024\nb # built 1\n") == b"a\nb # built 1\n"
    assert normaliser.normalise(b"a\r\n# built 2024\r\nb") == b"a\r\nb"
    assert normaliser.normalise(b"a\n# built 1\n") == normaliser.normalise(b"a\n# built 2\n")
    assert normaliser.normalise(b"a\n# built 1\n") != normaliser.normalise(b"A\n# built 1\n")
    assert parse_spec("regex:^Généré le").normalise("x\nGénéré le lundi\n".encode()) == b"x\n"


def test_regex_normaliser_matches_the_whole_line_with_dollar(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"header\nstamp=1\nbody\n")
    two.write_bytes(b"header\nstamp=2\nbody\n")
    assert normalised_digest(one, r"regex:^stamp=\d+$") == normalised_digest(two, r"regex:^stamp=\d+$")
    assert normalised_digest(one, "none") != normalised_digest(two, "none")


@pytest.mark.parametrize("spec", ["regex:^drop", "latex-aux"])
def test_line_normalisers_stream_big_files(tmp_path: Path, spec: str) -> None:
    big = tmp_path / "big"
    expected = hashlib.sha256()
    kept_line = b"\\newlabel{x}{" + b"k" * 1000 + b"}\n"
    dropped_line = b"drop %" + b"d" * 1000 + b"\n" if spec.startswith("regex") else b"%" + b"d" * 1000 + b"\n"
    with open(big, "wb") as out:
        for _ in range(32 * 1024):  # 64 MiB
            out.write(kept_line + dropped_line)
            expected.update(kept_line)
    tracemalloc.start()
    try:
        digest = normalised_digest(big, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == f"sha256:{expected.hexdigest()}"
    assert peak < 8 << 20, f"peak {peak} bytes: the file was not streamed"


# --- specs -------------------------------------------------------------------------------------


def test_none_is_the_raw_digest(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert normalised_digest(path, "none") == hash_bytes(data, "sha256")
    assert normalised_digest(path, "none", "blake3") == hash_bytes(data, "blake3")


def test_unknown_spec_names_it_and_the_known_ones() -> None:
    with pytest.raises(NormaliserError) as caught:
        parse_spec("docx")
    message = str(caught.value)
    assert "'docx'" in message
    for known in ("pdf", "latex-aux", "aux", "regex:<arg>", "none"):
        assert known in message


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("regex", "needs an argument"), ("regex:", "non-empty"), ("regex:(", "bad regex"), ("pdf:x", "no argument")],
)
def test_malformed_specs_are_refused(spec: str, needle: str) -> None:
    with pytest.raises(NormaliserError, match=needle):
        parse_spec(spec)


def test_unknown_algorithm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="md5"):
        normalised_digest(path, "none", "md5")
