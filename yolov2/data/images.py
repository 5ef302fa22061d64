"""Image files as the readers see them: a cheap header check, and the one decode path to RGB.

Why two functions: every reader (and the shard stage, on thousands of files) must know an image's
format and size and that it is not truncated, but must not pay for decoding its pixels.
:func:`inspect_image` reads only the header (PIL opens lazily) and the last bytes of the file.
:func:`decode_rgb` is the single place pixels are decoded, at training / inference time.

EXIF orientation is **ignored** everywhere: widths, heights and pixels are the image as stored. This
is what the annotation files describe (COCO's ``width``/``height`` and boxes refer to the stored
pixels, not the EXIF-rotated view; VOC tools draw on the stored pixels too), so applying the
rotation would misplace every box of a rotated photo. :class:`ImageInfo` still reports the tag, so a
caller can see which images carry one.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from yolov2.data.paths import read_regular_file
from yolov2.data.records import ImageRecord
from yolov2.errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

# PIL's own default for Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3).
DEFAULT_MAX_PIXELS = 89_478_485

# Formats we accept (all decodable by cv2.imdecode) and the file extensions each may carry.
# PIL calls a JPEG with a multi-picture extension (cameras) "MPO"; its first frame is a plain JPEG.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
}
_FORMAT_ALIASES = {"MPO": "JPEG"}
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(e for exts in FORMAT_EXTENSIONS.values() for e in exts)

_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PADDING = b"\x00 \t\r\n"
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says. ``width``/``height`` are as stored (EXIF ignored)."""

    format: str  # JPEG, PNG, BMP, WEBP
    width: int
    height: int
    mode: str  # PIL mode: L, RGB, CMYK, RGBA, P, I;16, ...
    exif_orientation: int | None  # 1..8 when the file has the tag, else None
    num_bytes: int
    trailing_bytes: int = 0  # JPEG: bytes after its end-of-image marker, padding excluded (a motion photo's video)


