"""Image + box transforms: Darknet's YOLOv2 training augmentation, mosaic/mixup options, and eval letterbox.

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
* The HSV step is exact algebra, not a float HSV round trip. Darknet's HSV->RGB is linear in V and in S for a fixed
  hue: each channel is ``V * (1 - S * k(h))``. So scaling S by ``a`` and V by ``b`` gives, per channel ``c`` with
  ``V = max(r, g, b)``, ``b * (V + a * (c - V))`` — one ``cv2.addWeighted`` with saturation = Darknet's final
  clip, exact even where ``S * a > 1`` or ``V * b > 1`` (Darknet does not clip S or V before converting back).
  Only the hue shift needs HSV: one uint8 ``cvtColor`` round trip with the hue channel shifted (OpenCV's
  ``HSV_FULL`` hue has 256 steps per circle, so the shift is rounded to 1/256 of the circle; uint8 HSV also
  quantises S, which moves a channel by a few levels at most, see the tests).
* Decoding writes RGB directly (``IMREAD_COLOR_RGB``).
* Or the colour step moves to the device: ``defer_color=True`` draws the distortion but leaves the pixels alone
  (``Augmented.color``), and :func:`darknet_color_tensor` applies Darknet's float formula to the whole batch on
  the GPU, exactly (no 8-bit HSV rounding) and at no cost there. On the CPU the uint8 HSV round trip costs about
  half a JPEG decode, so this is the fast path for GPU training.

The building blocks are small pure functions (explicit numbers and a ``numpy.random.Generator``), used by the loader
directly. The same blocks are also wrapped as albumentations transforms (:class:`DarknetCropResize`,
:class:`DarknetHSV`, :func:`darknet_compose`) to combine with any other albumentations transform; the loader does
not go through ``A.Compose`` because its per-call box bookkeeping measured about 0.4-0.6 ms per sample here, a
third of the decode+resize budget.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import albumentations as A
import cv2
import numpy as np
import torch

from yolov2.errors import ConfigError
from yolov2.postprocess import letterbox_params

__all__ = [
    "LETTERBOX_FILL",
    "DARKNET_MIN_BOX",
    "CropWindow",
    "ColorJitter",
    "Augmented",
    "decode_image",
    "sample_crop_window",
    "sample_color_jitter",
    "crop_placement",
    "placement_affine",
    "crop_resize",
    "map_boxes",
    "flip_boxes",
    "clip_boxes",
    "darknet_color",
    "darknet_color_tensor",
    "color_params",
    "darknet_augment",
    "mosaic4",
    "mixup",
    "letterbox",
    "plain_resize",
    "eval_transform",
    "DarknetCropResize",
    "DarknetHSV",
    "darknet_compose",
]

LETTERBOX_FILL = 127  # Darknet's 0.5 grey in uint8 (training); eval's float letterbox has 0.5 (yolov2.preprocess)
DARKNET_MIN_BOX = 0.001  # fill_truth_detection drops boxes with w or h < .001 of the input


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


@dataclass(frozen=True)
class ColorJitter:
    """One draw of Darknet's HSV distortion: hue shift (fraction of the circle), saturation and value factors."""

    dhue: float = 0.0
    dsat: float = 1.0
    dexp: float = 1.0


class Augmented(NamedTuple):
    """An image with its boxes after a transform.

    image (uint8[S_h, S_w, 3]) RGB; boxes (float32[K, 4]) xyxy pixels of ``image``; labels (int64[K]);
    color: a colour distortion drawn but not yet applied to ``image`` (``defer_color``), else None.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    color: ColorJitter | None = None


def decode_image(data: bytes) -> np.ndarray:
    """Decode encoded image bytes straight to uint8[H, W, 3] RGB, EXIF orientation ignored.

    Same pixels as ``yolov2.data.images.decode_rgb`` (OpenCV, orientation ignored, grey/alpha -> RGB), but
    libjpeg-turbo writes RGB directly (``IMREAD_COLOR_RGB``), saving a full-size channel swap. Raises
    ValueError on undecodable bytes (the loader adds the shard and key).
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError("OpenCV cannot decode this image (corrupt or unsupported format)")
    return image


# ---------------------------------------------------------------------------------------------
# Random draws (Darknet's distributions)
# ---------------------------------------------------------------------------------------------


