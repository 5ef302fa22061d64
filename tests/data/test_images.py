"""yolov2/data/images.py: header inspection, truncation checks, RGB decoding (real files + bad bytes)."""

from __future__ import annotations

import io
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus.special import SPECIAL_KINDS, finishes_within, make_special
from yolov2.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    _plain_jpeg_header,
    _plain_suffix,
    check_image_against_record,
    decode_rgb,
    inspect_image,
    inspect_image_file,
)
from yolov2.data.records import ImageRecord
from yolov2.errors import DatasetError


def smooth_rgb(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth colour image (JPEG-friendly, so decoders agree closely)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (no pixel data needed to read the header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- real files ------------------------------------------------------------------------------


def test_voc100_headers_match_the_xml_sizes(shared_data: Path) -> None:
    root = shared_data / "voc100"
    n = 0
    for xml in sorted((root / "Annotations").glob("*.xml")):
        size = ET.parse(xml).getroot().find("size")
        info = inspect_image_file(root / "JPEGImages" / f"{xml.stem}.jpg")
        assert (info.format, info.width, info.height) == (
            "JPEG",
            int(size.findtext("width")),
            int(size.findtext("height")),
        )
        n += 1
    assert n == 100


def test_raccoon_modes_include_three_grayscale_and_decode_to_rgb(shared_data: Path) -> None:
    paths = sorted((shared_data / "raccoon" / "JPEGImages").glob("*.jpg"))
    infos = [inspect_image_file(p) for p in paths]
    assert len(infos) == 200
    gray = [p for p, i in zip(paths, infos) if i.mode == "L"]
    assert len(gray) == 3  # the dataset README's count
    for p in gray:
        rgb = decode_rgb(p.read_bytes(), str(p))
        ref = np.asarray(Image.open(p).convert("RGB"))
        assert rgb.shape == ref.shape and rgb.dtype == np.uint8
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        assert np.abs(rgb.astype(int) - ref).max() <= 2


def test_coco_tiny_headers_agree_with_json_and_full_decode(shared_data: Path) -> None:
    import json

    folder = shared_data / "coco_tiny"
    data = json.loads((folder / "annotations" / "instances_val2017.json").read_text())
    for img in data["images"][:20]:
        path = folder / "val2017" / img["file_name"]
        info = inspect_image_file(path)
        assert (info.width, info.height) == (img["width"], img["height"])
        assert decode_rgb(path.read_bytes()).shape == (img["height"], img["width"], 3)


def test_decode_rgb_matches_pillow_and_is_rgb_not_bgr() -> None:
    arr = smooth_rgb()
    arr[:8, :8] = (255, 0, 0)  # a pure red corner: BGR order would put 255 in channel 2
    data = encode(arr, "PNG")  # lossless, so the decoders must agree exactly
    out = decode_rgb(data)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)
    assert tuple(out[0, 0]) == (255, 0, 0)


# --- accepted odd images ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_grayscale_and_cmyk_jpegs_are_accepted_and_decoded_to_rgb(mode: str) -> None:
    arr = smooth_rgb()
    data = encode(arr, "JPEG", mode, quality=95)
    info = inspect_image(data, "x.jpg")
    assert info == ImageInfo("JPEG", 64, 48, mode, None, len(data))
    out = decode_rgb(data, "x.jpg")
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # Pillow as the reference decoder
    assert out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - ref).max() <= 3


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("BMP", "RGB"), ("WEBP", "RGB")])
def test_other_formats_and_modes_are_inspected_and_decoded(fmt: str, mode: str) -> None:
    arr = smooth_rgb()
    if mode == "I;16":
        im = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        data = buf.getvalue()
    else:
        data = encode(arr, fmt, mode, **({"lossless": True} if fmt == "WEBP" else {}))
    info = inspect_image(data, f"x.{fmt.lower()}")
    assert (info.format, info.width, info.height) == (fmt, 64, 48)
    assert info.mode.startswith(mode.split(";")[0])
    assert decode_rgb(data).shape == (48, 64, 3)


