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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from yolov2.data.records import ImageRecord
from yolov2.errors import DatasetError

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


def inspect_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Format, size and mode of an encoded image, from its header; pixels are not decoded.

    Raises :class:`DatasetError` naming ``source`` when the bytes are empty, not an image, of an
    unsupported format, larger than ``max_pixels`` (decompression-bomb guard; PIL's own hard limit,
    twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies above that), or visibly truncated: a JPEG
    must end with the end-of-image marker FF D9 and a PNG with its IEND chunk (trailing zero or
    whitespace padding allowed), a WEBP/BMP must be as long as its header says.
    """
    if not data:
        raise DatasetError(f"{source}: image file is empty (zero bytes)")
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
    problem = _truncation_problem(fmt, data)
    if problem:
        raise DatasetError(f"{source}: truncated {fmt}: {problem}")
    return ImageInfo(fmt, int(width), int(height), mode, orientation, len(data))


def inspect_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """:func:`inspect_image` on a file; a missing or unreadable file is a :class:`DatasetError` too."""
    try:
        data = Path(path).read_bytes()
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
            f"{Path(path).name} is {info.width}x{info.height} (WxH)"
        )
    ext = Path(path).suffix.lower()
    if ext not in FORMAT_EXTENSIONS[info.format]:
        named = f"named {Path(path).suffix}" if ext else "has no extension"
        return f"content is {info.format} but the file {Path(path).name} is {named}"
    return None


def decode_rgb(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image to uint8[H, W, 3] RGB (H, W as stored: EXIF orientation ignored).

    Grayscale, CMYK, palette, 16-bit and alpha images are converted to 8-bit RGB by OpenCV
    (``IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION``); alpha is dropped, not composited.
    """
    buf = np.frombuffer(data, np.uint8)
    if buf.size == 0:
        raise DatasetError(f"{source}: cannot decode an empty image")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise DatasetError(f"{source}: OpenCV cannot decode this image (corrupt or unsupported format)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _exif_orientation(im: Image.Image) -> int | None:
    # Only when the header already holds the EXIF block: PNG's getexif() would otherwise decode.
    if "exif" not in im.info:
        return None
    try:
        value = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block is not our problem: we ignore orientation anyway
        return None
    return int(value) if isinstance(value, int) else None


def _truncation_problem(fmt: str, data: bytes) -> str | None:
    if fmt == "JPEG":
        if not data.rstrip(_PADDING).endswith(_JPEG_EOI):
            return "the data does not end with the JPEG end-of-image marker FF D9 (cut short, or junk after it)"
    elif fmt == "PNG":
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