def sample_crop_window(width: int, height: int, jitter: float, rng: np.random.Generator) -> CropWindow:
    """Darknet's ``pleft/pright/ptop/pbot``: each ``int(U(-d, d))`` with ``d = int(jitter * side)`` (C truncation)."""
    if not 0.0 <= jitter < 0.5:
        raise ConfigError(f"jitter must be in [0, 0.5) so the crop window stays non-empty, got {jitter}")
    dw, dh = int(width * jitter), int(height * jitter)
    # U(-d, d) is d * U(-1, 1); int() truncates toward zero like C's float -> int conversion.
    pleft, pright, ptop, pbot = (int(u * d) for u, d in zip(rng.uniform(-1.0, 1.0, 4).tolist(), (dw, dw, dh, dh)))
    return CropWindow(pleft, ptop, width - pleft - pright, height - ptop - pbot)


def _rand_scale(scale: float, rng: np.random.Generator) -> float:
    """Darknet's ``rand_scale``: ``U(1, s)``, inverted with probability 0.5 (not uniform on [1/s, s])."""
    value = float(rng.uniform(1.0, scale)) if scale > 1.0 else 1.0
    return value if rng.random() < 0.5 else 1.0 / value


def sample_color_jitter(hue: float, saturation: float, exposure: float, rng: np.random.Generator) -> ColorJitter:
    """Darknet's ``random_distort_image`` draws: ``dhue = U(-hue, hue)``, ``rand_scale`` for S and V."""
    if hue < 0 or saturation < 1 or exposure < 1:
        raise ConfigError(f"need hue >= 0, saturation >= 1, exposure >= 1; got {hue}, {saturation}, {exposure}")
    dhue = float(rng.uniform(-hue, hue)) if hue > 0 else 0.0
    return ColorJitter(dhue, _rand_scale(saturation, rng), _rand_scale(exposure, rng))


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


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


def _output(out: np.ndarray | None, height: int, width: int, like: np.ndarray) -> np.ndarray:
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
    out = _output(out, out_h, out_w, image)
    cv2.resize(image[y0:y1, x0:x1], (u1 - u0, v1 - v0), dst=out[v0:v1, u0:u1], interpolation=cv2.INTER_LINEAR)
    # Edge replication: nearest-neighbour "resize" of the edge column does the side strips in C (a NumPy
    # broadcast there costs as much as the resize itself); whole rows copy fast.
    if u0:
        cv2.resize(out[v0:v1, u0:u0 + 1], (u0, v1 - v0), dst=out[v0:v1, :u0], interpolation=cv2.INTER_NEAREST)
    if u1 < out_w:
        cv2.resize(out[v0:v1, u1 - 1:u1], (out_w - u1, v1 - v0), dst=out[v0:v1, u1:],
                   interpolation=cv2.INTER_NEAREST)
    if v0:
        out[:v0] = out[v0]
    if v1 < out_h:
        out[v1:] = out[v1 - 1]
    return out, placement_affine(src, dst)


