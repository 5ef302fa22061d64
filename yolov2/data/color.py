"""Darknet's HSV distortion (``random_distort_image``): the draws, and applying them on the CPU or the device.

``dhue = U(-hue, hue)`` (fraction of the hue circle, added with wrap-around), ``dsat = rand_scale(saturation)``,
``dexp = rand_scale(exposure)`` where ``rand_scale(s)`` is ``U(1, s)``, inverted with probability 0.5; S and V are
multiplied, then the image is converted back and clipped to [0, 1]. Images are uint8[H, W, 3] RGB on the CPU.

How we make it fast:

* The HSV step is exact algebra, not a float HSV round trip. Darknet's HSV->RGB is linear in V and in S for a fixed
  hue: each channel is ``V * (1 - S * k(h))``. So scaling S by ``a`` and V by ``b`` gives, per channel ``c`` with
  ``V = max(r, g, b)``, ``b * (V + a * (c - V))`` — one ``cv2.addWeighted`` with saturation = Darknet's final
  clip, exact even where ``S * a > 1`` or ``V * b > 1`` (Darknet does not clip S or V before converting back).
  Only the hue shift needs HSV: one uint8 ``cvtColor`` round trip with the hue channel shifted (OpenCV's
  ``HSV_FULL`` hue has 256 steps per circle, so the shift is rounded to 1/256 of the circle; uint8 HSV also
  quantises S, which moves a channel by a few levels at most, see the tests).
* Or the colour step moves to the device: the transforms' ``defer_color=True`` draws the distortion but leaves the
  pixels alone (``Augmented.color``), and :func:`darknet_color_tensor` applies Darknet's float formula to the whole
  batch on the GPU, exactly (no 8-bit HSV rounding) and at no cost there. On the CPU the uint8 HSV round trip costs
  about half a JPEG decode, so this is the fast path for GPU training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from yolov2.errors import ConfigError

__all__ = ["ColorJitter", "sample_color_jitter", "darknet_color", "color_params", "darknet_color_tensor"]


@dataclass(frozen=True)
class ColorJitter:
    """One draw of Darknet's HSV distortion: hue shift (fraction of the circle), saturation and value factors."""

    dhue: float = 0.0
    dsat: float = 1.0
    dexp: float = 1.0


def rand_scale(scale: float, rng: np.random.Generator) -> float:
    """Darknet's ``rand_scale``: ``U(1, s)``, inverted with probability 0.5 (not uniform on [1/s, s])."""
    value = float(rng.uniform(1.0, scale)) if scale > 1.0 else 1.0
    return value if rng.random() < 0.5 else 1.0 / value


def sample_color_jitter(hue: float, saturation: float, exposure: float, rng: np.random.Generator) -> ColorJitter:
    """Darknet's ``random_distort_image`` draws: ``dhue = U(-hue, hue)``, ``rand_scale`` for S and V."""
    if hue < 0 or saturation < 1 or exposure < 1:
        raise ConfigError(f"need hue >= 0, saturation >= 1, exposure >= 1; got {hue}, {saturation}, {exposure}")
    dhue = float(rng.uniform(-hue, hue)) if hue > 0 else 0.0
    return ColorJitter(dhue, rand_scale(saturation, rng), rand_scale(exposure, rng))


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