def inspect_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Format, size and mode of an encoded image, from its header; pixels are not decoded.

    Raises :class:`DatasetError` naming ``source`` when the bytes are empty, not an image, of an
    unsupported format, larger than ``max_pixels`` (decompression-bomb guard; PIL's own hard limit,
    twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies above that), or visibly incomplete: a JPEG
    must hold a scan (SOS segment) with data and an end-of-image marker FF D9 after it (bytes after
    that marker are allowed and counted in ``trailing_bytes``: phones append a video to "motion
    photos"); a PNG must end with its IEND chunk (trailing zero or whitespace padding allowed), a
    WEBP/BMP must be as long as its header says.
    """
    if not data:
        raise DatasetError(f"{source}: image file is empty (zero bytes)")
    plain = _plain_jpeg_frame(data)
    if plain is not None and plain[0] * plain[1] <= max_pixels:
        width, height, mode, scan = plain
        trailing = _checked_jpeg_trailing_bytes(data, source, scan)
        return ImageInfo("JPEG", width, height, mode, None, len(data), trailing)
    # Imported here: a shard task that only meets plain JPEGs never pays for loading PIL (or cv2).
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = _FORMAT_ALIASES.get(im.format or "", im.format or "")
            width, height = im.size
            mode = im.mode
            orientation = _exif_orientation(im)
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{source}: image is too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise DatasetError(f"{source}: not an image (content not recognised as any image format)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DatasetError(f"{source}: unreadable image header, the file is corrupt or truncated ({e})") from e
    if fmt not in FORMAT_EXTENSIONS:
        raise DatasetError(
            f"{source}: unsupported image format {fmt or 'unknown'} (supported: {', '.join(FORMAT_EXTENSIONS)})"
        )
    if width <= 0 or height <= 0:
        raise DatasetError(f"{source}: image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise DatasetError(
            f"{source}: image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            "(decompression-bomb guard; raise max_pixels if the image is genuine)"
        )
    if fmt == "JPEG":
        trailing = _checked_jpeg_trailing_bytes(data, source)
    else:
        trailing, problem = 0, _truncation_problem(fmt, data)
        if problem:
            raise DatasetError(f"{source}: truncated {fmt}: {problem}")
    return ImageInfo(fmt, int(width), int(height), mode, orientation, len(data), trailing)


def inspect_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """:func:`inspect_image` on a file; a missing, unreadable or special file is a :class:`DatasetError` too."""
    try:
        data = read_regular_file(path)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file is missing") from e
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image file ({e.strerror})") from e
    return inspect_image(data, str(path), max_pixels)


def check_image_against_record(info: ImageInfo, record: ImageRecord, source: str) -> str | None:
    """Why an image does not fit its annotation, or None when it does.

    ``record.width``/``record.height`` are what the annotation (``source``) says: VOC ``<size>``,
    COCO ``width``/``height``. The extension of ``record.path`` must match the content (a PNG named
    ``.jpg`` is rejected: the shard stage and every downstream decoder trust the extension).
    Grayscale, CMYK, palette and alpha images are fine: :func:`decode_rgb` converts them.
    """
    path = record.path
    if (info.width, info.height) != (int(record.width), int(record.height)):
        return (
            f"{source} gives the size {int(record.width)}x{int(record.height)} but the image "
            f"{Path(path).name} is {info.width}x{info.height} (WxH); correct the annotation's size or the image"
        )
    if _plain_suffix(path) in FORMAT_EXTENSIONS[info.format]:  # the common answer, without pathlib's cost
        return None
    ext = Path(path).suffix.lower()
    if ext not in FORMAT_EXTENSIONS[info.format]:
        named = f"named {Path(path).suffix}" if ext else "has no extension"
        return f"content is {info.format} but the file {Path(path).name} is {named}"
    return None


def _plain_suffix(path: str) -> str | None:
    """``Path(path).suffix.lower()`` for a path whose last part is a plain file name, else None."""
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        return None
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def decode_rgb(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image to uint8[H, W, 3] RGB (H, W as stored: EXIF orientation ignored).

    Grayscale, CMYK, palette, 16-bit and alpha images are converted to 8-bit RGB by OpenCV
    (``IMREAD_COLOR_RGB | IMREAD_IGNORE_ORIENTATION``); alpha is dropped, not composited. The decoder writes
    RGB directly (libjpeg-turbo converts to RGB itself): the same pixels as decoding to BGR and swapping
    the channels (checked on every format above), without a full-size copy. Training, evaluation and
    prediction all decode here. Raises :class:`DatasetError` naming ``source``.
    """
    import cv2

    buf = np.frombuffer(data, np.uint8)
    if buf.size == 0:
        raise DatasetError(f"{source}: cannot decode an empty image")
    rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if rgb is None:
        raise DatasetError(f"{source}: OpenCV cannot decode this image (corrupt or unsupported format)")
    return rgb


# Markers a plain JPEG header may hold before its scan: segments PIL only stores or skips.
_SKIPPED_JPEG_SEGMENTS = frozenset((0xC4, 0xCC, 0xDD, 0xFE))  # DHT DAC DRI COM
_LAYER_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def _plain_jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, PIL mode) of a JPEG whose header PIL would read without a question, else None."""
    frame = _plain_jpeg_frame(data)
    return None if frame is None else frame[:3]


def _plain_jpeg_frame(data: bytes) -> tuple[int, int, str, int] | None:
    """:func:`_plain_jpeg_header` and the offset where its first scan's data starts (after the SOS segment).

    Why: :func:`inspect_image` runs once per image in the shard stage, and PIL's open costs more than
    reading the file. This walks the marker segments up to the scan with the same reads PIL does,
    but accepts only the common, unambiguous layout: SOI, then whole segments of the kinds PIL just
    stores or skips (APPn other than EXIF/MPF, DQT tables checked as PIL checks them, DHT, DRI,
    COM), one baseline/extended/progressive frame (SOF0-2) of 8-bit samples with 1, 3 or 4
    components, then a complete SOS segment. Anything else (EXIF, MPF, fill bytes, other frame
    types, a short segment, ...) returns None and the caller asks PIL, so every unusual or broken
    file still gets PIL's answer and message.
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    end, pos, frame = len(data), 2, None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        body, pos = pos + 4, pos + 2 + length
        if length < 2 or pos > end:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            return None if frame is None else (*frame, pos)
        if marker in (0xC0, 0xC1, 0xC2):
            if frame is not None or length < 8 or data[body] != 8:
                return None
            mode = _LAYER_MODES.get(data[body + 5])
            height, width = (data[body + 1] << 8) | data[body + 2], (data[body + 3] << 8) | data[body + 4]
            if mode is None or not width or not height:
                return None
            frame = (width, height, mode)
        elif marker == 0xDB:
            table = body
            while table < pos:
                table += 1 + (64 if data[table] < 16 else 128)
            if table != pos:  # PIL: "bad quantization table marker" (or a ragged end)
                return None
        elif 0xE0 <= marker <= 0xEF:
            if not _plain_app_segment(marker, data[body:pos]):
                return None
        elif marker not in _SKIPPED_JPEG_SEGMENTS:
            return None
    return None


def _plain_app_segment(marker: int, s: bytes) -> bool:
    """Whether PIL only stores this APPn segment: EXIF (orientation, dpi) and MPF (MPO) are read
    further, and JFIF, ICC, Photoshop and Adobe fields too short for PIL's unguarded reads are not plain."""
    if marker == 0xE0:
        return not s.startswith(b"JFIF") or len(s) >= 14
    if marker == 0xE1:
        return not s.startswith(b"Exif\0\0")
    if marker == 0xE2:
        return not s.startswith(b"MPF\0") and (not s.startswith(b"ICC_PROFILE\0") or len(s) >= 14)
    if marker == 0xED:
        return not s.startswith(b"Photoshop 3.0\0") or _plain_photoshop_blocks(s)
    if marker == 0xEE:
        return not s.startswith(b"Adobe") or len(s) >= 12
    return True


