"""The bad-input corpus: small VOC, COCO and YOLO dataset folders, each case with its exact expected outcome.

Generated, not committed: every file is made here from the real images in ``../shared/data``
(voc100, raccoon, coco_tiny) or from the synthetic generator, so the repository holds no binaries
and a reader can see exactly how each bad input was made.

Layout of ``out_dir`` (``build_corpus`` returns the cases, ``CorpusLayout`` the folders):

- ``voc/``: one VOC root; case ``c`` is image id ``c`` (``JPEGImages/c.<ext>``, ``Annotations/c.xml``)
  listed alone in ``ImageSets/Main/c.txt``, so ``data.splits={c: [c]}`` makes each case its own split;
- ``coco/``: case ``c`` is ``annotations/instances_c.json`` with its images in ``c/``;
- ``yolo/``: case ``c`` is ``images/c/`` + ``labels/c/``, class names in ``classes.txt``;
- ``outside/``: files outside every dataset root, the targets of the "symlink out of the root" cases.

Expected outcomes (:class:`Case`), as the shard stage must report them:

- ``kept``: the record is in the index with exactly ``boxes`` / ``labels`` (0-based continuous xyxy
  pixels, worked out here by the plain VOC / COCO / YOLO rules) and the shard holds the file's bytes;
- ``converted``: kept, but not a JPEG: the shard holds a re-encoded JPEG of the same size;
- ``clipped``: kept, ``clipped`` boxes were clipped to the image;
- ``rejected``: ``rejects`` rejects at ``level`` ("image": the image is skipped; "box": the image is kept
  with ``boxes`` and only the bad box is dropped), each reason containing ``reason``;
- ``error``: a whole file is unusable (no image list at all): the stage fails with a
  :class:`~yolov2.errors.DatasetError` containing ``reason``, strict or not, and writes no manifest.

``strict_error``: with ``data.strict=true`` the stage must fail with a DatasetError whose message
contains this (the name of the bad file); None where strict mode accepts the case (kept, converted,
clipped: clipping is not an error). Strict mode stops exactly on the cases the non-strict run rejects.

``sizes_from_image`` / ``trailing_data``: the repairs the shard stage must count in its manifest for
the case's split (an annotation without a usable size; a JPEG with bytes after its end marker).

Special files (:mod:`corpus.special`: FIFOs, sockets, links to ``/dev/null`` and ``/dev/zero``,
folders) stand where an annotation, image, label or image list is expected; each must be rejected by
its type, unopened. VOC image ids may hold spaces and tabs (``ImageSets/Main/<split>.txt`` has one id
per line); a split named ``<class>_<name>`` is a per-class file (id, then a flag -1, 0 or 1).

EXIF convention: the project ignores EXIF orientation (``yolov2/data/images.py``). Sizes and boxes
refer to the pixels as stored; an annotation made on the rotated view disagrees with the stored size
of a non-square image and is rejected, which is the visible signal (case ``voc_exif_rotated_view``).

Run as a script to write the corpus somewhere and print its cases: ``python tests/corpus/generate.py OUT``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image

if not __package__:  # run as a script: the tests folder holds the corpus package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus.special import SPECIAL_KINDS, make_special  # noqa: E402

Layout = Literal["voc", "coco", "yolo"]
Outcome = Literal["kept", "converted", "clipped", "rejected", "error"]
Box = tuple[float, float, float, float]

# Class names of the VOC and YOLO corpus folders (COCO folders carry them as categories 1..4).
CLASS_NAMES: tuple[str, ...] = ("person", "dog", "cat", "raccoon")
BOMB_SIDE = 20_000  # 20000 x 20000 = 400 M pixels: above PIL's hard limit (2 x 89.5 M)
MANY_BOXES = 10_000
OUTSIDE_MESSAGE = "points outside the dataset root"
# The input defect classes of issue 15, each with several cases (Case.group).
INPUT_DEFECTS = (
    "special file",
    "image id",
    "id listed twice",
    "JPEG structure",
    "size from the image",
    "size disagreement",
)


@dataclass(frozen=True)
class Case:
    """One bad (or control) input and what the pipeline must do with it. See the module docstring."""

    name: str
    layout: Layout
    what: str
    outcome: Outcome
    level: Literal["image", "box"] | None = None
    reason: str = ""
    rejects: int = 0
    images_in: int = 1  # images this case adds to its split (what "records in" counts)
    image_id: str | None = None  # record id of the kept image
    size: tuple[int, int] | None = None  # kept record's width, height
    boxes: tuple[Box, ...] = ()
    labels: tuple[int, ...] = ()
    clipped: int = 0
    strict_error: str | None = None
    sizes_from_image: int = 0  # kept images whose size the stage took from the image header (no <size>)
    trailing_data: int = 0  # kept JPEGs with bytes after their end marker (motion photos)
    group: str = ""  # the input defect class it belongs to (INPUT_DEFECTS), if any

    @property
    def split(self) -> str:
        """Both our split name and the dataset's split spec: every case is a split of its own."""
        return self.name


@dataclass(frozen=True)
class CorpusLayout:
    """The dataset roots of a built corpus."""

    out_dir: Path
    voc: Path
    coco: Path
    yolo: Path
    outside: Path

    def root(self, layout: Layout) -> Path:
        return {"voc": self.voc, "coco": self.coco, "yolo": self.yolo}[layout]


# ---------------------------------------------------------------------------------------------
# Image bytes


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def base_image(shared_data: Path, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A real VOC photo (voc100 2007_000027, a person), downscaled so the corpus stays small."""
    with Image.open(shared_data / "voc100" / "JPEGImages" / "2007_000027.jpg") as im:
        return im.convert("RGB").resize(size, Image.BILINEAR)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A ~100-byte PNG whose IHDR claims side x side RGB pixels (IDAT holds one compressed row)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * 16))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_jpeg(jpeg: bytes, side: int = BOMB_SIDE) -> bytes:
    """A small baseline JPEG with its SOF0 frame header patched to claim side x side pixels."""
    at = jpeg.find(b"\xff\xc0")
    if at < 0:
        raise ValueError("not a baseline JPEG: no SOF0 marker")
    # SOF0: FF C0, length (2), precision (1), height (2), width (2), ...
    return jpeg[: at + 5] + struct.pack(">HH", side, side) + jpeg[at + 9 :]


def png16_rgb(im: Image.Image) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one; OpenCV can)."""
    rgb16 = np.asarray(im, np.uint16) * 257
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb16[:, :, ::-1]))
    assert ok
    return data.tobytes()


def exif_rotated_jpeg(im: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=90, exif=exif.tobytes())


def rgba(im: Image.Image) -> Image.Image:
    alpha = Image.linear_gradient("L").resize(im.size)
    out = im.convert("RGBA")
    out.putalpha(alpha)
    return out


JPEG_EOI = b"\xff\xd9"
# What a phone appends to a "motion photo": an MP4 (here its ftyp box and stand-in bytes, ending without FF D9).
MOTION_VIDEO = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8 + b"moov"


def jpeg_scan_offsets(jpeg: bytes) -> tuple[int, int]:
    """(offset of the first SOS marker FF DA, offset just after its segment), by walking the segment lengths."""
    pos = 2
    while jpeg[pos + 1] != 0xDA:
        pos += 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
    return pos, pos + 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]


def jpeg_without_scan(jpeg: bytes) -> bytes:
    """The header (up to the first SOS) followed straight by the end-of-image marker: no image data."""
    return jpeg[: jpeg_scan_offsets(jpeg)[0]] + JPEG_EOI


def jpeg_scan_without_data(jpeg: bytes) -> bytes:
    """The header and a complete SOS segment, then the end-of-image marker: a scan with no data."""
    return jpeg[: jpeg_scan_offsets(jpeg)[1]] + JPEG_EOI


def jpeg_cut_in_sos(jpeg: bytes) -> bytes:
    """Cut inside the SOS segment (its length field claims more than there is)."""
    return jpeg[: jpeg_scan_offsets(jpeg)[0] + 6]