def map_boxes(boxes: np.ndarray, affine: tuple[float, float, float, float]) -> np.ndarray:
    """boxes (float[N, 4]) xyxy through ``u = x * sx + tx, v = y * sy + ty`` (sx, sy > 0) -> float32[N, 4]."""
    sx, sy, tx, ty = affine
    scale = np.array([sx, sy, sx, sy], np.float32)
    offset = np.array([tx, ty, tx, ty], np.float32)
    return np.asarray(boxes, np.float32).reshape(-1, 4) * scale + offset


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror boxes (float[N, 4] xyxy pixels) left-right in an image ``width`` wide: ``x -> width - x``."""
    flipped = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    flipped[:, [0, 2]] = width - flipped[:, [2, 0]]
    return flipped


def clip_boxes(
    boxes: np.ndarray, width: int, height: int, min_visibility: float = 0.0, min_size: float = DARKNET_MIN_BOX
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes (float[N, 4] xyxy pixels) to ``[0, width] x [0, height]`` and say which to keep.

    A box is kept when its clipped width >= ``min_size * width`` and height >= ``min_size * height`` (Darknet's
    0.001 rule) and its clipped area is at least ``min_visibility`` of its unclipped area.
    Returns ``(clipped float32[N, 4], keep bool[N])``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    limits = np.array([width, height, width, height], np.float32)
    clipped = np.minimum(np.maximum(boxes, 0.0), limits)
    wh = clipped[:, 2:] - clipped[:, :2]
    keep = (wh >= min_size * limits[:2]).all(axis=1)
    if min_visibility > 0:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep &= wh[:, 0] * wh[:, 1] >= min_visibility * np.maximum(area, np.finfo(np.float32).tiny)
    return clipped, keep


# ---------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------


def darknet_color(image: np.ndarray, jitter: ColorJitter, out: np.ndarray | None = None) -> np.ndarray:
    """Darknet's ``distort_image`` on a uint8 RGB image (written into ``out`` if given, which may be ``image``).

    Per pixel, with ``V = max(r, g, b)`` and ``c`` each channel after the hue shift:
    ``out = clip(dexp * (V + dsat * (c - V)))``, exactly Darknet's scale-S, scale-V, HSV->RGB, clip (module
    docstring). The hue shift is ``round(dhue * 256)`` steps of OpenCV's 8-bit ``HSV_FULL`` hue, with wrap-around.
    """
    shift = int(round(jitter.dhue * 256)) % 256
    gain, offset = jitter.dexp * jitter.dsat, jitter.dexp * (1.0 - jitter.dsat)
    value = None
    if shift:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
        hsv[..., 0] += np.uint8(shift)  # uint8 arithmetic wraps modulo 256 = one full hue circle (in place)
        value = cv2.extractChannel(hsv, 2)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL, dst=hsv)
    else:
        rgb = image
    if abs(offset) < 1e-12:
        if abs(gain - 1.0) < 1e-12:
            if out is None:
                return rgb.copy() if rgb is image else rgb
            np.copyto(out, rgb)
            return out
        return cv2.convertScaleAbs(rgb, alpha=gain, dst=out)  # saturating multiply (inputs are non-negative)
    if value is None:
        value = cv2.max(cv2.max(cv2.extractChannel(rgb, 0), cv2.extractChannel(rgb, 1)), cv2.extractChannel(rgb, 2))
    return cv2.addWeighted(rgb, gain, cv2.cvtColor(value, cv2.COLOR_GRAY2RGB), offset, 0.0, dst=out)


def color_params(jitters: Sequence[ColorJitter | None]) -> torch.Tensor:
    """Per-image draws as Tensor[B, 3] float32 ``(dhue, dsat, dexp)``; None (already applied) -> identity."""
    rows = [(0.0, 1.0, 1.0) if j is None else (j.dhue, j.dsat, j.dexp) for j in jitters]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 3)


def darknet_color_tensor(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Darknet's ``distort_image`` for a batch, in float: images (Tensor[B, 3, H, W]) RGB in [0, 1], params
    (Tensor[B, 3]) ``(dhue, dsat, dexp)`` per image (:func:`color_params`). Returns a new tensor in [0, 1].

    Exactly Darknet's ``rgb_to_hsv`` (hue in sixths, ``max == r`` checked first), S and V scaled without clipping,
    hue shifted with wrap-around, ``hsv_to_rgb`` (written as ``V - V*S*clamp(min(k, 4-k), 0, 1)``, ``k = (n + 6h)
    mod 6`` with n = 5, 3, 1 for r, g, b: the same six sectors) and the final clip. Runs where the tensors are.
    """
    params = params.to(images.device, images.dtype)
    red, green, blue = images.unbind(1)
    value, _ = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == red,
        (green - blue) / safe,
        torch.where(value == green, 2 + (blue - red) / safe, 4 + (red - green) / safe),
    )
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), 0.0)
    dhue, dsat, dexp = (params[:, i, None, None] for i in range(3))
    hue = torch.remainder(hue + 6 * dhue, 6.0)
    value = value * dexp
    scaled = value * saturation * dsat
    phase = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = torch.remainder(phase + hue[:, None], 6.0)
    out = value[:, None] - scaled[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0.0, 1.0)
    return out.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# The whole recipe, mosaic and mixup
# ---------------------------------------------------------------------------------------------


