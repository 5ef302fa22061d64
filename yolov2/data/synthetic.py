"""The generated demo dataset: coloured shapes on textured noisy backgrounds, written as real VOC + COCO.

Why generated: ``make demo`` must run with no download, and a small YOLOv2 must learn it on a CPU in
minutes. It is not trivial: five shape classes (:data:`SHAPE_CLASSES`) whose colour is drawn
independently of the class (colour says nothing about the class), log-uniform sizes from ``min_size``
(14 px by default; the demo config sets its own) to 45% of the shorter image side, random rotation and
aspect, overlaps (each object stays at least ``min_visible`` visible), textured backgrounds (smooth colour
blobs or gradients, sometimes stripes) and Gaussian pixel noise, 0 to ``max_objects`` objects per image.

Determinism: image ``index`` of ``split`` is drawn from its own generator
``numpy.random.default_rng([seed, crc32(split), index])``, so it does not depend on any other image
and a split can be generated in chunks, in any order, on any worker, with identical bytes.

Coordinates: shape polygons and boxes are absolute pixels, 0-based continuous, xyxy (pixel ``i``
covers ``[i, i + 1)``). Each box is the tight box of the shape's rasterised mask (anti-aliased
coverage >= 50%), so it is integer-aligned and survives VOC's 1-based inclusive integer coordinates
exactly: ``xmin = x1 + 1, xmax = x2``.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from yolov2.config import SyntheticConfig
from yolov2.data import coco as coco_io
from yolov2.data.records import ImageRecord
from yolov2.data.voc import write_voc_annotation
from yolov2.errors import ConfigError, DatasetError
from yolov2.io import atomic_write_bytes, atomic_write_text
from yolov2.progress import Progress, track

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# Bump when the drawing changes: the marker then no longer matches and the dataset is regenerated.
GENERATOR_VERSION = 1

MIN_OBJECT_SIZE = 14.0  # pixels: the smallest shape's nominal size
MAX_OBJECT_FRACTION = 0.45  # the largest shape's nominal size, as a fraction of the shorter side
MIN_VISIBLE = 0.4  # every object keeps at least this fraction of its mask visible
JPEG_QUALITY = 90
MARKER_NAME = "synthetic.json"  # the parameters, written last: its presence means "complete"
IN_PROGRESS_NAME = ".synthetic-in-progress"  # present while a run writes (or after one was killed)

# Object colours (RGB), jittered per object; none is tied to a class.
_PALETTE = np.array(
    [
        (220, 40, 40),
        (40, 170, 60),
        (40, 80, 220),
        (235, 215, 40),
        (40, 200, 210),
        (210, 60, 200),
        (245, 140, 30),
        (245, 245, 245),
        (25, 25, 25),
        (130, 60, 180),
        (140, 90, 40),
        (150, 150, 150),
    ],
    np.float32,
)
_MIN_CONTRAST = 70.0  # RGB distance between an object's colour and the mean background under it
_PLACEMENT_TRIES = 20
_SUPERSAMPLE = 4  # anti-aliasing: coverage is measured on a 4x4 grid per pixel
_SHIFT = 4  # OpenCV fractional bits of the vertices (1/16 of a subpixel)
# Pixel noise: standard normal quantiles at 256 levels, indexed by random bytes (5x faster than
# drawing normals, and indistinguishable as image noise).
_GAUSSIAN_LUT = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)


@dataclass(frozen=True)
class Shape:
    """One drawn object. polygon (float64[K, 2]): x, y in absolute pixels, 0-based continuous."""

    label: int
    colour: tuple[int, int, int]
    polygon: np.ndarray
    box: tuple[int, int, int, int]  # tight xyxy box of the rasterised mask (integers, x2/y2 exclusive)


@dataclass(frozen=True)
class SyntheticScene:
    """A generated image (uint8[H, W, 3], RGB), its record and the shapes drawn, in drawing order."""

    image: np.ndarray
    record: ImageRecord
    shapes: tuple[Shape, ...]


def image_id_for(split: str, index: int) -> str:
    """The VOC id (file stem) of image ``index`` of ``split``, e.g. ``train_000042``."""
    return f"{split}_{index:06d}"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image, independent of every other image's."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def unit_polygon(label: int) -> np.ndarray:
    """Vertices (float64[K, 2]) of class ``label``'s shape, centred at 0, about 1 unit across."""
    name = SHAPE_CLASSES[label]
    if name == "circle":
        t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        return 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "square":
        return np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)])
    if name == "triangle":  # equilateral, circumradius 0.55 (side 0.95)
        t = np.deg2rad([-90.0, 30.0, 150.0])
        return 0.55 * np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "star":  # five points, inner radius 0.4 of the outer one
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 0.55, 0.22)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if name == "cross":  # a plus sign with arms 0.34 wide
        a, w = 0.5, 0.17
        return np.array(
            [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        )
    raise ValueError(f"unknown shape label {label}")


def generate_scene(
    seed: int,
    index: int,
    split: str,
    width: int,
    height: int,
    max_objects: int,
    *,
    min_size: float = MIN_OBJECT_SIZE,
    max_fraction: float = MAX_OBJECT_FRACTION,
    min_visible: float = MIN_VISIBLE,
    palette: np.ndarray | None = None,
) -> SyntheticScene:
    """Draw image ``index`` of ``split``: background, 0..max_objects shapes, then pixel noise.

    ``palette`` (float32[K, 3] RGB): the object colours to draw from (None: all twelve of the generator's); a
    subset keeps some colours unseen (``yolov2.data.shapes9k``). The default draws exactly what it always did.
    """
    palette = _PALETTE if palette is None else np.asarray(palette, np.float32).reshape(-1, 3)
    if len(palette) == 0:
        raise ConfigError("generate_scene: the palette has no colour")
    rng = image_rng(seed, split, index)
    image = _background(rng, width, height)
    owner = np.full((height, width), -1, np.int16)  # which shape each pixel shows (hard masks)
    areas: list[int] = []
    visible: list[int] = []
    shapes: list[Shape] = []
    max_size = max(min_size, max_fraction * min(width, height))
    for _ in range(int(rng.integers(0, max_objects + 1))):
        label = int(rng.integers(len(SHAPE_CLASSES)))
        for _try in range(_PLACEMENT_TRIES):
            polygon = _random_pose(rng, unit_polygon(label), min_size, max_size, width, height)
            x0, y0, alpha = _rasterise(polygon, width, height)
            mask = alpha >= 128
            if not mask.any():
                continue
            covered = owner[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(areas))
            if all(visible[j] - lost[j] >= min_visible * areas[j] for j in range(len(areas))):
                break
        else:
            continue  # no placement keeps the earlier shapes visible enough: skip this object
        colour = _pick_colour(rng, image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask], palette)
        _composite(image, x0, y0, alpha, colour)
        for j, n in enumerate(lost):
            visible[j] -= int(n)
        region = owner[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        region[mask] = len(shapes)
        areas.append(int(mask.sum()))
        visible.append(areas[-1])
        ys, xs = np.nonzero(mask)
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        rgb = (int(colour[0]), int(colour[1]), int(colour[2]))
        shapes.append(Shape(label, rgb, polygon, box))
    sigma = np.float32(rng.uniform(3.0, 12.0))
    noise_bytes = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    image += cv2.LUT(noise_bytes, _GAUSSIAN_LUT) * sigma
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    image_id = image_id_for(split, index)
    record = ImageRecord(
        image_id=image_id,
        split=split,
        path=f"JPEGImages/{image_id}.jpg",
        width=width,
        height=height,
        boxes=np.array([s.box for s in shapes], np.float32).reshape(-1, 4),
        labels=np.array([s.label for s in shapes], np.int32),
        difficult=np.zeros(len(shapes), bool),
        iscrowd=np.zeros(len(shapes), bool),
    )
    return SyntheticScene(pixels, record, tuple(shapes))


def generate_image(
    seed: int, index: int, split: str, width: int, height: int, max_objects: int
) -> tuple[np.ndarray, ImageRecord]:
    """Image ``index`` of ``split`` as (uint8[H, W, 3] RGB, its record with xyxy pixel boxes), at the default
    difficulty (:func:`generate_scene` takes the size and visibility knobs)."""
    scene = generate_scene(seed, index, split, width, height, max_objects)
    return scene.image, scene.record


# --------------------------------------------------------------------------------------------
# Drawing


def _random_pose(
    rng: np.random.Generator, unit: np.ndarray, min_size: float, max_size: float, width: int, height: int
) -> np.ndarray:
    """Scale (log-uniform size, aspect 0.8..1.25), rotate and place a unit polygon inside the image."""
    size = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    scaled = unit * np.array([size * math.sqrt(aspect), size / math.sqrt(aspect)])
    c, s = math.cos(theta), math.sin(theta)
    pts = scaled @ np.array([[c, s], [-s, c]])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    # keep one pixel of margin so the anti-aliased edge stays inside the image
    cx = rng.uniform(1.0 - lo[0], max(1.0 - lo[0], width - 1.0 - hi[0]))
    cy = rng.uniform(1.0 - lo[1], max(1.0 - lo[1], height - 1.0 - hi[1]))
    return pts + np.array([cx, cy])


def _rasterise(polygon: np.ndarray, width: int, height: int) -> tuple[int, int, np.ndarray]:
    """Anti-aliased coverage (uint8 0..255) of ``polygon`` on the smallest patch holding it.

    Returns (x0, y0, alpha[h, w]): the patch's top-left pixel and its coverage, the fraction of
    the pixel inside the polygon. Computed by filling the polygon at ``_SUPERSAMPLE`` x resolution
    and averaging (OpenCV's own ``LINE_AA`` fill is about half a pixel too wide on every side).
    OpenCV puts integer coordinates at (sub)pixel centres, hence the -0.5; its fill rounds each
    span's ends outwards to the nearest subpixel, so edges are at most half a subpixel (1/8 px) out.
    """
    x0 = max(0, int(math.floor(polygon[:, 0].min())) - 1)
    y0 = max(0, int(math.floor(polygon[:, 1].min())) - 1)
    x1 = min(width, int(math.ceil(polygon[:, 0].max())) + 1)
    y1 = min(height, int(math.ceil(polygon[:, 1].max())) + 1)
    fine = np.zeros(((y1 - y0) * _SUPERSAMPLE, (x1 - x0) * _SUPERSAMPLE), np.uint8)
    sub = (polygon - np.array([x0, y0])) * _SUPERSAMPLE - 0.5
    pts = np.rint(sub * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(fine, [pts], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    alpha = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return x0, y0, alpha


def _pick_colour(rng: np.random.Generator, under: np.ndarray, palette: np.ndarray = _PALETTE) -> np.ndarray:
    """A jittered ``palette`` colour (float32[3]) that stands out from the background pixels ``under``."""
    mean = under.reshape(-1, 3).mean(axis=0)
    colour = palette[0]
    for _ in range(8):
        colour = np.clip(palette[rng.integers(len(palette))] + rng.uniform(-25, 25, 3), 0, 255)
        if np.linalg.norm(colour - mean) >= _MIN_CONTRAST:
            return colour.astype(np.float32)
    far = palette[np.argmax(np.linalg.norm(palette - mean, axis=1))]
    return far.astype(np.float32)


def _composite(image: np.ndarray, x0: int, y0: int, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Blend a flat ``colour`` into ``image`` (float32[H, W, 3]) in place, weighted by coverage ``alpha``."""
    h, w = alpha.shape
    a = (alpha.astype(np.float32) / 255.0)[:, :, None]
    patch = image[y0 : y0 + h, x0 : x0 + w]
    patch *= 1.0 - a
    patch += a * colour


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured background (float32[H, W, 3], 0..255): blobs or a gradient, sometimes stripes."""
    if rng.random() < 0.6:
        image = _blobs(rng, width, height)
    else:
        image = _gradient(rng, width, height)
    if rng.random() < 0.35:
        stripes = _stripes(rng, width, height)
        k = np.float32(rng.uniform(0.2, 0.5))
        image = image * (1 - k) + stripes * k
    return image.astype(np.float32)


def _blobs(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour blobs: a coarse grid of random colours upsampled with cubic interpolation."""
    gw, gh = int(rng.integers(2, 9)), int(rng.integers(2, 7))
    base = rng.uniform(0, 255, (int(rng.integers(2, 5)), 3))
    grid = base[rng.integers(len(base), size=(gh, gw))] + rng.normal(0, 20, (gh, gw, 3))
    grid = np.clip(grid, 0, 255).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _ramp(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """x cos(t) + y sin(t) for a random angle t: float32[H, W]."""
    t = rng.uniform(0.0, 2.0 * math.pi)
    xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(t))
    ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(t))
    return ys[:, None] + xs[None, :]


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A linear blend between two random colours along a random direction."""
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    r = _ramp(rng, width, height)
    t = ((r - r.min()) / max(float(r.max() - r.min()), 1e-6))[:, :, None]
    return t * (c1 - c0) + c0


def _stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Soft sinusoidal stripes of two random colours, period 8..40 px, random angle."""
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    period = np.float32(rng.uniform(8.0, 40.0))
    t = (0.5 + 0.5 * np.sin(np.float32(2 * math.pi) * _ramp(rng, width, height) / period))[:, :, None]
    return t * (c1 - c0) + c0


# --------------------------------------------------------------------------------------------
# Writing the VOC / COCO layout


def write_images(
    out_root: str | Path,
    *,
    seed: int,
    split: str,
    indices: Iterable[int],
    width: int,
    height: int,
    max_objects: int,
    min_size: float = MIN_OBJECT_SIZE,
    min_visible: float = MIN_VISIBLE,
) -> list[ImageRecord]:
    """Generate and write ``JPEGImages/<id>.jpg`` and ``Annotations/<id>.xml`` for some indices.

    The unit of parallel work: any chunk of a split, in any order, gives the same files. Returns the
    records (``path`` absolute). Each file is written atomically.
    """
    out_root = Path(out_root)
    records = []
    for index in indices:
        scene = generate_scene(
            seed, index, split, width, height, max_objects, min_size=min_size, min_visible=min_visible
        )
        record = scene.record
        ok, jpeg = cv2.imencode(".jpg", scene.image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode {record.image_id}.jpg")
        image_path = out_root / "JPEGImages" / f"{record.image_id}.jpg"
        atomic_write_bytes(image_path, jpeg.tobytes())
        record.path = str(image_path)
        write_voc_annotation(record, SHAPE_CLASSES, out_root / "Annotations" / f"{record.image_id}.xml")
        records.append(record)
    return records


def write_synthetic_dataset(
    out_root: str | Path,
    *,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    max_objects: int = 8,
    splits: Mapping[str, int] | None = None,
    write_coco: bool = True,
    progress: bool = False,
    min_size: float = MIN_OBJECT_SIZE,
    min_visible: float = MIN_VISIBLE,
) -> Path:
    """Write the whole dataset as a VOC layout (+ COCO JSON) under ``out_root``; returns ``out_root``.

    Layout: ``JPEGImages/<id>.jpg`` (JPEG quality 90), ``Annotations/<id>.xml`` (VOC: 1-based
    inclusive pixels), ``ImageSets/Main/<split>.txt``, and with ``write_coco``
    ``annotations/instances_<split>.json`` (``file_name`` relative to ``JPEGImages/``, category ids
    1..5 in :data:`SHAPE_CLASSES` order, annotation ids from 1). ``synthetic.json`` (the parameters)
    is written last: when it already holds the same parameters nothing is regenerated. A rerun
    with the same parameters gives byte-identical files; files of an earlier, different run that
    the new one does not produce are removed. A non-empty folder this function did not write
    (no ``synthetic.json`` nor ``.synthetic-in-progress``) is refused, so a real dataset given
    by mistake is never overwritten.
    """
    out_root = Path(out_root)
    splits = dict(splits if splits is not None else {"train": 400, "val": 60, "test": 60})
    marker = _marker_text(seed, width, height, max_objects, splits, write_coco, min_size, min_visible)
    marker_path = out_root / MARKER_NAME
    if marker_path.is_file() and marker_path.read_text(encoding="utf-8") == marker:
        return out_root
    in_progress = out_root / IN_PROGRESS_NAME
    if out_root.is_dir() and any(out_root.iterdir()) and not (marker_path.is_file() or in_progress.is_file()):
        raise DatasetError(
            f"{out_root}: refusing to write the synthetic dataset into a non-empty folder it did not create "
            f"(no {MARKER_NAME}); choose an empty or new folder"
        )
    atomic_write_text(in_progress, marker)  # this folder is ours, even if the run is killed from here on
    marker_path.unlink(missing_ok=True)
    keep: set[str] = set()
    images = Progress("synthetic", sum(splits.values()), "images") if progress else None
    for split, count in splits.items():
        indices: Iterable[int] = range(count) if images is None else track(range(count), images)
        records = write_images(
            out_root,
            seed=seed,
            split=split,
            indices=indices,
            width=width,
            height=height,
            max_objects=max_objects,
            min_size=min_size,
            min_visible=min_visible,
        )
        ids = [r.image_id for r in records]
        keep.update(ids)
        atomic_write_text(out_root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        if write_coco:
            coco_path = out_root / "annotations" / f"instances_{split}.json"
            coco_io.write_coco(records, SHAPE_CLASSES, coco_path, image_dir=out_root / "JPEGImages")
    if images is not None:
        images.close()
    _remove_stale(out_root, keep, set(splits), write_coco)
    atomic_write_text(marker_path, marker)
    in_progress.unlink()
    return out_root


def write_synthetic_from_config(cfg: SyntheticConfig, out_root: str | Path, *, progress: bool = False) -> Path:
    """:func:`write_synthetic_dataset` from a ``yolov2.config.SyntheticConfig`` (the stage's edge)."""
    width, height = cfg.image_size
    if not (0 < cfg.min_object_size <= min(width, height)) or not (0.0 <= cfg.min_visible <= 1.0):
        raise ConfigError(
            f"data.synthetic: min_object_size must be in (0, {min(width, height)}] and min_visible in [0, 1], "
            f"got {cfg.min_object_size} and {cfg.min_visible}"
        )
    return write_synthetic_dataset(
        out_root,
        seed=cfg.seed,
        width=width,
        height=height,
        max_objects=cfg.max_objects,
        splits={"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test},
        write_coco=cfg.write_coco,
        progress=progress,
        min_size=cfg.min_object_size,
        min_visible=cfg.min_visible,
    )


def _marker_text(
    seed: int,
    width: int,
    height: int,
    max_objects: int,
    splits: Mapping[str, int],
    write_coco: bool,
    min_size: float = MIN_OBJECT_SIZE,
    min_visible: float = MIN_VISIBLE,
) -> str:
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "width": int(width),
        "height": int(height),
        "max_objects": int(max_objects),
        "splits": {k: int(v) for k, v in splits.items()},
        "write_coco": bool(write_coco),
        "class_names": list(SHAPE_CLASSES),
        "jpeg_quality": JPEG_QUALITY,
    }
    if (min_size, min_visible) != (MIN_OBJECT_SIZE, MIN_VISIBLE):  # absent at the defaults: older markers still match
        params.update(min_size=float(min_size), min_visible=float(min_visible))
    return json.dumps(params, indent=2, sort_keys=True) + "\n"


def _remove_stale(out_root: Path, keep_ids: set[str], splits: set[str], write_coco: bool) -> None:
    """Delete files an earlier run with other parameters wrote and this run did not."""
    for folder, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".xml")):
        for path in (out_root / folder).glob(f"*{suffix}"):
            if path.stem not in keep_ids:
                path.unlink()
    for path in (out_root / "ImageSets" / "Main").glob("*.txt"):
        if path.stem not in splits:
            path.unlink()
    for path in (out_root / "annotations").glob("instances_*.json"):
        if not write_coco or path.stem.removeprefix("instances_") not in splits:
            path.unlink()
