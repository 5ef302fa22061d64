"""yolov2/data/voc_xml.py against defusedxml + ElementTree ``findtext`` (the reference it replaces).

Every real VOC annotation in ``../shared/data`` and a set of hand-written awkward documents
(comments and CDATA inside text, character references, namespaces, repeated or nested tags, other
encodings, a DOCTYPE without entities) must give the same texts as the reference; entity
declarations and external entities must be refused as defusedxml refuses them, without expansion.
"""

from __future__ import annotations

import pyexpat
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as safe_et
import pytest

from yolov2.data.voc_xml import OBJECT_FIELDS, ROOT_FIELDS, XmlRefused, parse_voc_texts


def reference_texts(data: bytes) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    root = safe_et.fromstring(data)
    fields = {k: root.findtext(k) for k in ROOT_FIELDS}
    objects = [{k: obj.findtext(k) for k in OBJECT_FIELDS} for obj in root.findall("object")]
    drop_missing = lambda d: {k: v for k, v in d.items() if v is not None}  # noqa: E731
    return root.tag, drop_missing(fields), [drop_missing(o) for o in objects]


def ours(data: bytes) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    texts = parse_voc_texts(data)
    return texts.root_tag, texts.root, texts.objects


def test_every_shared_voc_annotation_matches_the_reference(shared_data: Path) -> None:
    files = sorted(shared_data.glob("**/Annotations/*.xml"))
    assert len(files) > 100
    for path in files:
        data = path.read_bytes()
        assert ours(data) == reference_texts(data), path


OBJ = (
    "<object><name>dog</name><difficult>0</difficult>"
    "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>"
)
AWKWARD = {
    "plain": "<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size>"
    f"{OBJ}</annotation>",
    "comment_and_cdata_in_text": "<annotation><filename>a<!-- c -->b<![CDATA[<x>&]]>c</filename>"
    "<object><name> d<!--x-->og </name></object></annotation>",
    "character_references": "<annotation><filename>&#233;t&amp;&lt;&#x41;</filename>"
    "<object><name>dog&gt;</name><bndbox><xmin>&#49;0</xmin></bndbox></object></annotation>",
    "text_stops_at_first_child": "<annotation><filename>ab<b>inner</b>tail</filename>"
    "<object><name>x<i/>y</name></object></annotation>",
    "first_of_repeated_tags_wins": "<annotation><filename>one</filename><filename>two</filename>"
    "<size><depth>3</depth></size><size><width>7</width><width>8</width><height>9</height></size>"
    "<object><name>a</name><name>b</name><bndbox><xmin>1</xmin></bndbox>"
    "<bndbox><xmin>5</xmin><ymin>6</ymin></bndbox></object></annotation>",
    "nested_objects_are_not_objects": "<annotation><part><object><name>no</name></object></part>"
    "<object><name>yes</name><object><name>inner</name></object></object></annotation>",
    "empty_and_self_closing": "<annotation><filename/><size><width></width></size><object><name/>"
    "<difficult /></object><object/></annotation>",
    "namespaces": '<annotation xmlns:v="urn:v"><v:filename>ns</v:filename><filename>plain</filename>'
    '<object xmlns="urn:d"><name>default-ns</name></object></annotation>',
    "default_namespace_root": '<annotation xmlns="urn:voc"><filename>a</filename></annotation>',
    "doctype_without_entities": '<?xml version="1.0"?><!DOCTYPE annotation SYSTEM "voc.dtd">'
    "<annotation><filename>d</filename></annotation>",
    "processing_instruction": "<?xml version='1.0'?><?pi x?><annotation><filename>p<?pi y?>q</filename></annotation>",
    "wrong_root": "<html><filename>a</filename></html>",
    "whitespace_and_crlf": "<annotation>\r\n\t<filename>\r\n a.jpg \r\n</filename>\r\n</annotation>",
}


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_documents_match_the_reference(name: str) -> None:
    data = AWKWARD[name].encode()
    assert ours(data) == reference_texts(data)


@pytest.mark.parametrize("encoding", ["utf-16", "iso-8859-1", "utf-8-sig"])
def test_declared_encodings_match_the_reference(encoding: str) -> None:
    label = encoding if encoding != "utf-8-sig" else "utf-8"
    text = f'<?xml version="1.0" encoding="{label}"?><annotation><filename>été.jpg</filename>{OBJ}</annotation>'
    data = text.encode(encoding)
    assert ours(data) == reference_texts(data)
    assert ours(data)[1]["filename"] == "été.jpg"


LAUGHS = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
HOSTILE = {
    "billion_laughs": f'<!DOCTYPE annotation [<!ENTITY l0 "lol">{LAUGHS}]>'
    "<annotation><filename>&l9;</filename></annotation>",
    "internal_entity_unused": '<!DOCTYPE annotation [<!ENTITY e "x">]><annotation><filename>a</filename></annotation>',
    "external_entity": '<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><annotation><filename>&xxe;</filename></annotation>',
    "parameter_entity": '<!DOCTYPE annotation [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><annotation/>',
    "unparsed_entity": '<!DOCTYPE annotation [<!NOTATION n SYSTEM "x"><!ENTITY u SYSTEM "y" NDATA n>]><annotation/>',
}


@pytest.mark.security
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_entities_are_refused_like_defusedxml(name: str) -> None:
    data = HOSTILE[name].encode()
    with pytest.raises(defusedxml.DefusedXmlException):  # the reference refuses it too
        safe_et.fromstring(data)
    start = time.perf_counter()
    with pytest.raises(XmlRefused):
        parse_voc_texts(data)
    assert time.perf_counter() - start < 1  # refused at the declaration, nothing expanded


@pytest.mark.parametrize(
    "text", ["<annotation><filename>a</annotation>", "<annotation>", "", "<a>&undefined;</a>", "<a/><b/>"]
)
def test_malformed_xml_is_an_expat_error_where_elementtree_fails(text: str) -> None:
    with pytest.raises(ET.ParseError):
        safe_et.fromstring(text.encode())
    with pytest.raises(pyexpat.ExpatError):
        parse_voc_texts(text.encode())
