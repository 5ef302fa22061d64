"""Compiled map step of the anchor k-means (see :mod:`yolov2.anchors.assignment`): assign boxes to centroids.

Kept apart from the NumPy modules so that NumPy-only users never import numba, and so that numba's
on-disk cache (``cache=True``, written to ``__pycache__`` next to this file) keys on one small file.

The kernel gives *bit-identical* results to the NumPy path in :mod:`yolov2.anchors.assignment`:

* IoU of a box (w, h) with a centroid (cw, ch), both centred, is evaluated exactly as
  :func:`yolov2.boxes.wh_iou_np` does: ``inter = min(w, cw) * min(h, ch)``,
  ``iou = inter / ((w * h + cw * ch) - inter)``, in float64 with no fused multiply-add
  (``fastmath=False``), and the winner is the *first* maximum, as ``np.argmax`` picks it.
* To avoid k float64 divisions per box, candidates are compared by cross-multiplication:
  ``d = inter_j * union_best - inter_best * union_j``. The decision is trusted only when
  ``|d|`` exceeds a relative 1e-12 of the products (the rounding of a product or difference is
  2**-53 relative, so the exact ratios, and the correctly rounded quotients NumPy compares, are then
  ordered the same way). Otherwise (exact ties included) the box is flagged and redone with the
  division loop, which is the NumPy definition itself. Products stay in the normal float64 range
  because :func:`yolov2.anchors.assignment.assign` only accepts sizes in [1e-32, 1e32].
* Sums of w and h are accumulated per block of ``block_size`` boxes and per cluster, sequentially
  in box order from 0.0 (the order ``np.bincount`` uses). The sum of best IoU of a block goes into
  ``LANES`` interleaved running sums (box t of the block into lane t % LANES, each in box order)
  that are then added lane 0 first; the NumPy path builds the same lanes with ``np.bincount``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

LANES = 8  # must equal yolov2.anchors.assignment.IOU_LANES (checked at every call)
_DELTA = 1e-12  # relative gap below which a cross-multiplied comparison is not trusted


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _exact_best(x: float, y: float, cw: np.ndarray, ch: np.ndarray, ca: np.ndarray) -> tuple[int, float]:
    """The NumPy definition for one box: first argmax of float64 IoU, and that IoU."""
    a = x * y
    best_j = 0
    inter = min(x, cw[0]) * min(y, ch[0])
    best = inter / ((a + ca[0]) - inter)
    for j in range(1, cw.shape[0]):
        inter = min(x, cw[j]) * min(y, ch[j])
        v = inter / ((a + ca[j]) - inter)
        if v > best:
            best = v
            best_j = j
    return best_j, best


@njit(cache=True, fastmath=False, error_model="numpy")
def _scan_block(
    wb: np.ndarray,
    hb: np.ndarray,
    cw: np.ndarray,
    ch: np.ndarray,
    ca: np.ndarray,
    inter_best: np.ndarray,
    union_best: np.ndarray,
    idx: np.ndarray,
    ambiguous: np.ndarray,
) -> None:
    """One block, centroid by centroid (vectorised over boxes): running best by cross-multiplication."""
    m = wb.shape[0]
    cw0 = cw[0]
    ch0 = ch[0]
    ca0 = ca[0]
    for t in range(m):
        x = wb[t]
        y = hb[t]
        inter = min(x, cw0) * min(y, ch0)
        inter_best[t] = inter
        union_best[t] = (x * y + ca0) - inter
        idx[t] = 0
        ambiguous[t] = False
    for j in range(1, cw.shape[0]):
        cwj = cw[j]
        chj = ch[j]
        caj = ca[j]
        for t in range(m):
            x = wb[t]
            y = hb[t]
            inter = min(x, cwj) * min(y, chj)
            union = (x * y + caj) - inter
            bi = inter_best[t]
            bu = union_best[t]
            q = bi * union
            d = inter * bu - q
            e = q * _DELTA
            gt = d > e
            ambiguous[t] = ambiguous[t] | (abs(d) <= e)
            inter_best[t] = inter if gt else bi
            union_best[t] = union if gt else bu
            idx[t] = j if gt else idx[t]


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def assign_blocks(
    w: np.ndarray,
    h: np.ndarray,
    cw: np.ndarray,
    ch: np.ndarray,
    previous: np.ndarray,
    block_size: int,
    lanes: int,
    assignment: np.ndarray,
    sum_w: np.ndarray,
    sum_h: np.ndarray,
    sum_iou: np.ndarray,
    counts: np.ndarray,
    changed: np.ndarray,
) -> None:
    """Assign every box to its best centroid and fill the per-block partial sums.

    w, h (float64[N], contiguous): box shapes. cw, ch (float64[k]): centroid shapes.
    previous (uint8[N], or uint8[0] for none): last assignment, to count changes.
    block_size must be a multiple of lanes (the interleaved IoU sums).
    Outputs (zero-filled by the caller), B = ceil(N / block_size): assignment (uint8[N]);
    sum_w, sum_h (float64[B, k]); counts (int64[B, k]); sum_iou (float64[B]); changed (int64[B]).
    """
    n = w.shape[0]
    k = cw.shape[0]
    num_blocks = sum_w.shape[0]
    has_previous = previous.shape[0] == n
    if lanes != LANES:
        raise ValueError("lanes must equal yolov2.anchors.kernels.LANES")
    ca = np.empty(k)
    for j in range(k):
        ca[j] = cw[j] * ch[j]
    for b in prange(num_blocks):
        lo = b * block_size
        hi = min(n, lo + block_size)
        m = hi - lo
        wb = w[lo:hi]
        hb = h[lo:hi]
        inter_best = np.empty(m)
        union_best = np.empty(m)
        idx = np.empty(m, np.int32)
        ambiguous = np.empty(m, np.bool_)
        _scan_block(wb, hb, cw, ch, ca, inter_best, union_best, idx, ambiguous)
        num_ambiguous = 0
        for t in range(m):
            num_ambiguous += ambiguous[t]
        if num_ambiguous:
            for t in range(m):
                if ambiguous[t]:
                    j, v = _exact_best(wb[t], hb[t], cw, ch, ca)
                    idx[t] = j
                    inter_best[t] = v
                    union_best[t] = 1.0  # v / 1.0 == v exactly
        best = inter_best
        for t in range(m):
            best[t] = inter_best[t] / union_best[t]
        lane_sums = np.zeros(LANES)
        whole = m - m % LANES
        for t0 in range(0, whole, LANES):
            for lane in range(LANES):
                lane_sums[lane] += best[t0 + lane]
        for t in range(whole, m):
            lane_sums[t - whole] += best[t]
        total = lane_sums[0]
        for lane in range(1, LANES):
            total += lane_sums[lane]
        sum_iou[b] = total
        acc_w = np.zeros(k)
        acc_h = np.zeros(k)
        cnt = np.zeros(k, np.int64)
        for t in range(m):
            j = idx[t]
            acc_w[j] += wb[t]
            acc_h[j] += hb[t]
            cnt[j] += 1
        for j in range(k):
            sum_w[b, j] = acc_w[j]
            sum_h[b, j] = acc_h[j]
            counts[b, j] = cnt[j]
        out = assignment[lo:hi]
        for t in range(m):
            out[t] = idx[t]
        num_changed = 0
        if has_previous:
            prev = previous[lo:hi]
            for t in range(m):
                num_changed += prev[t] != out[t]
        changed[b] = num_changed


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def pp_update(w: np.ndarray, h: np.ndarray, cw: float, ch: float, best: np.ndarray) -> None:
    """k-means++ step, in place: best[i] = max(best[i], IoU((w[i], h[i]), (cw, ch))), as NumPy computes it."""
    ca = cw * ch
    for i in prange(w.shape[0]):
        x = w[i]
        y = h[i]
        inter = min(x, cw) * min(y, ch)
        best[i] = max(best[i], inter / ((x * y + ca) - inter))


@njit(cache=True, fastmath=False, error_model="numpy")
def pp_total(best: np.ndarray) -> float:
    """Sum of (1 - best)², sequentially: the last element of NumPy's ``cumsum``."""
    s = 0.0
    for i in range(best.shape[0]):
        d = 1.0 - best[i]
        s += d * d
    return s


@njit(cache=True, fastmath=False, error_model="numpy")
def pp_locate(best: np.ndarray, r: float) -> int:
    """First index whose running sum of (1 - best)² exceeds r (``searchsorted(cumsum, r, "right")``)."""
    s = 0.0
    n = best.shape[0]
    for i in range(n):
        d = 1.0 - best[i]
        s += d * d
        if s > r:
            return i
    return n - 1