def _plain_photoshop_blocks(s: bytes) -> bool:
    """Whether PIL's walk over the "8BIM" resource blocks of a Photoshop APP13 segment ends cleanly
    (it catches short sizes, but a segment cut right after a block's code would raise IndexError)."""
    offset = 14
    while s[offset : offset + 4] == b"8BIM":
        offset += 6  # signature, resource code
        if offset + 1 > len(s):
            return False
        offset += 1 + s[offset]  # name
        offset += offset & 1
        if offset + 4 > len(s):
            return True  # PIL stops on the short size field (struct.error, caught)
        offset += 4 + int.from_bytes(s[offset : offset + 4], "big")
        offset += offset & 1
    return True


def _exif_orientation(im: Image.Image) -> int | None:
    # Only when the header already holds the EXIF block: PNG's getexif() would otherwise decode.
    if "exif" not in im.info:
        return None
    try:
        value = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block is not our problem: we ignore orientation anyway
        return None
    return int(value) if isinstance(value, int) else None


def _checked_jpeg_trailing_bytes(data: bytes, source: str, scan: int | None = None) -> int:
    """Bytes after the end of the JPEG's image (padding excluded); :class:`DatasetError` when it has none.

    ``scan``: where the first scan's data starts, when the caller's header walk already knows it.
    """
    trailing, problem = _jpeg_trailing_bytes(data, scan)
    if problem:
        raise DatasetError(f"{source}: {problem}")
    return trailing


def _jpeg_trailing_bytes(data: bytes, scan: int | None = None) -> tuple[int, str | None]:
    """(bytes after the first image's end-of-image marker, padding excluded; why there is no complete image).

    Why not "ends with FF D9": a header followed straight by FF D9 passes that test and decodes to a
    flat grey picture, while a photo with a video appended after its FF D9 (a "motion photo") fails
    it. The image needs a scan: a complete SOS segment followed by entropy-coded data, then FF D9.
    Inside the scans FF D9 cannot occur (a data byte FF is followed by 00, a restart marker by D0-D7),
    so the first FF D9 after the first SOS ends the image. The usual file, which ends with its marker,
    costs one walk over the header segments and no search through the scan.
    """
    if scan is None:
        scan, problem = _jpeg_scan_start(data)
        if problem:
            return 0, problem
    body = data.rstrip(_PADDING)
    if body.endswith(_JPEG_EOI) and len(body) - 2 > scan:
        return 0, None
    end = data.find(_JPEG_EOI, scan)
    if end < 0:
        return 0, (
            "truncated JPEG: the data does not end with the JPEG end-of-image marker FF D9 after its "
            "image data (cut short); copy the file again from its source"
        )
    if end == scan:
        return 0, (
            "JPEG has no image data: its scan (SOS segment) is followed directly by the end-of-image "
            "marker FF D9; the file holds only a header, replace it"
        )
    return max(0, len(body) - end - 2), None


_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD9)))  # TEM, RST0-7, SOI: markers without a length


def _jpeg_scan_start(data: bytes) -> tuple[int, str | None]:
    """(offset just after the first SOS segment, problem): walks the marker segments by their lengths.

    Lenient where decoders are (bytes that are not a marker are skipped, as libjpeg does); the
    problems are running out of data and an end-of-image marker before any scan.
    """
    pos, end = 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= end:
                break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:
            return 0, (
                "JPEG has no image data: the end-of-image marker FF D9 comes before any scan "
                "(SOS segment, FF DA); the file holds only a header, replace it"
            )
        elif marker in _JPEG_STANDALONE or marker == 0x00:
            pos += 2
        else:
            if pos + 4 > end:
                break
            pos += 2 + max((data[pos + 2] << 8) | data[pos + 3], 2)
            if pos > end:
                break
            if marker == 0xDA:
                return pos, None
    return 0, (
        "truncated JPEG: the data ends inside its header, before any image data (no complete SOS "
        "segment); copy the file again from its source"
    )


def _truncation_problem(fmt: str, data: bytes) -> str | None:
    if fmt == "PNG":
        if not data.rstrip(_PADDING).endswith(_PNG_IEND):
            return "the data does not end with the PNG IEND chunk"
    elif fmt == "WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        if len(data) < declared:
            return f"the RIFF header declares {declared} bytes but the file has {len(data)}"
    elif fmt == "BMP":
        declared = int.from_bytes(data[2:6], "little")
        if declared and len(data) < declared:
            return f"the BMP header declares {declared} bytes but the file has {len(data)}"
    return None
