"""Image + box transforms: Darknet's YOLOv2 training augmentation, and the evaluation letterbox / resize.

Coordinates: every ``boxes`` array here is float32[N, 4] **xyxy in absolute pixels, 0-based continuous**, of the
image it comes with (records' convention); outputs are in pixels of the output image. Images are uint8[H, W, 3].

Darknet's recipe (``load_data_detection`` of the YOLOv2 release, with ``crop_image`` / ``random_distort_image``):

1. **Crop with jitter.** ``dw = int(jitter * w)``; ``pleft, pright`` each ``int(U(-dw, dw))`` (likewise ``ptop,
   pbot`` with ``dh``); the window ``[pleft, w - pright) x [ptop, h - pbot)`` is cut out, where it extends past the
   image the edge pixels are repeated (``crop_image`` clamps coordinates), then resized (bilinear) to the network
   size: translation, zoom and an aspect change in one step.
2. **Flip** left-right with probability 0.5.
3. **HSV distortion.** ``dhue = U(-hue, hue)`` (fraction of the hue circle, added with wrap-around),
   ``dsat = rand_scale(saturation)``, ``dexp = rand_scale(exposure)`` where ``rand_scale(s)`` is ``U(1, s)``,
   inverted with probability 0.5; S and V are multiplied, then the image is converted back and clipped to [0, 1].
4. **Boxes** follow the crop and flip, are clipped to the image, and dropped when narrower or shorter than 0.001 of
   the input (``fill_truth_detection``); we also offer ``min_visibility`` (kept area / original area), default 0
   as in Darknet. An image may end up with no boxes.

How we make it fast (one decode, one resize, colour work at the output size):

* The crop+pad+resize is one ``cv2.resize`` of the in-image part of the window straight into its place in the
  output, plus edge replication of the padded strips: no full-size intermediate. The flip is done while the
  final output is written (into the caller's batch slot), not as a pass of its own.
* The HSV step is exact algebra on uint8, or moves to the device (``defer_color=True``): :mod:`yolov2.data.color`.

The building blocks are small pure functions (explicit numbers and a ``numpy.random.Generator``), used by the loader
directly; the box side of each step is in :mod:`yolov2.boxes` (``map_boxes``, ``flip_boxes``, ``clip_boxes``, the
letterbox geometry). Mosaic and mixup are in :mod:`yolov2.data.mosaic`; the same blocks as albumentations
transforms, to combine with other albumentations transforms, in :mod:`yolov2.data.albumentations_ops`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np

from yolov2.boxes import clip_boxes, flip_boxes, letterbox_params, map_boxes
from yolov2.data.color import ColorJitter, darknet_color, sample_color_jitter
from yolov2.errors import ConfigError
from yolov2.preprocess import LETTERBOX_FILL_UINT8

__all__ = [
    "CropWindow",
    "Augmented",
    "sample_crop_window",
    "crop_placement",
    "placement_affine",
    "output_buffer",
    "crop_resize",
    "darknet_geometry",
    "mirror",
    "darknet_augment",
    "letterbox",
    "plain_resize",
    "eval_transform",
]


@dataclass(frozen=True)
class CropWindow:
    """Darknet's crop window in source pixels: ``[left, left + width) x [top, top + height)``.

    It may extend past the image on any side (Darknet's negative ``pleft`` etc.); those parts are edge pixels
    repeated. ``left = pleft``, ``top = ptop``, ``width = w - pleft - pright``, ``height = h - ptop - pbot``.
    """

    left: int
    top: int
    width: int
    height: int


class Augmented(NamedTuple):
    """An image with its boxes after a transform.

    image (uint8[S_h, S_w, 3]) RGB; boxes (float32[K, 4]) xyxy pixels of ``image``; labels (int64[K]);
    color: a colour distortion drawn but not yet applied to ``image`` (``defer_color``), else None.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    color: ColorJitter | None = None


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def sample_crop_window(width: int, height: int, jitter: float, rng: np.random.Generator) -> CropWindow:
    """Darknet's ``pleft/pright/ptop/pbot``: each ``int(U(-d, d))`` with ``d = int(jitter * side)`` (C truncation)."""
    if not 0.0 <= jitter < 0.5:
        raise ConfigError(f"jitter must be in [0, 0.5) so the crop window stays non-empty, got {jitter}")
    dw, dh = int(width * jitter), int(height * jitter)
    # U(-d, d) is d * U(-1, 1); int() truncates toward zero like C's float -> int conversion.
    pleft, pright, ptop, pbot = (int(u * d) for u, d in zip(rng.uniform(-1.0, 1.0, 4).tolist(), (dw, dw, dh, dh)))
    return CropWindow(pleft, ptop, width - pleft - pright, height - ptop - pbot)


def crop_placement(
    width: int, height: int, window: CropWindow, out_w: int, out_h: int
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where the in-image part of ``window`` lands in the ``out_w x out_h`` output, in whole pixels.

    Returns ``(src, dst)``: ``src = (x0, y0, x1, y1)`` the part of the window inside the ``width x height`` image,
    ``dst = (u0, v0, u1, v1)`` its place in the output (rounded to whole pixels, at least one pixel wide).
    """
    x0, x1 = max(window.left, 0), min(window.left + window.width, width)
    y0, y1 = max(window.top, 0), min(window.top + window.height, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop window {window} does not overlap the {width}x{height} image")
    fx, fy = out_w / window.width, out_h / window.height
    u0 = min(max(round((x0 - window.left) * fx), 0), out_w - 1)
    v0 = min(max(round((y0 - window.top) * fy), 0), out_h - 1)
    u1 = min(max(round((x1 - window.left) * fx), u0 + 1), out_w)
    v1 = min(max(round((y1 - window.top) * fy), v0 + 1), out_h)
    return (x0, y0, x1, y1), (u0, v0, u1, v1)


def placement_affine(
    src: tuple[int, int, int, int], dst: tuple[int, int, int, int]
) -> tuple[float, float, float, float]:
    """The map ``(sx, sy, tx, ty)`` (``u = x * sx + tx``) that sends rectangle ``src`` onto ``dst`` (both xyxy)."""
    (x0, y0, x1, y1), (u0, v0, u1, v1) = src, dst
    sx, sy = (u1 - u0) / (x1 - x0), (v1 - v0) / (y1 - y0)
    return sx, sy, u0 - x0 * sx, v0 - y0 * sy


def output_buffer(out: np.ndarray | None, height: int, width: int, like: np.ndarray) -> np.ndarray:
    """``out`` checked to be (height, width, C) uint8 like ``like``, or a new such array."""
    shape = (height, width) + like.shape[2:]
    if out is None:
        return np.empty(shape, like.dtype)
    if out.shape != shape or out.dtype != like.dtype:
        raise ValueError(f"output buffer is {out.shape} {out.dtype}, expected {shape} {like.dtype}")
    return out


def crop_resize(
    image: np.ndarray, window: CropWindow, out_w: int, out_h: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Cut ``window`` out of ``image`` (edges repeated outside it) and resize it to ``out_w x out_h``, bilinear.

    The part of the window inside the image is resized straight into its place in the output
    (:func:`crop_placement`) and the strips around it repeat its edge pixels (Darknet's clamped ``crop_image``,
    ``BORDER_REPLICATE``): one pass, no intermediate image. ``out``: an optional (out_h, out_w, C) buffer to
    write into. Returns the output image (channel order of the input) and the affine map ``(sx, sy, tx, ty)``
    from source to output pixels (``u = x * sx + tx``) that the resized pixels follow; map boxes with it.
    """
    h, w = image.shape[:2]
    src, dst = crop_placement(w, h, window, out_w, out_h)
    (x0, y0, x1, y1), (u0, v0, u1, v1) = src, dst
    out = output_buffer(out, out_h, out_w, image)
    cv2.resize(image[y0:y1, x0:x1], (u1 - u0, v1 - v0), dst=out[v0:v1, u0:u1], interpolation=cv2.INTER_LINEAR)
    # Edge replication: nearest-neighbour "resize" of the edge column does the side strips in C (a NumPy
    # broadcast there costs as much as the resize itself); whole rows copy fast.
    if u0:
        cv2.resize(out[v0:v1, u0 : u0 + 1], (u0, v1 - v0), dst=out[v0:v1, :u0], interpolation=cv2.INTER_NEAREST)
    if u1 < out_w:
        cv2.resize(out[v0:v1, u1 - 1 : u1], (out_w - u1, v1 - v0), dst=out[v0:v1, u1:], interpolation=cv2.INTER_NEAREST)
    if v0:
        out[:v0] = out[v0]
    if v1 < out_h:
        out[v1:] = out[v1 - 1]
    return out, placement_affine(src, dst)


# ---------------------------------------------------------------------------------------------
# The whole recipe
# ---------------------------------------------------------------------------------------------


def darknet_geometry(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    out_w: int,
    out_h: int,
    jitter: float,
    flip: bool,
    min_visibility: float,
    rng: np.random.Generator,
    out: np.ndarray | None = None,
) -> tuple[Augmented, bool]:
    """Darknet crop + resize to (out_w, out_h) into ``out``; boxes mapped, flipped if drawn, clipped, filtered.

    The flip is drawn here and applied to the boxes but NOT to the pixels (returned as a flag): the caller
    mirrors the pixels in place after its colour step (:func:`mirror`), one pass instead of a copy.
    """
    h, w = image.shape[:2]
    window = sample_crop_window(w, h, jitter, rng)
    flipped = bool(flip and rng.random() < 0.5)
    pixels, affine = crop_resize(image, window, out_w, out_h, out)
    out_boxes = map_boxes(boxes, affine)
    if flipped:
        out_boxes = flip_boxes(out_boxes, out_w)
    out_boxes, keep = clip_boxes(out_boxes, out_w, out_h, min_visibility)
    return Augmented(pixels, out_boxes[keep], np.asarray(labels, np.int64).reshape(-1)[keep]), flipped


def mirror(image: np.ndarray, flipped: bool) -> np.ndarray:
    """Mirror ``image`` left-right in place when ``flipped`` (OpenCV's flip works in place)."""
    return cv2.flip(image, 1, dst=image) if flipped else image


def darknet_augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    jitter: float = 0.3,
    hue: float = 0.1,
    saturation: float = 1.5,
    exposure: float = 1.5,
    flip: bool = True,
    min_visibility: float = 0.0,
    defer_color: bool = False,
    out: np.ndarray | None = None,
) -> Augmented:
    """Darknet's YOLOv2 training transform of one image (module docstring), straight to the network size.

    image uint8[H, W, 3] RGB, boxes float[N, 4] xyxy pixels, labels int[N]; size: the square side or
    (width, height) of the network input; ``out``: an optional (h, w, 3) buffer for the result (a slot of the
    batch array). Returns RGB at that size with boxes in its pixels; ``rng`` makes it reproducible.
    ``defer_color``: draw the colour distortion but return it in ``Augmented.color`` instead of applying it.
    """
    out_w, out_h = (size, size) if isinstance(size, int) else size
    geo, flipped = darknet_geometry(image, boxes, labels, out_w, out_h, jitter, flip, min_visibility, rng, out)
    color = sample_color_jitter(hue, saturation, exposure, rng)
    if not defer_color:
        darknet_color(geo.image, color, out=geo.image)
    return Augmented(mirror(geo.image, flipped), geo.boxes, geo.labels, color if defer_color else None)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _letterbox_params(image_w: int, image_h: int, input_w: int, input_h: int) -> Any:
    """``yolov2.boxes.letterbox_params`` (the single source of the geometry), cached: it builds tensors."""
    return letterbox_params(image_w, image_h, input_w, input_h)


def letterbox(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int | tuple[int, int],
    fill: int = LETTERBOX_FILL_UINT8,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Darknet's ``letterbox_image`` on uint8: keep the aspect ratio, centre, pad with grey (``fill``).

    The uint8 twin of :func:`yolov2.preprocess.letterbox_tensor` (the float network input for inference): same
    geometry and grey, OpenCV's bilinear resize, written into ``out`` (a batch slot), boxes mapped along.
    The geometry is :func:`yolov2.boxes.letterbox_params` (integer sizes and offsets), the one
    ``yolov2.postprocess.to_image_pixels(..., letterbox=True)`` inverts (with Darknet's float padding, so half a
    pixel off when the padding is odd, as Darknet). Returns the image and boxes
    (float32[N, 4] xyxy pixels of the letterboxed image). Channel order is kept.
    """
    out_w, out_h = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    p = _letterbox_params(w, h, out_w, out_h)
    out = output_buffer(out, out_h, out_w, image)
    inner = out[p.pad_y : p.pad_y + p.new_h, p.pad_x : p.pad_x + p.new_w]
    cv2.resize(image, (p.new_w, p.new_h), dst=inner, interpolation=cv2.INTER_LINEAR)
    out[: p.pad_y] = fill
    out[p.pad_y + p.new_h :] = fill
    out[p.pad_y : p.pad_y + p.new_h, : p.pad_x] = fill
    out[p.pad_y : p.pad_y + p.new_h, p.pad_x + p.new_w :] = fill
    return out, map_boxes(boxes, (p.new_w / w, p.new_h / h, p.pad_x, p.pad_y))


def plain_resize(
    image: np.ndarray, boxes: np.ndarray, size: int | tuple[int, int], out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stretch to the input size (aspect not kept), as Darknet's ``validate_detector`` does; boxes follow."""
    out_w, out_h = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    out = cv2.resize(image, (out_w, out_h), dst=output_buffer(out, out_h, out_w, image), interpolation=cv2.INTER_LINEAR)
    return out, map_boxes(boxes, (out_w / w, out_h / h, 0.0, 0.0))


def eval_transform(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    size: int,
    use_letterbox: bool = True,
    out: np.ndarray | None = None,
) -> Augmented:
    """Deterministic evaluation input: letterbox or plain resize of an RGB image to ``size``."""
    pixels, out_boxes = (
        letterbox(image, boxes, size, out=out) if use_letterbox else plain_resize(image, boxes, size, out=out)
    )
    return Augmented(pixels, out_boxes, np.asarray(labels, np.int64).reshape(-1))