def _geometry(
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
    mirrors the pixels in place after its colour step (:func:`_mirror`), one pass instead of a copy.
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


def _mirror(image: np.ndarray, flipped: bool) -> np.ndarray:
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
    geo, flipped = _geometry(image, boxes, labels, out_w, out_h, jitter, flip, min_visibility, rng, out)
    color = sample_color_jitter(hue, saturation, exposure, rng)
    if not defer_color:
        darknet_color(geo.image, color, out=geo.image)
    return Augmented(_mirror(geo.image, flipped), geo.boxes, geo.labels, color if defer_color else None)


def mosaic4(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    size: int,
    rng: np.random.Generator,
    jitter: float = 0.3,
    hue: float = 0.1,
    saturation: float = 1.5,
    exposure: float = 1.5,
    min_visibility: float = 0.0,
    defer_color: bool = False,
    out: np.ndarray | None = None,
) -> Augmented:
    """Four RGB images in the four quadrants of a ``size x size`` canvas split at a random centre in [0.25, 0.75].

    Each image gets Darknet's crop + flip straight to its quadrant's size (one resize per image), boxes are
    clipped to their quadrant; one colour distortion for the whole canvas (or deferred, as in
    :func:`darknet_augment`).
    """
    if len(images) != 4:
        raise ValueError(f"mosaic4 needs 4 images, got {len(images)}")
    cx, cy = (int(round(v * size)) for v in rng.uniform(0.25, 0.75, 2).tolist())
    canvas = _output(out, size, size, images[0])
    all_boxes, all_labels = [], []
    quadrants = ((0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size))
    for (x0, y0, x1, y1), img, bxs, lbs in zip(quadrants, images, boxes, labels):
        quadrant = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        part, flipped = _geometry(img, bxs, lbs, x1 - x0, y1 - y0, jitter, True, min_visibility, rng, quadrant)
        canvas[y0:y1, x0:x1] = _mirror(part.image, flipped)
        all_boxes.append(part.boxes + np.array([x0, y0, x0, y0], np.float32))
        all_labels.append(part.labels)
    color = sample_color_jitter(hue, saturation, exposure, rng)
    if not defer_color:
        darknet_color(canvas, color, out=canvas)
    return Augmented(canvas, np.concatenate(all_boxes), np.concatenate(all_labels), color if defer_color else None)


def mixup(
    first: Augmented, second: Augmented, rng: np.random.Generator, alpha: float = 32.0, out: np.ndarray | None = None
) -> Augmented:
    """Blend two same-size samples with ``lam ~ Beta(alpha, alpha)`` (YOLOv5's 32: near 0.5); boxes of both kept.

    A deferred colour distortion of ``first`` applies to the blend; ``second``'s must already be applied or is
    dropped (colour is per image, the blend is one image).
    """
    if first.image.shape != second.image.shape:
        raise ValueError(f"mixup needs images of one shape, got {first.image.shape} and {second.image.shape}")
    lam = float(rng.beta(alpha, alpha))
    image = cv2.addWeighted(first.image, lam, second.image, 1.0 - lam, 0.0, dst=out)
    return Augmented(
        image, np.concatenate([first.boxes, second.boxes]), np.concatenate([first.labels, second.labels]), first.color
    )


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _letterbox_params(image_w: int, image_h: int, input_w: int, input_h: int) -> Any:
    """``postprocess.letterbox_params`` (the single source of the geometry), cached: it builds tensors."""
    return letterbox_params(image_w, image_h, input_w, input_h)


def letterbox(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int | tuple[int, int],
    fill: int = LETTERBOX_FILL,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Darknet's ``letterbox_image``: keep the aspect ratio, centre, pad with grey.

    The geometry is :func:`yolov2.postprocess.letterbox_params` (integer sizes and offsets), the one
    ``postprocess.to_image_pixels(..., letterbox=True)`` inverts (with Darknet's float padding, so half a
    pixel off when the padding is odd, as Darknet). Returns the image and boxes
    (float32[N, 4] xyxy pixels of the letterboxed image). Channel order is kept.
    """
    out_w, out_h = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    p = _letterbox_params(w, h, out_w, out_h)
    out = _output(out, out_h, out_w, image)
    inner = out[p.pad_y:p.pad_y + p.new_h, p.pad_x:p.pad_x + p.new_w]
    cv2.resize(image, (p.new_w, p.new_h), dst=inner, interpolation=cv2.INTER_LINEAR)
    out[:p.pad_y] = fill
    out[p.pad_y + p.new_h:] = fill
    out[p.pad_y:p.pad_y + p.new_h, :p.pad_x] = fill
    out[p.pad_y:p.pad_y + p.new_h, p.pad_x + p.new_w:] = fill
    return out, map_boxes(boxes, (p.new_w / w, p.new_h / h, p.pad_x, p.pad_y))


def plain_resize(
    image: np.ndarray, boxes: np.ndarray, size: int | tuple[int, int], out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stretch to the input size (aspect not kept), as Darknet's ``validate_detector`` does; boxes follow."""
    out_w, out_h = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    out = cv2.resize(image, (out_w, out_h), dst=_output(out, out_h, out_w, image), interpolation=cv2.INTER_LINEAR)
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
    pixels, out_boxes = letterbox(image, boxes, size, out=out) if use_letterbox else plain_resize(
        image, boxes, size, out=out
    )
    return Augmented(pixels, out_boxes, np.asarray(labels, np.int64).reshape(-1))


# ---------------------------------------------------------------------------------------------
# The same blocks as albumentations transforms (for composing with other albumentations transforms)
# ---------------------------------------------------------------------------------------------


class DarknetCropResize(A.DualTransform):
    """Albumentations wrapper of Darknet's jitter crop + resize (:func:`sample_crop_window`, :func:`crop_resize`).

    Boxes arrive and leave in albumentations' normalised xyxy, relative to the input and output image.
    """

    def __init__(self, width: int, height: int, jitter: float = 0.3, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.width, self.height, self.jitter = width, height, jitter

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {"window": sample_crop_window(w, h, self.jitter, self.random_generator)}

    def apply(self, img: np.ndarray, window: CropWindow, **params: Any) -> np.ndarray:
        return crop_resize(img, window, self.width, self.height)[0]

    def apply_to_bboxes(self, bboxes: np.ndarray, window: CropWindow, **params: Any) -> np.ndarray:
        h, w = params["shape"][:2]
        affine = placement_affine(*crop_placement(w, h, window, self.width, self.height))
        out = bboxes.copy()
        pixels = bboxes[:, :4] * np.array([w, h, w, h], np.float32)
        out[:, :4] = map_boxes(pixels, affine) / np.array([self.width, self.height] * 2, np.float32)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("width", "height", "jitter")


class DarknetHSV(A.ImageOnlyTransform):
    """Albumentations wrapper of Darknet's HSV distortion (:func:`sample_color_jitter`, :func:`darknet_color`).

    Input and output channel order are RGB.
    """

    def __init__(self, hue: float = 0.1, saturation: float = 1.5, exposure: float = 1.5, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.hue, self.saturation, self.exposure = hue, saturation, exposure

    def get_params(self) -> dict[str, Any]:
        return {"jitter": sample_color_jitter(self.hue, self.saturation, self.exposure, self.random_generator)}

    def apply(self, img: np.ndarray, jitter: ColorJitter, **params: Any) -> np.ndarray:
        return darknet_color(img, jitter)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hue", "saturation", "exposure")


def darknet_compose(
    size: int,
    jitter: float = 0.3,
    hue: float = 0.1,
    saturation: float = 1.5,
    exposure: float = 1.5,
    min_visibility: float = 0.0,
    seed: int | None = None,
    save_applied_params: bool = False,
) -> A.Compose:
    """Darknet's recipe as an ``A.Compose`` (RGB in, RGB out; boxes ``pascal_voc`` with a ``labels`` field).

    Equivalent to :func:`darknet_augment` given the same draws; use it to add other albumentations transforms.
    Boxes narrower than Darknet's 0.001 of the input are dropped through ``min_width``/``min_height``.
    """
    return A.Compose(
        [
            DarknetCropResize(size, size, jitter),
            A.HorizontalFlip(p=0.5),
            DarknetHSV(hue, saturation, exposure),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=min_visibility,
            min_width=DARKNET_MIN_BOX * size,
            min_height=DARKNET_MIN_BOX * size,
            clip=True,
        ),
        seed=seed,
        save_applied_params=save_applied_params,
    )
