"""Prose paragraphs of a MediaWiki XML dump (``.xml.bz2``), markup stripped with
``mwparserfromhell``: the forget and retain corpora of the real-model study.

    >>> prose_paragraphs("An '''acid''' is a [[molecule|molecule]].<ref>x</ref>", min_words=3)
    ['An acid is a molecule.']
"""

from __future__ import annotations

import bz2
import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.real_data.topics import lexicon

# Paragraphs shorter than this are captions, headings that survived, or fragments of lists.
MIN_PARAGRAPH_WORDS = 30
# Tags whose contents are not prose: references, tables, formulas, galleries, code.
_DROP_TAGS = lexicon(
    """
    ref references table gallery math chem ce imagemap timeline score pre syntaxhighlight
    source code graph templatedata
    """
)
# Link namespaces that are not text: images and categories.
_DROP_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
# Lines of wikitext that are not prose: lists, indents, definitions, table rows, headings.
_NON_PROSE_LINE = re.compile(r"^\s*[*#:;|!={}]|^\s")
# What unbalanced markup leaves after stripping: runs of apostrophes and HTML tags opened in
# one paragraph and closed in another (<blockquote>, <div>).
_RESIDUE = re.compile(r"'{2,}|</?[A-Za-z][^<>]*>")


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """One prose paragraph and the title of the article it comes from."""

    title: str
    text: str


def wikipedia_paragraphs(
    bz2_path: str | os.PathLike, min_words: int = MIN_PARAGRAPH_WORDS
) -> list[Paragraph]:
    """Prose paragraphs of every article (namespace 0, not a redirect) of a MediaWiki XML dump.

    Templates, references, tables, file and category links, headings, lists and comments are
    dropped; links keep their text; paragraphs of fewer than ``min_words`` words are dropped.

    >>> paras = wikipedia_paragraphs("enwiki-...-shortened.bz2")     # doctest: +SKIP
    >>> paras[0].title, paras[0].text[:40]                            # doctest: +SKIP
    ('Anarchism', 'Anarchism is a political philosophy that')
    """
    return [
        Paragraph(title, text)
        for title, wikitext in _wiki_pages(Path(bz2_path))
        for text in prose_paragraphs(wikitext, min_words)
    ]


def prose_paragraphs(wikitext: str, min_words: int = MIN_PARAGRAPH_WORDS) -> list[str]:
    """The prose paragraphs of one article's wikitext, as plain text.

    >>> prose_paragraphs("An '''acid''' is a [[molecule|molecule]].<ref>x</ref>", min_words=3)
    ['An acid is a molecule.']
    """
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    _prune(code)
    lines = ["" if _NON_PROSE_LINE.match(line) else line for line in str(code).split("\n")]
    blocks = (
        mwparserfromhell.parse(block).strip_code(normalize=True, collapse=True)
        for block in re.split(r"\n\s*\n", "\n".join(lines))
    )  # parsed one by one: an unclosed '' must not run into the next paragraph
    words = (_RESIDUE.sub("", block).split() for block in blocks)
    return [" ".join(w) for w in words if len(w) >= min_words]


def _prune(code) -> None:
    """Remove :func:`_is_markup_only` nodes from ``code`` (a ``Wikicode``), at every depth."""
    from mwparserfromhell.wikicode import Wikicode

    code.nodes = [node for node in code.nodes if not _is_markup_only(node)]
    for node in code.nodes:
        for name in ("contents", "text", "title"):  # a tag's body, a link's text
            child = getattr(node, name, None)
            if isinstance(child, Wikicode):
                _prune(child)


def _is_markup_only(node) -> bool:
    """Nodes that carry no prose: templates, comments, headings, non-text tags, file links."""
    from mwparserfromhell import nodes

    if isinstance(node, (nodes.Template, nodes.Comment, nodes.Heading, nodes.Argument)):
        return True
    if isinstance(node, nodes.Tag):
        return str(node.tag).strip().lower() in _DROP_TAGS
    if isinstance(node, nodes.Wikilink):
        prefix, colon, _ = str(node.title).strip().lstrip(":").partition(":")
        interlanguage = colon and node.text is None and prefix.islower()  # [[fr:Acide]]
        return bool(colon) and (prefix.strip().lower() in _DROP_LINK_NAMESPACES or interlanguage)
    return False


def _wiki_pages(path: Path) -> Iterator[tuple[str, str]]:
    """``(title, wikitext)`` of every article (namespace 0, not a redirect) in the dump."""
    if not path.is_file():
        raise UnlearnInterpError(f"{path} does not exist")
    try:
        with bz2.open(path, "rb") as handle:
            for _, element in ET.iterparse(handle, events=("end",)):
                if _local(element.tag) != "page":
                    continue
                page = _page(element, path)
                element.clear()
                if page is not None:
                    yield page
    except ET.ParseError as err:
        line = err.position[0] if err.position else "?"
        raise UnlearnInterpError(f"{path} line {line} is not valid MediaWiki XML: {err}") from err
    except (OSError, EOFError) as err:  # not bz2, or cut short
        raise UnlearnInterpError(f"{path} is not a readable bz2 file ({err})") from err


def _page(element: ET.Element, path: Path) -> tuple[str, str] | None:
    fields = {_local(child.tag): child for child in element}
    title = fields.get("title")
    if title is None or not (title.text or "").strip():
        raise UnlearnInterpError(f"{path} has a <page> without a <title>")
    if "redirect" in fields or (fields["ns"].text if "ns" in fields else "0") != "0":
        return None
    revision = fields.get("revision")
    text = None if revision is None else revision.find("{*}text")
    if text is None:
        raise UnlearnInterpError(f"{path} page {title.text!r} has no <revision><text>")
    return title.text.strip(), text.text or ""


def _local(tag: str) -> str:
    """``{namespace}page`` -> ``page``."""
    return tag.rsplit("}", 1)[-1]


__all__ = [
    "MIN_PARAGRAPH_WORDS",
    "Paragraph",
    "prose_paragraphs",
    "wikipedia_paragraphs",
]
