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

ROOT_FIELDS = frozenset(("filename", "size/width", "size/height"))
OBJECT_FIELDS = frozenset(
    ("name", "difficult", "iscrowd", "bndbox/xmin", "bndbox/ymin", "bndbox/xmax", "bndbox/ymax")
)


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
        walker.parser = None  # break the parser <-> walker cycle
    return VocXmlTexts(
        walker.root_tag or "",
        {k: "".join(v) for k, v in walker.root.items()},
        [{k: "".join(v) for k, v in obj.items()} for obj in walker.objects],
    )


def _refuse_entity_declaration(*_args: object) -> None:
    raise XmlRefused("EntitiesForbidden")


def _refuse_external_reference(*_args: object) -> None:
    raise XmlRefused("ExternalReferenceForbidden")


class _Walker:
    """pyexpat callbacks: a stack of (fields dict, path below the root or the current object)."""

    __slots__ = ("parser", "stack", "root_tag", "root", "objects", "capture")

    def __init__(self, parser: pyexpat.XMLParserType) -> None:
        self.parser: pyexpat.XMLParserType | None = parser
        self.stack: list[tuple[dict[str, list[str]], str]] = []
        self.root_tag: str | None = None
        self.root: dict[str, list[str]] = {}
        self.objects: list[dict[str, list[str]]] = []
        self.capture: list[str] | None = None  # the text being collected, if inside a wanted element

    def start(self, tag: str, _attrs: list[str]) -> None:
        if self.capture is not None:  # a child element ends its parent's text (ElementTree .text)
            self._stop_capture()
        if "}" in tag:
            tag = "{" + tag
        stack = self.stack
        if not stack:
            self.root_tag = tag
            stack.append((self.root, ""))
            return
        fields, path = stack[-1]
        if len(stack) == 1 and tag == "object":
            fields = {}
            self.objects.append(fields)
            stack.append((fields, ""))
            return
        path = f"{path}/{tag}" if path else tag
        stack.append((fields, path))
        wanted = ROOT_FIELDS if fields is self.root else OBJECT_FIELDS
        if path in wanted and path not in fields:  # the first one in document order wins
            self.capture = fields[path] = []
            self.parser.CharacterDataHandler = self.capture.append

    def end(self, _tag: str) -> None:
        if self.capture is not None:
            self._stop_capture()
        self.stack.pop()

    def _stop_capture(self) -> None:
        self.capture = None
        self.parser.CharacterDataHandler = None  # pyexpat flushes buffered text to the old handler first