def test_exif_orientation_is_reported_and_ignored() -> None:
    arr = smooth_rgb(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(arr, "JPEG", quality=95, exif=exif.tobytes())
    info = inspect_image(data, "rot.jpg")
    assert info.exif_orientation == 6
    assert (info.width, info.height) == (64, 48)  # as stored, not as displayed
    assert decode_rgb(data).shape == (48, 64, 3)  # not rotated either


# --- rejected bytes --------------------------------------------------------------------------


def test_truncated_jpeg_is_an_error_naming_the_source() -> None:
    noisy = np.random.default_rng(1).integers(0, 256, (192, 256, 3)).astype(np.uint8)
    data = encode(noisy, "JPEG")  # mostly entropy-coded scan data: cutting it in half leaves the header intact
    with pytest.raises(DatasetError, match=r"photos/cut\.jpg: truncated JPEG.*FF D9"):
        inspect_image(data[: len(data) // 2], "photos/cut.jpg")
    with pytest.raises(DatasetError, match="truncated JPEG"):
        inspect_image(data[:-1], "cut.jpg")  # one byte short: the header is fine, only the end tells


def test_padding_after_jpeg_end_marker_is_allowed() -> None:
    data = encode(smooth_rgb(), "JPEG")
    info = inspect_image(data + b"\x00" * 7 + b"\n", "pad.jpg")
    assert info.format == "JPEG" and info.trailing_bytes == 0  # padding is not data


def scan_offsets(jpeg: bytes) -> tuple[int, int]:
    """The reference walk: (offset of the first SOS marker, offset after its segment), by segment lengths."""
    pos = 2
    while jpeg[pos + 1] != 0xDA:
        pos += 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
    return pos, pos + 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]


def jpeg_kinds() -> dict[str, bytes]:
    """JPEGs that take each path through the checks: the plain-header fast path (baseline, progressive)
    and PIL's (an EXIF block)."""
    arr = smooth_rgb(96, 64, seed=4)
    return {
        "baseline": encode(arr, "JPEG"),
        "progressive": encode(arr, "JPEG", progressive=True),
        "exif": encode(arr, "JPEG", exif=Image.Exif().tobytes()),
    }


@pytest.mark.parametrize("kind", ["baseline", "progressive", "exif"])
def test_jpeg_without_image_data_is_rejected(kind: str) -> None:
    """A header followed straight by FF D9 ends like a good JPEG; OpenCV makes a flat grey picture of it."""
    data = jpeg_kinds()[kind]
    sos, scan = scan_offsets(data)
    for name, bad in (("header.jpg", data[:sos] + b"\xff\xd9"), ("noscan.jpg", data[:scan] + b"\xff\xd9")):
        with pytest.raises(DatasetError, match=f"{name}: JPEG has no image data"):
            inspect_image(bad, name)
    for bad in (data[: sos + 5], data[: scan + 20]):  # cut inside the SOS segment, or in the scan data
        with pytest.raises(DatasetError, match="truncated"):
            inspect_image(bad, "cut.jpg")


@pytest.mark.parametrize("kind", ["baseline", "progressive", "exif"])
def test_bytes_after_the_end_marker_are_kept_and_counted(kind: str) -> None:
    """A motion photo: a video after the JPEG's FF D9. The image is whole, so it is kept; the decoders
    see the same pixels as without the video."""
    import cv2

    data = jpeg_kinds()[kind]
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4 + b"\xff\x00\xffmoov"  # FF bytes, no FF D9
    info = inspect_image(data + video, "motion.jpg")
    assert (info.width, info.height, info.trailing_bytes) == (96, 64, len(video))
    assert info.num_bytes == len(data) + len(video)
    assert inspect_image(data, "plain.jpg").trailing_bytes == 0
    np.testing.assert_array_equal(decode_rgb(data + video), decode_rgb(data))
    np.testing.assert_array_equal(
        cv2.imdecode(np.frombuffer(data + video, np.uint8), cv2.IMREAD_COLOR),
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
    )


def test_truncated_png_is_an_error() -> None:
    data = encode(smooth_rgb(), "PNG")
    with pytest.raises(DatasetError, match=r"cut\.png: truncated PNG.*IEND"):
        inspect_image(data[:-20], "cut.png")


def test_truncated_webp_is_an_error() -> None:
    data = encode(smooth_rgb(), "WEBP")
    with pytest.raises(DatasetError, match=r"cut\.webp: .*(truncated|corrupt)"):
        inspect_image(data[: len(data) - 10], "cut.webp")


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "image file is empty \\(zero bytes\\)"),
        (b"hello, I am not an image", "not an image"),
        (b"<annotation></annotation>", "not an image"),
    ],
)
def test_empty_and_non_image_bytes(data: bytes, match: str) -> None:
    with pytest.raises(DatasetError, match=f"bad.jpg: {match}"):
        inspect_image(data, "bad.jpg")