def jpeg_cut_after_sos(jpeg: bytes) -> bytes:
    """A complete SOS segment and the first 16 bytes of scan data, then nothing (no end-of-image marker)."""
    return jpeg[: jpeg_scan_offsets(jpeg)[1] + 16]


# ---------------------------------------------------------------------------------------------
# Annotation text


def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple[str, tuple]]) -> str:
    """VOC XML with objects ``(name, (xmin, ymin, xmax, ymax))``; coordinates written as given (str())."""
    parts = ["<annotation>", "  <folder>JPEGImages</folder>", f"  <filename>{filename}</filename>"]
    if size is not None:
        parts += [
            "  <size>",
            f"    <width>{size[0]}</width>",
            f"    <height>{size[1]}</height>",
            "    <depth>3</depth>",
            "  </size>",
        ]
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts += [
            "  <object>",
            f"    <name>{name}</name>",
            "    <difficult>0</difficult>",
            "    <bndbox>",
            f"      <xmin>{xmin}</xmin>",
            f"      <ymin>{ymin}</ymin>",
            f"      <xmax>{xmax}</xmax>",
            f"      <ymax>{ymax}</ymax>",
            "    </bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def voc_box(xmin: float, ymin: float, xmax: float, ymax: float, width: int, height: int) -> tuple[Box, bool]:
    """VOC 1-based inclusive -> 0-based continuous xyxy, clipped to the image; (box, was clipped)."""
    raw = (xmin - 1.0, ymin - 1.0, float(xmax), float(ymax))
    return clip_box(raw, width, height)


def clip_box(raw: Box, width: int, height: int) -> tuple[Box, bool]:
    x1, y1, x2, y2 = raw
    out = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
    return out, any(abs(a - b) > 1e-6 for a, b in zip(out, raw))


def coco_json(images: list, annotations: list, categories: list) -> str:
    return json.dumps({"images": images, "annotations": annotations, "categories": categories})


def write_bytes(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------
# The corpus


class _Builder:
    """Writes the files of each case and collects the cases."""

    def __init__(self, out_dir: Path, shared_data: Path) -> None:
        self.out = Path(out_dir)
        self.shared = Path(shared_data)
        self.voc = self.out / "voc"
        self.coco = self.out / "coco"
        self.yolo = self.out / "yolo"
        self.outside = self.out / "outside"
        self.cases: list[Case] = []
        self.group = ""  # stamped on the cases added (see grouped)
        self.base = base_image(self.shared)
        self.base_jpeg = encode(self.base, "JPEG", quality=90)
        # Every COCO case shares coco_tiny's 80 categories (ids 1..90), so labels agree across splits.
        tiny = json.loads((self.shared / "coco_tiny" / "annotations" / "instances_val2017.json").read_text())
        self.coco_tiny = tiny
        self.coco_categories = sorted(tiny["categories"], key=lambda c: c["id"])
        self.w, self.h = self.base.size
        for d in (
            self.voc / "JPEGImages",
            self.voc / "Annotations",
            self.voc / "ImageSets" / "Main",
            self.coco / "annotations",
            self.yolo / "images",
            self.yolo / "labels",
            self.outside,
        ):
            d.mkdir(parents=True, exist_ok=True)
        write_bytes(self.yolo / "classes.txt", "".join(f"{n}\n" for n in CLASS_NAMES))
        # Valid files outside every root: what the symlink cases point at.
        write_bytes(self.outside / "photo.jpg", self.base_jpeg)
        outside_xml = voc_xml("photo.jpg", (self.w, self.h), [("person", (10, 10, 40, 50))])
        write_bytes(self.outside / "annotation.xml", outside_xml)
        write_bytes(self.outside / "label.txt", "0 0.5 0.5 0.25 0.25\n")
        write_bytes(self.outside / "instances.json", coco_json([], [], self.coco_categories))

    @contextlib.contextmanager
    def grouped(self, group: str) -> Iterator[None]:
        """The cases added inside belong to ``group`` (one of INPUT_DEFECTS)."""
        self.group = group
        try:
            yield
        finally:
            self.group = ""

    def add(self, case: Case) -> None:
        case = replace(case, group=case.group or self.group)
        if any(c.name == case.name for c in self.cases):
            raise ValueError(f"duplicate case name {case.name}")
        if case.group not in ("", *INPUT_DEFECTS):
            raise ValueError(f"case {case.name}: unknown group {case.group!r}")
        self.cases.append(case)

    # --- VOC -------------------------------------------------------------------------------

    def voc_case(
        self,
        name: str,
        what: str,
        image: bytes | None,
        xml: str | None,
        outcome: Outcome,
        *,
        ext: str = ".jpg",
        objects: list[tuple[str, tuple]] | None = None,
        size: tuple[int, int] | None = None,
        stem: str | None = None,
        imageset: str | None = None,
        **expected,
    ) -> None:
        """One VOC image: writes JPEGImages/<stem><ext>, Annotations/<stem>.xml, ImageSets/Main/<name>.txt.

        ``stem``: the image id (default ``name``); ``imageset``: the split file's text (default the id and a
        newline). ``xml`` None: written from ``objects`` and ``size`` (default the base image size). Kept
        cases get their expected boxes from ``objects`` by the plain VOC rule unless given.
        """
        size = size or (self.w, self.h)
        stem = stem or name
        objects = objects if objects is not None else [("person", (11, 6, 60, 55))]
        if image is not None:
            write_bytes(self.voc / "JPEGImages" / f"{stem}{ext}", image)
        if xml is None:
            xml = voc_xml(f"{stem}{ext}", size, objects)
        write_bytes(self.voc / "Annotations" / f"{stem}.xml", xml)
        write_bytes(self.voc / "ImageSets" / "Main" / f"{name}.txt", f"{stem}\n" if imageset is None else imageset)
        if outcome in ("kept", "converted", "clipped") or expected.get("level") == "box" or expected.get("image_id"):
            expected.setdefault("image_id", stem)
            expected.setdefault("size", size)
            if "boxes" not in expected:
                boxes, labels, clipped = [], [], 0
                for obj_name, (xmin, ymin, xmax, ymax) in objects:
                    box, was = voc_box(float(xmin), float(ymin), float(xmax), float(ymax), *size)
                    boxes.append(box)
                    labels.append(CLASS_NAMES.index(obj_name))
                    clipped += int(was)
                expected.update(boxes=tuple(boxes), labels=tuple(labels), clipped=clipped)
        self.add(Case(name, "voc", what, outcome, **expected))

    def build_voc(self) -> None:
        w, h = self.w, self.h
        jpg = self.base_jpeg
        one = [("person", (11, 6, 60, 55))]
        image_file = lambda n, e=".jpg": f"{n}{e}"  # noqa: E731 - the strict error names the file

        self.voc_case(
            "voc_control",
            "a good JPEG with two good boxes (control)",
            jpg,
            None,
            "kept",
            objects=[("person", (11, 6, 60, 55)), ("dog", (1, 1, w, h))],
        )
        self.voc_case(
            "voc_truncated_jpeg",
            "JPEG cut in half",
            jpg[: len(jpg) // 2],
            None,
            "rejected",
            level="image",
            reason="truncated JPEG",
            rejects=1,
            strict_error=image_file("voc_truncated_jpeg"),
        )
        self.voc_case(
            "voc_zero_byte",
            "zero-byte image file",
            b"",
            None,
            "rejected",
            level="image",
            reason="empty (zero bytes)",
            rejects=1,
            strict_error=image_file("voc_zero_byte"),
        )
        for fmt, data in (
            ("PNG", encode(self.base, "PNG")),
            ("BMP", encode(self.base, "BMP")),
            ("WEBP", encode(self.base, "WEBP", quality=90)),
        ):
            name = f"voc_{fmt.lower()}_named_jpg"
            self.voc_case(
                name,
                f"{fmt} content in a .jpg file",
                data,
                None,
                "rejected",
                level="image",
                reason=f"content is {fmt} but the file {name}.jpg is named .jpg",
                rejects=1,
                strict_error=image_file(name),
            )
        self.voc_case(
            "voc_png16_named_jpg",
            "16-bit RGB PNG in a .jpg file",
            png16_rgb(self.base),
            None,
            "rejected",
            level="image",
            reason="content is PNG",
            rejects=1,
            strict_error=image_file("voc_png16_named_jpg"),
        )
        self.voc_case("voc_png16", "16-bit RGB PNG named .png", png16_rgb(self.base), None, "converted", ext=".png")
        self.voc_case("voc_png", "8-bit RGB PNG named .png", encode(self.base, "PNG"), None, "converted", ext=".png")
        self.voc_case("voc_bmp", "BMP named .bmp", encode(self.base, "BMP"), None, "converted", ext=".bmp")
        webp = encode(self.base, "WEBP", quality=90)
        self.voc_case("voc_webp", "WebP named .webp", webp, None, "converted", ext=".webp")
        self.voc_case("voc_cmyk_jpeg", "CMYK JPEG", encode(self.base.convert("CMYK"), "JPEG", quality=90), None, "kept")
        gray = (self.shared / "raccoon" / "JPEGImages" / "raccoon-150.jpg").read_bytes()  # a real grayscale JPEG
        self.voc_case(
            "voc_grayscale_jpeg",
            "real grayscale (mode L) JPEG from raccoon",
            gray,
            None,
            "kept",
            size=(275, 183),
            objects=[("raccoon", (1, 1, 200, 150))],
        )
        rgba_png = encode(rgba(self.base), "PNG")
        self.voc_case(
            "voc_rgba_png",
            "RGBA PNG named .png (alpha dropped, not composited)",
            rgba_png,
            None,
            "converted",
            ext=".png",
        )
        self.voc_case(
            "voc_rgba_png_named_jpg",
            "RGBA PNG in a .jpg file",
            encode(rgba(self.base), "PNG"),
            None,
            "rejected",
            level="image",
            reason="content is PNG",
            rejects=1,
            strict_error=image_file("voc_rgba_png_named_jpg"),
        )
        palette = self.base.convert("P", palette=Image.ADAPTIVE, colors=64)
        self.voc_case(
            "voc_palette_png", "palette (mode P) PNG named .png", encode(palette, "PNG"), None, "converted", ext=".png"
        )
        self.voc_case(
            "voc_palette_png_named_jpg",
            "palette PNG in a .jpg file",
            encode(palette, "PNG"),
            None,
            "rejected",
            level="image",
            reason="content is PNG",
            rejects=1,
            strict_error=image_file("voc_palette_png_named_jpg"),
        )
        # EXIF orientation 6 (rotate 90 degrees clockwise to view): ignored, the box follows the stored pixels.
        self.voc_case(
            "voc_exif_rotated",
            "JPEG with EXIF orientation 6, annotated on the stored pixels",
            exif_rotated_jpeg(self.base),
            None,
            "kept",
            objects=[("person", (5, 10, 30, 55))],
        )
        self.voc_case(
            "voc_exif_rotated_view",
            "JPEG with EXIF orientation 6, annotated on the rotated view (H x W)",
            exif_rotated_jpeg(self.base),
            None,
            "rejected",
            size=(h, w),
            level="image",
            reason=f"gives the size {h}x{w} but the image voc_exif_rotated_view.jpg is {w}x{h}",
            rejects=1,
            strict_error="voc_exif_rotated_view.jpg",
            group="size disagreement",
        )
        one_px = encode(Image.new("RGB", (1, 1), (200, 30, 30)), "JPEG")
        self.voc_case(
            "voc_1x1",
            "1x1 JPEG with a one-pixel box",
            one_px,
            None,
            "kept",
            size=(1, 1),
            objects=[("person", (1, 1, 1, 1))],
        )
        self.voc_case(
            "voc_bomb_png",
            f"~100-byte PNG whose header claims {BOMB_SIDE}x{BOMB_SIDE}",
            bomb_png(),
            None,
            "rejected",
            ext=".png",
            size=(BOMB_SIDE, BOMB_SIDE),
            level="image",
            reason="too large",
            rejects=1,
            strict_error="voc_bomb_png.png",
        )
        self.voc_case(
            "voc_bomb_jpeg",
            f"small JPEG whose SOF0 header claims {BOMB_SIDE}x{BOMB_SIDE}",
            bomb_jpeg(jpg),
            None,
            "rejected",
            size=(BOMB_SIDE, BOMB_SIDE),
            level="image",
            reason="too large",
            rejects=1,
            strict_error="voc_bomb_jpeg.jpg",
        )
        good_xml = voc_xml("voc_malformed_xml.jpg", (w, h), one)
        self.voc_case(
            "voc_malformed_xml",
            "XML with a mismatched closing tag",
            jpg,
            good_xml.replace("</filename>", "</filenam>"),
            "rejected",
            level="image",
            reason="malformed XML",
            rejects=1,
            strict_error="voc_malformed_xml.xml",
        )
        truncated = voc_xml("voc_truncated_xml.jpg", (w, h), one)
        self.voc_case(
            "voc_truncated_xml",
            "XML cut in the middle",
            jpg,
            truncated[: len(truncated) // 2],
            "rejected",
            level="image",
            reason="malformed XML",
            rejects=1,
            strict_error="voc_truncated_xml.xml",
        )
        laughs = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
        bomb_xml = (
            '<?xml version="1.0"?>\n<!DOCTYPE annotation [\n'
            + "\n".join(laughs)
            + "\n]>\n"
            + voc_xml("voc_billion_laughs.jpg", (w, h), one).replace("<folder>JPEGImages", "<folder>&lol9;")
        )
        self.voc_case(
            "voc_billion_laughs",
            "XML with nested entities (billion laughs: 10^9 'lol's)",
            jpg,
            bomb_xml,
            "rejected",
            level="image",
            reason="declares entities",
            rejects=1,
            strict_error="voc_billion_laughs.xml",
        )
        xxe = '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n' + voc_xml(
            "voc_xxe.jpg", (w, h), [("&xxe;", (11, 6, 60, 55))]
        )
        self.voc_case(
            "voc_xxe",
            "XML with an external entity reading /etc/passwd",
            jpg,
            xxe,
            "rejected",
            level="image",
            reason="declares entities",
            rejects=1,
            strict_error="voc_xxe.xml",
        )
        self.voc_case(
            "voc_missing_size",
            "XML without <size>: the size comes from the image header",
            jpg,
            voc_xml("voc_missing_size.jpg", None, one),
            "kept",
            sizes_from_image=1,
            group="size from the image",
        )
        self.voc_case(
            "voc_size_mismatch",
            "XML <size> 100x100 for an 80x60 image",
            jpg,
            None,
            "rejected",
            size=(100, 100),
            level="image",
            reason="voc_size_mismatch.xml gives the size 100x100 but the image",
            rejects=1,
            strict_error="voc_size_mismatch.jpg is 80x60",
            group="size disagreement",
        )
        self.voc_case(
            "voc_negative_box",
            "box with negative xmin/ymin (partly outside)",
            jpg,
            None,
            "clipped",
            objects=[("person", (-5, -3, 30, 40))],
        )
        self.voc_case(
            "voc_partly_outside_box",
            "box overhanging the right and bottom edges",
            jpg,
            None,
            "clipped",
            objects=[("person", (50, 40, w + 20, h + 9)), ("dog", (2, 2, 20, 20))],
        )
        bad_box_cases = [
            ("voc_nan_box", "box with a NaN coordinate", ("nan", 6, 60, 55), "non-finite coordinate"),
            ("voc_inverted_box", "box with xmax < xmin", (60, 6, 11, 55), "inverted box"),
            (
                "voc_zero_area_box",
                "box with xmax = xmin - 1 (zero width in 0-based continuous pixels)",
                (30, 6, 29, 55),
                "zero-area box",
            ),
            (
                "voc_out_of_image_box",
                "box entirely right of the image",
                (w + 10, 6, w + 40, 55),
                "box entirely outside the image",
            ),
        ]
        good = ("dog", (2, 2, 20, 20))
        good_box, _ = voc_box(2, 2, 20, 20, w, h)
        for name, what, coords, reason in bad_box_cases:
            self.voc_case(
                name,
                what,
                jpg,
                voc_xml(f"{name}.jpg", (w, h), [("person", coords), good]),
                "rejected",
                level="box",
                reason=reason,
                rejects=1,
                boxes=(good_box,),
                labels=(1,),
                clipped=0,
                strict_error=f"{name}.xml",
            )
        self.voc_case(
            "voc_unknown_class",
            "object of a class not in the class names",
            jpg,
            voc_xml("voc_unknown_class.jpg", (w, h), [("unicorn", (11, 6, 60, 55)), good]),
            "rejected",
            level="box",
            reason="unknown class name 'unicorn'",
            rejects=1,
            boxes=(good_box,),
            labels=(1,),
            clipped=0,
            strict_error="voc_unknown_class.xml",
        )
        self.build_voc_many_boxes()
        for group, build in (
            ("special file", self.build_voc_special_files),
            ("image id", self.build_voc_image_ids),
            ("id listed twice", self.build_voc_duplicate_ids),
            ("JPEG structure", self.build_voc_jpeg_structure),
            ("size from the image", self.build_voc_missing_sizes),
            ("size disagreement", self.build_voc_size_mismatches),
        ):
            with self.grouped(group):
                build()
        self.voc_case("voc_non_ascii_é_画像", "non-ASCII (valid UTF-8) image id and file name", jpg, None, "kept")
        write_bytes(self.outside / "voc_image_symlink_outside.jpg", jpg)
        self.voc_case(
            "voc_image_symlink_outside",
            "JPEGImages/<id>.jpg is a symlink to a JPEG outside the root",
            None,
            None,
            "rejected",
            level="image",
            reason=OUTSIDE_MESSAGE,
            rejects=1,
            strict_error="voc_image_symlink_outside.jpg",
        )
        os.symlink(
            self.outside / "voc_image_symlink_outside.jpg", self.voc / "JPEGImages" / "voc_image_symlink_outside.jpg"
        )
        self.voc_case(
            "voc_annotation_symlink_outside",
            "Annotations/<id>.xml is a symlink to an XML outside the root",
            jpg,
            "",
            "rejected",
            level="image",
            reason=OUTSIDE_MESSAGE,
            rejects=1,
            strict_error="voc_annotation_symlink_outside.xml",
        )
        xml_link = self.voc / "Annotations" / "voc_annotation_symlink_outside.xml"
        xml_link.unlink()
        os.symlink(self.outside / "annotation.xml", xml_link)
        self.voc_case(
            "voc_symlink_inside", "image symlink to another image inside the root (allowed)", None, None, "kept"
        )
        os.symlink("voc_control.jpg", self.voc / "JPEGImages" / "voc_symlink_inside.jpg")  # relative, stays inside
        self.voc_case(
            "voc_missing_image",
            "XML without its image file",
            None,
            None,
            "rejected",
            level="image",
            reason="image file is missing",
            rejects=1,
            strict_error="voc_missing_image",
        )

    def build_voc_special_files(self) -> None:
        """A FIFO, socket, device link or folder where the XML, the image or the image list should be."""
        jpg = self.base_jpeg
        for kind in ("fifo", "socket", "dev_null", "directory"):
            name = f"voc_{kind}_annotation"
            self.voc_case(
                name,
                f"Annotations/<id>.xml is {SPECIAL_KINDS[kind]}",
                jpg,
                "",
                "rejected",
                level="image",
                reason=SPECIAL_KINDS[kind],
                rejects=1,
                strict_error=f"{name}.xml",
            )
            make_special(self.voc / "Annotations" / f"{name}.xml", kind)
        for kind in ("fifo", "socket", "dev_zero", "directory"):
            name = f"voc_{kind}_image"
            self.voc_case(
                name,
                f"JPEGImages/<id>.jpg is {SPECIAL_KINDS[kind]}",
                None,
                None,
                "rejected",
                level="image",
                reason=SPECIAL_KINDS[kind],
                rejects=1,
                strict_error=f"{name}.jpg",
            )
            make_special(self.voc / "JPEGImages" / f"{name}.jpg", kind)
        name = "voc_fifo_image_no_size"  # the size would come from the image header: the FIFO must not be read
        self.voc_case(
            name,
            "JPEGImages/<id>.jpg is a FIFO and the XML has no <size>",
            None,
            voc_xml(f"{name}.jpg", None, [("person", (11, 6, 60, 55))]),
            "rejected",
            level="image",
            reason=SPECIAL_KINDS["fifo"],
            rejects=1,
            strict_error=f"{name}.jpg",
        )
        make_special(self.voc / "JPEGImages" / f"{name}.jpg", "fifo")
        name = "voc_fifo_split_file"
        self.voc_case(
            name,
            "ImageSets/Main/<split>.txt is a FIFO",
            jpg,
            None,
            "error",
            reason=SPECIAL_KINDS["fifo"],
            images_in=0,
            strict_error=f"{name}.txt",
        )
        make_special(self.voc / "ImageSets" / "Main" / f"{name}.txt", "fifo")

    def build_voc_image_ids(self) -> None:
        """Ids with spaces and tabs (the whole line is the id) and per-class flag files.

        A decoy ``<first word>.jpg`` (another size, another box) stands next to the ids with spaces: an id
        cut at its first space would silently become the decoy.
        """
        jpg = self.base_jpeg
        one = [("person", (11, 6, 60, 55))]

        def decoy(stem: str) -> None:
            small = encode(self.base.resize((40, 30)), "JPEG", quality=90)
            write_bytes(self.voc / "JPEGImages" / f"{stem}.jpg", small)
            small_xml = voc_xml(f"{stem}.jpg", (40, 30), [("dog", (2, 2, 9, 9))])
            write_bytes(self.voc / "Annotations" / f"{stem}.xml", small_xml)

        for name, stem, what in [
            ("voc_id_space", "voc_id_space 01", "image id with a space, next to a decoy <first word>.jpg"),
            ("voc_id_spaces", "voc_id_spaces a  b   c", "image id with runs of several spaces"),
            ("voc_id_tab", "voc_id_tab\t01", "image id with a tab, next to a decoy <first word>.jpg"),
        ]:
            decoy(stem.split()[0])
            self.voc_case(name, what, jpg, None, "kept", stem=stem, objects=one)
        self.voc_case(
            "voc_id_padded_line",
            "split file line with spaces, a tab and CR around the id",
            jpg,
            None,
            "kept",
            imageset="  voc_id_padded_line \t\r\n\n",
        )
        self.voc_case(
            "voc_id_space_no_files",
            "listed id 'voc_id_space_no_files 01'; only the first word has files",
            jpg,
            None,
            "rejected",
            imageset="voc_id_space_no_files 01\n",
            level="image",
            reason="annotation file is missing",
            rejects=1,
            strict_error="voc_id_space_no_files 01.xml",
        )
        # Per-class files: the split name is <class>_<name>; every listed image is read, whatever its flag.
        self.voc_case(
            "person_voc_flag",
            "per-class file: an id with a space, two spaces, flag 1 (the devkit's layout)",
            jpg,
            None,
            "kept",
            stem="person_voc_flag 01",
            imageset="person_voc_flag 01  1\n",
        )
        self.voc_case(
            "person_voc_flag_tab",
            "per-class file: id, tab, flag -1",
            jpg,
            None,
            "kept",
            imageset="person_voc_flag_tab\t-1\n",
        )
        self.voc_case(
            "dog_voc_flags_mixed",
            "per-class file: a good line (flag 0) and a line whose flag is 'yes'",
            jpg,
            None,
            "rejected",
            imageset="dog_voc_flags_mixed 0\ndog_voc_flags_mixed yes\n",
            level="image",
            reason="line 2 'dog_voc_flags_mixed yes' is not '<image id> <flag>'",
            rejects=1,
            images_in=2,
            image_id="dog_voc_flags_mixed",
            strict_error="dog_voc_flags_mixed.txt:2",
        )
        self.voc_case(
            "cat_voc_bad_flag",
            "per-class file: flag 2",
            jpg,
            None,
            "rejected",
            imageset="cat_voc_bad_flag  2\n",
            level="image",
            reason="is not '<image id> <flag>'",
            rejects=1,
            strict_error="cat_voc_bad_flag.txt:1",
        )
        self.voc_case(
            "raccoon_voc_no_flag",
            "per-class file: an id without a flag",
            jpg,
            None,
            "rejected",
            imageset="raccoon_voc_no_flag\n",
            level="image",
            reason="is not '<image id> <flag>'",
            rejects=1,
            strict_error="raccoon_voc_no_flag.txt:1",
        )

    def build_voc_duplicate_ids(self) -> None:
        """An id listed twice in a split: rejected once, and strict mode stops on it like on any reject."""
        jpg = self.base_jpeg
        for name, imageset, what in [
            ("voc_duplicate_id", "voc_duplicate_id\nvoc_duplicate_id\n", "an id listed twice"),
            (
                "voc_duplicate_id_spacing",
                "voc_duplicate_id_spacing\n  voc_duplicate_id_spacing \t\r\n",
                "an id listed twice, once with spaces around it",
            ),
        ]:
            self.voc_case(
                name,
                what,
                jpg,
                None,
                "rejected",
                imageset=imageset,
                level="image",
                reason="appears twice",
                rejects=1,
                images_in=2,
                image_id=name,
                strict_error=f"{name}.txt",
            )

    def build_voc_jpeg_structure(self) -> None:
        """JPEGs without image data (rejected) and JPEGs with bytes after their end marker (kept, counted)."""
        jpg = self.base_jpeg
        for name, data, reason, what in [
            ("voc_jpeg_no_scan", jpeg_without_scan(jpg), "no image data", "JPEG header straight followed by FF D9"),
            (
                "voc_jpeg_scan_without_data",
                jpeg_scan_without_data(jpg),
                "no image data",
                "JPEG with a complete SOS segment followed straight by FF D9",
            ),
            ("voc_jpeg_cut_in_sos", jpeg_cut_in_sos(jpg), "truncated", "JPEG cut inside its SOS segment"),
            (
                "voc_jpeg_cut_after_sos",
                jpeg_cut_after_sos(jpg),
                "truncated JPEG",
                "JPEG cut 16 bytes into its scan data",
            ),
        ]:
            self.voc_case(
                name, what, data, None, "rejected", level="image", reason=reason, rejects=1, strict_error=f"{name}.jpg"
            )
        for name, data, what in [
            ("voc_motion_photo", jpg + MOTION_VIDEO, "JPEG with a video appended after FF D9 (a motion photo)"),
            (
                "voc_motion_photo_exif",
                exif_rotated_jpeg(self.base, 1) + MOTION_VIDEO,
                "motion photo with an EXIF block (read through PIL)",
            ),
            (
                "voc_progressive_trailing",
                encode(self.base, "JPEG", quality=90, progressive=True) + b"\xff\x00junk\xff",
                "progressive JPEG (several scans) with bytes after FF D9",
            ),
        ]:
            self.voc_case(name, what, data, None, "kept", trailing_data=1)
        self.voc_case(
            "voc_jpeg_end_padding",
            "JPEG with zero bytes and a newline after FF D9 (padding, not counted)",
            jpg + b"\x00" * 16 + b"\n",
            None,
            "kept",
        )

    def build_voc_missing_sizes(self) -> None:
        """<size> missing, zero or empty: taken from the image header (which the stage reads anyway), counted."""
        jpg, w, h = self.base_jpeg, self.w, self.h
        one = [("person", (11, 6, 60, 55))]

        def xml_sized(name: str, width: object, height: object, objects=one, ext: str = ".jpg") -> str:
            text = voc_xml(f"{name}{ext}", (w, h), objects)
            return text.replace(f"<width>{w}</width>", f"<width>{width}</width>").replace(
                f"<height>{h}</height>", f"<height>{height}</height>"
            )

        self.voc_case(
            "voc_zero_size", "XML <size> 0x0", jpg, xml_sized("voc_zero_size", 0, 0), "kept", sizes_from_image=1
        )
        self.voc_case(
            "voc_empty_size",
            "XML <width></width><height></height>",
            jpg,
            xml_sized("voc_empty_size", "", ""),
            "kept",
            sizes_from_image=1,
        )
        self.voc_case(
            "voc_zero_width",
            "XML <width>0</width> and the right height",
            jpg,
            xml_sized("voc_zero_width", 0, h),
            "kept",
            sizes_from_image=1,
        )
        over = [("person", (50, 40, w + 20, h + 9))]
        self.voc_case(
            "voc_missing_size_box_overhanging",
            "no <size>; a box past the image header's size: clipped",
            jpg,
            voc_xml("voc_missing_size_box_overhanging.jpg", None, over),
            "clipped",
            objects=over,
            sizes_from_image=1,
        )
        self.voc_case(
            "voc_missing_size_png",
            "no <size>, a PNG image",
            encode(self.base, "PNG"),
            voc_xml("voc_missing_size_png.png", None, one),
            "converted",
            ext=".png",
            sizes_from_image=1,
        )
        self.voc_case(
            "voc_missing_size_truncated",
            "no <size> and a truncated JPEG",
            jpg[: len(jpg) // 2],
            voc_xml("voc_missing_size_truncated.jpg", None, one),
            "rejected",
            level="image",
            reason="truncated JPEG",
            rejects=1,
            strict_error="voc_missing_size_truncated.jpg",
        )

    def build_voc_size_mismatches(self) -> None:
        """<size> disagreeing with the image: the XML and its values are named, and the image."""
        jpg, w, h = self.base_jpeg, self.w, self.h
        for name, size, what in [
            ("voc_size_mismatch_height", (w, h + 1), f"XML <size> {w}x{h + 1} for an {w}x{h} image"),
            ("voc_size_swapped", (h, w), f"XML <size> {h}x{w} for an {w}x{h} image (no EXIF)"),
        ]:
            self.voc_case(
                name,
                what,
                jpg,
                None,
                "rejected",
                size=size,
                level="image",
                reason=f"{name}.xml gives the size {size[0]}x{size[1]} but the image {name}.jpg is {w}x{h}",
                rejects=1,
                strict_error=f"{name}.xml",
            )

    def build_voc_many_boxes(self) -> None:
        """A synthetic image (the demo generator) with 10,000 valid boxes: all kept."""
        from yolov2.data.synthetic import generate_image

        pixels, _ = generate_image(0, 0, "corpus", 160, 120, 3)
        image = encode(Image.fromarray(pixels), "JPEG", quality=90)
        rng = np.random.default_rng(10_000)
        xmin = rng.integers(1, 150, MANY_BOXES)
        ymin = rng.integers(1, 110, MANY_BOXES)
        xmax = xmin + rng.integers(0, 160 - xmin + 1)
        ymax = ymin + rng.integers(0, 120 - ymin + 1)
        objects = [
            (CLASS_NAMES[i % len(CLASS_NAMES)], (int(a), int(b), int(c), int(d)))
            for i, (a, b, c, d) in enumerate(zip(xmin, ymin, xmax, ymax))
        ]
        self.voc_case(
            "voc_10000_boxes",
            f"{MANY_BOXES} valid boxes in one synthetic image (the demo generator)",
            image,
            None,
            "kept",
            size=(160, 120),
            objects=objects,
        )

    # --- COCO ------------------------------------------------------------------------------

    def coco_case(
        self, name: str, what: str, images: dict[str, bytes], data: str | None, outcome: Outcome, **expected
    ) -> None:
        """One COCO split ``name``: image files in ``coco/<name>/``, ``annotations/instances_<name>.json``."""
        for file_name, content in images.items():
            write_bytes(self.coco / name / file_name, content)
        (self.coco / name).mkdir(parents=True, exist_ok=True)
        if data is not None:
            write_bytes(self.coco / "annotations" / f"instances_{name}.json", data)
        self.add(Case(name, "coco", what, outcome, **expected))

    def coco_doc(self, images: list, annotations: list) -> str:
        return coco_json(images, annotations, self.coco_categories)

    def image_entry(self, iid, file_name: str, width=None, height=None, **extra) -> dict:
        entry = {
            "id": iid,
            "file_name": file_name,
            "width": self.w if width is None else width,
            "height": self.h if height is None else height,
        }
        entry.update(extra)
        return entry

    def build_coco(self) -> None:
        w, h = self.w, self.h
        jpg = self.base_jpeg
        self.build_coco_control()

        def ann(aid, iid, bbox, cat=1, **extra) -> dict:
            return {"id": aid, "image_id": iid, "category_id": cat, "bbox": bbox, "area": 1.0, "iscrowd": 0, **extra}

        good_ann = [10.0, 5.0, 30.0, 40.0]
        good = ((10.0, 5.0, 40.0, 45.0),)
        json_of = lambda n: f"instances_{n}.json"  # noqa: E731
        one = [self.image_entry(1, "a.jpg")]

        self.coco_case(
            "coco_duplicate_image_ids",
            "two image entries with the same id",
            {"a.jpg": jpg, "b.jpg": jpg},
            self.coco_doc([self.image_entry(7, "a.jpg"), self.image_entry(7, "b.jpg")], [ann(1, 7, good_ann)]),
            "rejected",
            level="image",
            reason="duplicate image id 7",
            rejects=2,
            images_in=2,
            strict_error=json_of("coco_duplicate_image_ids"),
        )
        self.coco_case(
            "coco_duplicate_annotation_ids",
            "two annotations with the same id",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(5, 1, good_ann), ann(5, 1, [1.0, 1.0, 5.0, 5.0])]),
            "rejected",
            level="box",
            reason="duplicate annotation id 5",
            rejects=1,
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_duplicate_annotation_ids"),
        )
        no_name = self.image_entry(1, "a.jpg")
        del no_name["file_name"]
        self.coco_case(
            "coco_missing_file_name",
            "image entry without file_name",
            {"a.jpg": jpg},
            self.coco_doc([no_name], []),
            "rejected",
            level="image",
            reason="file_name None",
            rejects=1,
            strict_error=json_of("coco_missing_file_name"),
        )
        no_size = {"id": 1, "file_name": "a.jpg"}
        self.coco_case(
            "coco_missing_size",
            "image entry without width/height: the size comes from the image header",
            {"a.jpg": jpg},
            self.coco_doc([no_size], [ann(1, 1, good_ann)]),
            "kept",
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            sizes_from_image=1,
            group="size from the image",
        )
        no_bbox = ann(2, 1, None)
        del no_bbox["bbox"]
        self.coco_case(
            "coco_missing_bbox",
            "annotation without bbox",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(1, 1, good_ann), no_bbox]),
            "rejected",
            level="box",
            reason="bbox None is not a list of 4 numbers",
            rejects=1,
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_missing_bbox"),
        )
        self.coco_case(
            "coco_width_is_a_string",
            'width given as the string "80"',
            {"a.jpg": jpg},
            self.coco_doc([self.image_entry(1, "a.jpg", width=str(w))], []),
            "rejected",
            level="image",
            reason=f"width '{w}' is not a positive integer",
            rejects=1,
            strict_error=json_of("coco_width_is_a_string"),
        )
        self.coco_case(
            "coco_bbox_is_a_string",
            "bbox given as a string",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(1, 1, good_ann), ann(2, 1, "10,5,30,40")]),
            "rejected",
            level="box",
            reason="is not a list of 4 numbers",
            rejects=1,
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_bbox_is_a_string"),
        )
        self.coco_case(
            "coco_string_image_id",
            "image id given as a string",
            {"a.jpg": jpg},
            self.coco_doc([self.image_entry("42", "a.jpg")], []),
            "rejected",
            level="image",
            reason="image id '42' is a string",
            rejects=1,
            strict_error=json_of("coco_string_image_id"),
        )
        self.coco_case(
            "coco_string_annotation_image_id",
            "annotation image_id given as a string",
            {"a.jpg": jpg},
            self.coco_doc([self.image_entry(42, "a.jpg")], [ann(1, 42, good_ann), ann(2, "42", good_ann)]),
            "rejected",
            level="box",
            reason="image_id '42' is not an integer",
            rejects=1,
            image_id="42",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_string_annotation_image_id"),
        )
        self.coco_case(
            "coco_annotation_for_absent_image",
            "annotation for an image id not in images",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(1, 1, good_ann), ann(2, 99, good_ann)]),
            "rejected",
            level="box",
            reason="image_id 99 is not in 'images'",
            rejects=1,
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_annotation_for_absent_image"),
        )
        self.coco_case(
            "coco_nan_bbox",
            "bbox with NaN (JSON NaN literal)",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(1, 1, good_ann), ann(2, 1, [math.nan, 5, 30, 40])]),
            "rejected",
            level="box",
            reason="non-finite coordinate",
            rejects=1,
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_nan_bbox"),
        )
        self.coco_case(
            "coco_negative_width_bbox",
            "bbox with negative width (inverted)",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(1, 1, good_ann), ann(2, 1, [30, 5, -20, 40])]),
            "rejected",
            level="box",
            reason="inverted box",
            rejects=1,
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_negative_width_bbox"),
        )
        self.coco_case(
            "coco_unknown_category",
            "annotation with a category id not in categories",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(1, 1, good_ann), ann(2, 1, good_ann, cat=1000)]),
            "rejected",
            level="box",
            reason="unknown category id 1000",
            rejects=1,
            image_id="1",
            size=(w, h),
            boxes=good,
            labels=(0,),
            strict_error=json_of("coco_unknown_category"),
        )
        self.coco_case(
            "coco_box_overhanging",
            "bbox past the right edge",
            {"a.jpg": jpg},
            self.coco_doc(one, [ann(1, 1, [60.0, 10.0, 40.0, 20.0])]),
            "clipped",
            image_id="1",
            size=(w, h),
            boxes=((60.0, 10.0, float(w), 30.0),),
            labels=(0,),
            clipped=1,
        )
        self.coco_case(
            "coco_size_mismatch",
            "width/height 100x100 for an 80x60 image",
            {"a.jpg": jpg},
            self.coco_doc([self.image_entry(1, "a.jpg", width=100, height=100)], []),
            "rejected",
            level="image",
            reason="gives the size 100x100 but the image a.jpg is 80x60",
            rejects=1,
            strict_error=json_of("coco_size_mismatch"),
            group="size disagreement",
        )
        self.coco_case(
            "coco_path_traversal",
            "file_name ../../outside/photo.jpg",
            {},
            self.coco_doc([self.image_entry(1, "../../outside/photo.jpg")], []),
            "rejected",
            level="image",
            reason="is not a relative path inside the image folder",
            rejects=1,
            strict_error=json_of("coco_path_traversal"),
        )
        self.coco_case(
            "coco_truncated_jpeg",
            "JPEG cut in half",
            {"a.jpg": jpg[: len(jpg) // 2]},
            self.coco_doc(one, []),
            "rejected",
            level="image",
            reason="truncated JPEG",
            rejects=1,
            strict_error="coco_truncated_jpeg/a.jpg",
        )
        self.coco_case(
            "coco_image_symlink_outside",
            "image file is a symlink to a JPEG outside the root",
            {},
            self.coco_doc(one, []),
            "rejected",
            level="image",
            reason=OUTSIDE_MESSAGE,
            rejects=1,
            strict_error="coco_image_symlink_outside/a.jpg",
        )
        os.symlink(self.outside / "photo.jpg", self.coco / "coco_image_symlink_outside" / "a.jpg")
        # A lone surrogate escaped in JSON is what Python makes of a file name byte that is not UTF-8.
        self.coco_case(
            "coco_non_utf8_file_name",
            "file_name with a byte that is not UTF-8 (JSON \\udcff escape)",
            {},
            self.coco_doc([self.image_entry(1, "bad_\udcff.jpg")], []),
            "rejected",
            level="image",
            reason="not valid UTF-8",
            rejects=1,
            strict_error=json_of("coco_non_utf8_file_name"),
        )
        write_bytes(self.coco / "coco_non_utf8_file_name" / "bad_\udcff.jpg", jpg)
        self.coco_case(
            "coco_non_ascii_file_name",
            "non-ASCII (valid UTF-8) file name",
            {"café_画像.jpg": jpg},
            self.coco_doc([self.image_entry(3, "café_画像.jpg")], [ann(1, 3, good_ann)]),
            "kept",
            image_id="3",
            size=(w, h),
            boxes=good,
            labels=(0,),
        )
        bad_top = json.loads(self.coco_doc(one, []))
        del bad_top["annotations"]
        self.coco_case(
            "coco_missing_annotations_key",
            "instances file without the 'annotations' key",
            {"a.jpg": jpg},
            json.dumps(bad_top),
            "error",
            reason="missing key 'annotations'",
            images_in=0,
            strict_error=json_of("coco_missing_annotations_key"),
        )
        self.coco_case(
            "coco_malformed_json",
            "instances file cut in the middle",
            {"a.jpg": jpg},
            self.coco_doc(one, [])[:40],
            "error",
            reason="malformed JSON",
            images_in=0,
            strict_error=json_of("coco_malformed_json"),
        )
        self.coco_case(
            "coco_annotation_symlink_outside",
            "instances file is a symlink to a JSON outside the root",
            {"a.jpg": jpg},
            None,
            "error",
            reason=OUTSIDE_MESSAGE,
            images_in=0,
            strict_error=json_of("coco_annotation_symlink_outside"),
        )
        os.symlink(
            self.outside / "instances.json", self.coco / "annotations" / json_of("coco_annotation_symlink_outside")
        )
        self.build_coco_input_defects(one, ann, good_ann, good, json_of)

    def build_coco_input_defects(self, one: list, ann, good_ann: list, good: tuple, json_of) -> None:
        """Special files, JPEG structure and sizes, as for VOC (``ann``/``json_of``: build_coco's helpers)."""
        w, h, jpg = self.w, self.h, self.base_jpeg
        with self.grouped("special file"):
            for kind in ("fifo", "dev_null"):
                name = f"coco_{kind}_image"
                self.coco_case(
                    name,
                    f"the image file is {SPECIAL_KINDS[kind]}",
                    {},
                    self.coco_doc(one, []),
                    "rejected",
                    level="image",
                    reason=SPECIAL_KINDS[kind],
                    rejects=1,
                    strict_error=f"{name}/a.jpg",
                )
                make_special(self.coco / name / "a.jpg", kind)
            self.coco_case(
                "coco_fifo_annotation",
                "the instances file is a FIFO",
                {"a.jpg": jpg},
                None,
                "error",
                reason=SPECIAL_KINDS["fifo"],
                images_in=0,
                strict_error=json_of("coco_fifo_annotation"),
            )
            make_special(self.coco / "annotations" / json_of("coco_fifo_annotation"), "fifo")
        with self.grouped("JPEG structure"):
            self.coco_case(
                "coco_jpeg_no_scan",
                "JPEG header straight followed by FF D9",
                {"a.jpg": jpeg_without_scan(jpg)},
                self.coco_doc(one, []),
                "rejected",
                level="image",
                reason="no image data",
                rejects=1,
                strict_error="coco_jpeg_no_scan/a.jpg",
            )
            self.coco_case(
                "coco_motion_photo",
                "JPEG with a video appended after FF D9",
                {"a.jpg": jpg + MOTION_VIDEO},
                self.coco_doc(one, [ann(1, 1, good_ann)]),
                "kept",
                image_id="1",
                size=(w, h),
                boxes=good,
                labels=(0,),
                trailing_data=1,
            )
        with self.grouped("size disagreement"):
            self.coco_case(
                "coco_size_mismatch_height",
                f"height {h + 1} for an {w}x{h} image",
                {"a.jpg": jpg},
                self.coco_doc([self.image_entry(1, "a.jpg", height=h + 1)], []),
                "rejected",
                level="image",
                reason=f"image 1 gives the size {w}x{h + 1} but the image a.jpg is {w}x{h}",
                rejects=1,
                strict_error=json_of("coco_size_mismatch_height"),
            )

    def build_coco_control(self) -> None:
        """A real coco_tiny val image with its real annotations (crowd flags kept); boxes by plain arithmetic."""
        src = self.coco_tiny
        image = src["images"][0]
        anns = [a for a in src["annotations"] if a["image_id"] == image["id"]]
        cats = self.coco_categories
        label_of = {c["id"]: i for i, c in enumerate(cats)}
        boxes, labels, clipped = [], [], 0
        for a in anns:
            x, y, bw, bh = a["bbox"]
            box, was = clip_box((x, y, x + bw, y + bh), image["width"], image["height"])
            boxes.append(box)
            labels.append(label_of[a["category_id"]])
            clipped += int(was)
        data = (self.shared / "coco_tiny" / "val2017" / image["file_name"]).read_bytes()
        self.coco_case(
            "coco_control",
            "a real coco_tiny image with its real annotations (control)",
            {image["file_name"]: data},
            json.dumps({"images": [image], "annotations": anns, "categories": cats}),
            "clipped" if clipped else "kept",
            image_id=str(image["id"]),
            size=(image["width"], image["height"]),
            boxes=tuple(boxes),
            labels=tuple(labels),
            clipped=clipped,
        )

    # --- YOLO ------------------------------------------------------------------------------

    def yolo_case(
        self,
        name: str,
        what: str,
        image_name: bytes | str | None,
        image: bytes | None,
        label: str | bytes | None,
        outcome: Outcome,
        **expected,
    ) -> None:
        """One YOLO split ``name``: ``images/<name>/<image_name>`` and ``labels/<name>/<stem>.txt``."""
        img_dir, lab_dir = self.yolo / "images" / name, self.yolo / "labels" / name
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        if image_name is not None:
            raw_name = image_name if isinstance(image_name, bytes) else image_name.encode("utf-8")
            stem = raw_name.rsplit(b".", 1)[0]
            if image is not None:
                with open(os.fsencode(img_dir) + b"/" + raw_name, "wb") as f:
                    f.write(image)
            if label is not None:
                with open(os.fsencode(lab_dir) + b"/" + stem + b".txt", "wb") as f:
                    f.write(label if isinstance(label, bytes) else label.encode("utf-8"))
        self.add(Case(name, "yolo", what, outcome, **expected))

    def build_yolo(self) -> None:
        w, h = self.w, self.h
        jpg = self.base_jpeg
        good_line = "1 0.5 0.5 0.25 0.5\n"
        good = ((0.375 * w, 0.25 * h, 0.625 * w, 0.75 * h),)

        def yolo_box(cx, cy, bw, bh) -> Box:
            return ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)

        self.yolo_case(
            "yolo_control",
            "a good JPEG with two good label lines (control)",
            "img.jpg",
            jpg,
            good_line + "0 0.25 0.25 0.5 0.5\n",
            "kept",
            image_id="img",
            size=(w, h),
            boxes=(good[0], yolo_box(0.25, 0.25, 0.5, 0.5)),
            labels=(1, 0),
        )
        for name, what, line, reason in [
            ("yolo_wrong_column_count", "a label line with 4 columns", "0 0.5 0.5 0.25\n", "4 columns, expected 5"),
            ("yolo_extra_columns", "a label line with 6 columns", "0 0.5 0.5 0.25 0.25 0.9\n", "6 columns, expected 5"),
            ("yolo_value_above_one", "a label line with cx = 1.5", "0 1.5 0.5 0.25 0.25\n", "outside [0, 1]"),
            ("yolo_negative_value", "a label line with w = -0.2", "0 0.5 0.5 -0.2 0.25\n", "outside [0, 1]"),
            ("yolo_class_out_of_range", "class id 9 with 4 class names", "9 0.5 0.5 0.25 0.25\n", "unknown class id 9"),
            ("yolo_nan_value", "a label line with nan", "0 nan 0.5 0.25 0.25\n", "non-finite value"),
        ]:
            self.yolo_case(
                name,
                what,
                "img.jpg",
                jpg,
                good_line + line,
                "rejected",
                level="box",
                reason=reason,
                rejects=1,
                image_id="img",
                size=(w, h),
                boxes=good,
                labels=(1,),
                strict_error=f"{name}/img.txt",
            )
        self.yolo_case(
            "yolo_box_overhanging",
            "cx + w/2 = 1.05: clipped to the right edge",
            "img.jpg",
            jpg,
            "0 0.95 0.5 0.2 0.5\n",
            "clipped",
            image_id="img",
            size=(w, h),
            boxes=((0.85 * w, 0.25 * h, float(w), 0.75 * h),),
            labels=(0,),
            clipped=1,
        )
        self.yolo_case(
            "yolo_non_utf8_file_name",
            "image file name with bytes that are not UTF-8",
            b"bad_\xff\xfe.jpg",
            jpg,
            good_line,
            "rejected",
            level="image",
            reason="not valid UTF-8",
            rejects=1,
            strict_error="bad_\\xff\\xfe.jpg",
        )
        self.yolo_case(
            "yolo_non_ascii_file_name",
            "non-ASCII (valid UTF-8) image and label names",
            "café_画像.jpg",
            jpg,
            good_line,
            "kept",
            image_id="café_画像",
            size=(w, h),
            boxes=good,
            labels=(1,),
        )
        self.yolo_case(
            "yolo_label_not_utf8",
            "label file holding Latin-1 bytes",
            "img.jpg",
            jpg,
            b"0 0.5 0.5 0.2 0.2 \xe9\n",
            "rejected",
            level="image",
            reason="cannot read label file",
            rejects=1,
            strict_error="yolo_label_not_utf8/img.txt",
        )
        self.yolo_case(
            "yolo_orphan_label",
            "a label file without its image (and one good image)",
            "img.jpg",
            jpg,
            good_line,
            "rejected",
            level="image",
            reason="label file without an image",
            rejects=1,
            images_in=2,
            image_id="img",
            size=(w, h),
            boxes=good,
            labels=(1,),
            strict_error="yolo_orphan_label/orphan.txt",
        )
        write_bytes(self.yolo / "labels" / "yolo_orphan_label" / "orphan.txt", good_line)
        self.yolo_case(
            "yolo_bomb_jpeg",
            f"small JPEG whose header claims {BOMB_SIDE}x{BOMB_SIDE}",
            "img.jpg",
            bomb_jpeg(jpg),
            good_line,
            "rejected",
            level="image",
            reason="too large",
            rejects=1,
            strict_error="yolo_bomb_jpeg/img.jpg",
        )
        self.yolo_case(
            "yolo_zero_byte",
            "zero-byte image file",
            "img.jpg",
            b"",
            good_line,
            "rejected",
            level="image",
            reason="empty (zero bytes)",
            rejects=1,
            strict_error="yolo_zero_byte/img.jpg",
        )
        self.yolo_case(
            "yolo_image_symlink_outside",
            "image is a symlink to a JPEG outside the root",
            "img.jpg",
            None,
            good_line,
            "rejected",
            level="image",
            reason=OUTSIDE_MESSAGE,
            rejects=1,
            strict_error="yolo_image_symlink_outside/img.jpg",
        )
        os.symlink(self.outside / "photo.jpg", self.yolo / "images" / "yolo_image_symlink_outside" / "img.jpg")
        self.yolo_case(
            "yolo_label_symlink_outside",
            "label file is a symlink to a file outside the root",
            "img.jpg",
            jpg,
            None,
            "rejected",
            level="image",
            reason=OUTSIDE_MESSAGE,
            rejects=1,
            strict_error="yolo_label_symlink_outside/img.txt",
        )
        os.symlink(self.outside / "label.txt", self.yolo / "labels" / "yolo_label_symlink_outside" / "img.txt")
        self.build_yolo_input_defects(good_line, good)

    def build_yolo_input_defects(self, good_line: str, good: tuple) -> None:
        """Special files, JPEG structure, and two images sharing a stem (so one label file)."""
        w, h, jpg = self.w, self.h, self.base_jpeg
        with self.grouped("special file"):
            for kind in ("fifo", "socket", "directory"):
                name = f"yolo_{kind}_image"
                self.yolo_case(
                    name,
                    f"the image file is {SPECIAL_KINDS[kind]}",
                    "img.jpg",
                    None,
                    good_line,
                    "rejected",
                    level="image",
                    reason=SPECIAL_KINDS[kind],
                    rejects=1,
                    strict_error=f"{name}/img.jpg",
                )
                make_special(self.yolo / "images" / name / "img.jpg", kind)
            for kind in ("fifo", "dev_zero"):
                name = f"yolo_{kind}_label"
                self.yolo_case(
                    name,
                    f"the label file is {SPECIAL_KINDS[kind]}",
                    "img.jpg",
                    jpg,
                    None,
                    "rejected",
                    level="image",
                    reason=SPECIAL_KINDS[kind],
                    rejects=1,
                    strict_error=f"{name}/img.txt",
                )
                make_special(self.yolo / "labels" / name / "img.txt", kind)
        with self.grouped("JPEG structure"):
            self.yolo_case(
                "yolo_jpeg_no_scan",
                "JPEG header straight followed by FF D9",
                "img.jpg",
                jpeg_without_scan(jpg),
                good_line,
                "rejected",
                level="image",
                reason="no image data",
                rejects=1,
                strict_error="yolo_jpeg_no_scan/img.jpg",
            )
            self.yolo_case(
                "yolo_motion_photo",
                "JPEG with a video appended after FF D9",
                "img.jpg",
                jpg + MOTION_VIDEO,
                good_line,
                "kept",
                image_id="img",
                size=(w, h),
                boxes=good,
                labels=(1,),
                trailing_data=1,
            )
        with self.grouped("id listed twice"):
            self.yolo_case(
                "yolo_duplicate_stem",
                "img.jpg and img.png (so img.txt would serve both): the second is rejected",
                "img.jpg",
                jpg,
                good_line,
                "rejected",
                level="image",
                reason="appears twice",
                rejects=1,
                images_in=2,
                image_id="img",
                size=(w, h),
                boxes=good,
                labels=(1,),
                strict_error="yolo_duplicate_stem/img.png",
            )
            write_bytes(self.yolo / "images" / "yolo_duplicate_stem" / "img.png", encode(self.base, "PNG"))


def build_corpus(out_dir: str | Path, shared_data: str | Path) -> list[Case]:
    """Write every case's files under ``out_dir`` (which must not exist or be empty); return the cases."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: the corpus is written into a fresh folder")
    builder = _Builder(out_dir, Path(shared_data))
    builder.build_voc()
    builder.build_coco()
    builder.build_yolo()
    return builder.cases


def corpus_layout(out_dir: str | Path) -> CorpusLayout:
    out_dir = Path(out_dir)
    return CorpusLayout(out_dir, out_dir / "voc", out_dir / "coco", out_dir / "yolo", out_dir / "outside")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="a new folder for the corpus")
    parser.add_argument(
        "--shared-data",
        default=os.environ.get("YOLOV2_SHARED_DATA", str(Path(__file__).resolve().parents[3] / "shared" / "data")),
    )
    args = parser.parse_args(argv)
    cases = build_corpus(args.out_dir, args.shared_data)
    for c in cases:
        print(f"{c.layout:5s} {c.outcome:9s} {c.level or '':5s} {c.name}: {c.what}")
    print(f"{len(cases)} cases written to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
