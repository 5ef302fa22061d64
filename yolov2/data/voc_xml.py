"""One VOC annotation XML file -> the texts we use, with a guarded streaming parser.

Why not ``defusedxml.ElementTree``: it forces the pure-Python ElementTree parser and builds a whole
tree, about half of the shard stage's time per image. Here ``pyexpat`` (the C parser underneath
ElementTree) calls back only what a VOC reader needs, and the text handler is switched on only inside
the wanted elements, so whitespace and unused tags cost no Python call.

Safety is the same as defusedxml's defaults (``forbid_entities``, ``forbid_external``): any entity
declaration (the "billion laughs") and any external entity reference (XXE) raises
:class:`XmlRefused` at the declaration, before anything is expanded; a reference to an undeclared
entity (possible after an external DTD) is refused too. A DOCTYPE without entities is allowed.

The answers follow ``ElementTree`` exactly: ``findtext(path)`` is the text (up to the first child
element) of the first element, in document order, at that path below the root (or below one
``<object>``); ``None`` when there is none, ``""`` when it has no text. Tag names in a namespace
read ``{uri}tag`` as in ElementTree, so they never match the plain VOC names.
"""

from __future__ import annotations

import pyexpat
from dataclasses import dataclass, field
from typing import NoReturn

ROOT_FIELDS = frozenset(("filename", "size/width", "size/height"))
OBJECT_FIELDS = frozenset(("name", "difficult", "iscrowd", "bndbox/xmin", "bndbox/ymin", "bndbox/xmax", "bndbox/ymax"))


class XmlRefused(Exception):
    """The XML declares entities or references external ones; its ``kind`` names which."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class VocXmlTexts:
    """The raw texts of a VOC file: ``root`` maps a ROOT_FIELDS path to its text, ``objects`` one
    such dict (OBJECT_FIELDS paths) per direct ``<object>`` child of the root, in order."""

    root_tag: str
    root: dict[str, str] = field(default_factory=dict)
    objects: list[dict[str, str]] = field(default_factory=list)


def parse_voc_texts(data: bytes) -> VocXmlTexts:
    """Parse VOC XML bytes; raises :class:`XmlRefused` or ``pyexpat.ExpatError`` (malformed XML)."""
    parser = pyexpat.ParserCreate(None, "}")  # ElementTree's settings: namespaces as {uri}tag
    walker = _Walker(parser)
    parser.buffer_text = True
    parser.ordered_attributes = True  # a list, cheaper than a dict; attributes are not used
    parser.EntityDeclHandler = _refuse_entity_declaration
    parser.UnparsedEntityDeclHandler = _refuse_entity_declaration
    parser.ExternalEntityRefHandler = _refuse_external_reference
    parser.SkippedEntityHandler = _refuse_external_reference
    parser.StartElementHandler = walker.start
    parser.EndElementHandler = walker.end
    try:
        parser.Parse(data, True)
    finally:
        del walker.parser  # break the parser <-> walker cycle
    return VocXmlTexts(
        walker.root_tag or "",
        {k: "".join(v) for k, v in walker.root.items()},
        [{k: "".join(v) for k, v in obj.items()} for obj in walker.objects],
    )


def _refuse_entity_declaration(*_args: object) -> NoReturn:
    raise XmlRefused("EntitiesForbidden")


def _refuse_external_reference(*_args: object) -> NoReturn:
    raise XmlRefused("ExternalReferenceForbidden")


def _walk_tables() -> tuple[dict[tuple[str, str], str], dict[str, tuple[bool, str]]]:
    """(state, child tag) -> state, and the wanted states -> (inside an object?, field name).

    A state is the path from the root (``""``); ``object`` is a direct child of the root. A child
    with no entry (an unused tag, a namespaced one, an ``<object>`` deeper down) starts a dead
    subtree, so the walker spends one dictionary lookup per element.
    """
    table: dict[tuple[str, str], str] = {("", "object"): "object"}
    wanted: dict[str, tuple[bool, str]] = {}
    for in_object, fields in ((False, ROOT_FIELDS), (True, OBJECT_FIELDS)):
        for name in fields:
            state = "object" if in_object else ""
            for tag in name.split("/"):
                table[(state, tag)] = child = f"{state}/{tag}" if state else tag
                state = child
            wanted[state] = (in_object, name)
    return table, wanted


_NEXT_STATE, _WANTED_STATE = _walk_tables()


class _Walker:
    """pyexpat callbacks: a stack of states (None inside an unused subtree), the texts found so far."""

    __slots__ = ("parser", "stack", "root_tag", "root", "objects", "capture")

    def __init__(self, parser: pyexpat.XMLParserType) -> None:
        self.parser = parser
        self.stack: list[str | None] = []
        self.root_tag: str | None = None
        self.root: dict[str, list[str]] = {}
        self.objects: list[dict[str, list[str]]] = []
        self.capture: list[str] | None = None  # the text being collected, if inside a wanted element

    def start(self, tag: str, _attrs: list[str]) -> None:
        if self.capture is not None:  # a child element ends its parent's text (ElementTree .text)
            self.capture = self.parser.CharacterDataHandler = None  # pyexpat flushes to the old handler first
        stack = self.stack
        if not stack:
            self.root_tag = "{" + tag if "}" in tag else tag
            stack.append("")
            return
        parent = stack[-1]
        state = None if parent is None else _NEXT_STATE.get((parent, tag))
        stack.append(state)
        if state is None:
            return
        if state == "object":
            self.objects.append({})
            return
        found = _WANTED_STATE.get(state)
        if found is not None:
            fields = self.objects[-1] if found[0] else self.root
            if found[1] not in fields:  # the first one in document order wins
                self.capture = fields[found[1]] = []
                self.parser.CharacterDataHandler = self.capture.append

    def end(self, _tag: str) -> None:
        if self.capture is not None:
            self.capture = self.parser.CharacterDataHandler = None
        self.stack.pop()