def test_unsupported_format_is_an_error() -> None:
    data = encode(smooth_rgb(), "GIF")
    with pytest.raises(DatasetError, match="anim.gif: unsupported image format GIF"):
        inspect_image(data, "anim.gif")


def test_pixel_limit_is_configurable_and_defaults_to_pillows() -> None:
    data = encode(smooth_rgb(64, 48), "PNG")
    assert inspect_image(data, "ok.png", max_pixels=64 * 48).width == 64
    with pytest.raises(DatasetError, match=r"big.png: image is 64x48 = 3072 pixels, above the limit of 3071"):
        inspect_image(data, "big.png", max_pixels=64 * 48 - 1)
    assert DEFAULT_MAX_PIXELS == 1024 * 1024 * 1024 // 4 // 3


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_header_is_rejected_without_decoding() -> None:
    bomb = png_header_only(12_000, 10_000)  # 120 Mpx claimed by a tiny file, above the default limit
    with pytest.raises(DatasetError, match="bomb.png: image is 12000x10000"):
        inspect_image(bomb, "bomb.png")
    huge = png_header_only(100_000, 100_000)  # above Pillow's own hard limit too
    with pytest.raises(DatasetError, match="bomb.png: image is too large"):
        inspect_image(huge, "bomb.png")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.jpg: image file is missing"):
        inspect_image_file(tmp_path / "nope.jpg")


@pytest.mark.parametrize("kind", sorted(SPECIAL_KINDS))
def test_special_file_is_an_error_naming_its_type(tmp_path: Path, kind: str) -> None:
    path = make_special(tmp_path / "a.jpg", kind)
    match = f"a.jpg: cannot read image file \\(not a regular file but {re.escape(SPECIAL_KINDS[kind])}"
    with pytest.raises(DatasetError, match=match):
        finishes_within(10, lambda: inspect_image_file(path))


def test_decode_rgb_rejects_garbage() -> None:
    with pytest.raises(DatasetError, match="g.jpg: OpenCV cannot decode"):
        decode_rgb(b"not an image at all", "g.jpg")
    with pytest.raises(DatasetError, match="empty"):
        decode_rgb(b"", "g.jpg")


# --- image vs annotation ---------------------------------------------------------------------


def record_for(path: str, width: int, height: int) -> ImageRecord:
    return ImageRecord(image_id="a", split="train", path=path, width=width, height=height)


def test_png_named_jpg_is_a_mismatch() -> None:
    info = inspect_image(encode(smooth_rgb(), "PNG"), "a.jpg")
    reason = check_image_against_record(info, record_for("/data/JPEGImages/a.jpg", 64, 48), "a.xml")
    assert reason == "content is PNG but the file a.jpg is named .jpg"
    assert check_image_against_record(info, record_for("/data/a.PNG", 64, 48), "a.xml") is None
    reason = check_image_against_record(info, record_for("/data/noext", 64, 48), "a.xml")
    assert reason is not None and "has no extension" in reason


def test_size_disagreement_names_both_sizes() -> None:
    info = inspect_image(encode(smooth_rgb(64, 48), "JPEG"), "a.jpg")
    reason = check_image_against_record(info, record_for("/data/a.jpg", 48, 64), "Annotations/a.xml")
    assert reason is not None
    assert "Annotations/a.xml gives the size 48x64" in reason and "a.jpg is 64x48" in reason
    assert check_image_against_record(info, record_for("/data/a.jpeg", 64, 48), "x") is None


def pil_header(data: bytes) -> tuple[int, int, str] | None:
    """The reference: PIL's own reading of a JPEG header (None when PIL refuses or it is not a plain JPEG)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or "exif" in im.info:
                return None
            return im.size[0], im.size[1], im.mode
    except Exception:
        return None


def jpeg_variants() -> list[bytes]:
    arr = smooth_rgb(96, 64, seed=3)
    return [
        encode(arr, "JPEG"),
        encode(arr, "JPEG", "L"),
        encode(arr, "JPEG", "CMYK"),
        encode(arr, "JPEG", progressive=True, optimize=True),
        encode(arr, "JPEG", quality=100, subsampling=0),
        encode(arr, "JPEG", exif=Image.Exif().tobytes()),
        encode(arr, "JPEG", icc_profile=b"\0" * 300),
        encode(arr, "JPEG", comment=b"hello"),
        encode(arr, "JPEG", dpi=(300, 300)),
    ]


def test_plain_jpeg_header_agrees_with_pil_on_every_real_and_made_jpeg(shared_data: Path) -> None:
    files = [p.read_bytes() for p in sorted(shared_data.glob("**/*.jpg"))]
    assert len(files) > 100
    fast = 0
    for data in files + jpeg_variants():
        ours = _plain_jpeg_header(data)
        if ours is not None:  # when the fast path answers, it answers exactly as PIL
            assert ours == pil_header(data)
            fast += 1
        else:  # and it answers for every ordinary file: only EXIF (orientation) is left to PIL
            with Image.open(io.BytesIO(data)) as im:
                assert "exif" in im.info
    assert fast > len(files) // 2


def test_plain_jpeg_header_never_accepts_what_pil_reads_differently() -> None:
    """Corrupt header bytes at random: whatever the fast path still accepts, PIL reads the same way."""
    rng = np.random.default_rng(0)
    accepted = 0
    for base in jpeg_variants():
        header_end = base.index(b"\xff\xda") + 20
        for _ in range(300):
            data = bytearray(base)
            for pos in rng.integers(2, header_end, rng.integers(1, 4)):
                data[pos] = int(rng.integers(0, 256))
            data = bytes(data[: int(rng.integers(header_end - 30, len(data) + 1))])
            ours = _plain_jpeg_header(data)
            if ours is not None:
                assert ours == pil_header(data), data[:header_end].hex()
                accepted += 1
    assert accepted > 100  # the mutations did exercise the accepting path


def test_inspect_image_fast_path_gives_the_same_info_and_errors_as_pil() -> None:
    arr = smooth_rgb(80, 60, seed=5)
    for mode in (None, "L", "CMYK"):
        data = encode(arr, "JPEG", mode)
        assert _plain_jpeg_header(data) is not None
        info = inspect_image(data, "x.jpg")
        with Image.open(io.BytesIO(data)) as im:
            assert info == ImageInfo("JPEG", im.size[0], im.size[1], im.mode, None, len(data))
        with pytest.raises(DatasetError, match="truncated JPEG"):
            inspect_image(data[:-200], "x.jpg")
        with pytest.raises(DatasetError, match="above the limit"):
            inspect_image(data, "x.jpg", max_pixels=80 * 60 - 1)


@pytest.mark.parametrize(
    "path",
    [
        "a/b.jpg",
        "a/b.JPEG",
        "b.tar.gz",
        "a/b.",
        "a/.jpg",
        "a/b",
        "a.d/b",
        "a/b.jpg/",
        "a/b.jpg/.",
        "a/..",
        "é.Png",
        "x/y..jpg",
    ],
)
def test_plain_suffix_is_pathlib_suffix_or_declines(path: str) -> None:
    fast = _plain_suffix(path)
    assert fast is None or fast == Path(path).suffix.lower()
    assert fast is not None or path.endswith(("/", "/.", ".."))
