"""Box shapes to cluster: normalised (w, h) of a records table, and their validation.

Shapes are **normalised** by the image size (w / image width, h / image height), float64 (N, 2),
Fortran order (contiguous columns, as the compiled kernel of :mod:`yolov2.anchors.kernels` needs).
Every bad input raises :class:`DatasetError` naming the image or row before any clustering.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from yolov2.errors import DatasetError

MIN_SHAPE, MAX_SHAPE = 1e-30, 1e30  # accepted normalised sizes: keeps every product of the kernel normal


def validate_shapes(wh: np.ndarray, source: str = "box shapes") -> np.ndarray:
    """Check normalised box shapes and return them as float64 (N, 2), Fortran order.

    Fortran order makes ``wh[:, 0]`` and ``wh[:, 1]`` contiguous, which the compiled kernel needs
    (a C-ordered input is copied once here rather than on every Lloyd iteration).
    Raises :class:`DatasetError` naming the first bad row for a wrong shape, no boxes, a
    non-finite, zero or negative size, or a size outside [``MIN_SHAPE``, ``MAX_SHAPE``].
    """
    arr = np.asarray(wh)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetError(f"{source}: expected an (N, 2) array of widths and heights, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DatasetError(f"{source}: no boxes to cluster")
    arr = np.asfortranarray(arr, dtype=np.float64)
    if ((arr >= MIN_SHAPE) & (arr <= MAX_SHAPE)).all():  # one pass in the common case; NaN fails too
        return arr
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{source}: box {i} has a non-finite size {arr[i].tolist()} ({int(bad.sum())} such boxes)")
    bad = (arr <= 0).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{source}: box {i} has a zero or negative size {arr[i].tolist()} ({int(bad.sum())} such boxes); "
            "drop degenerate boxes before clustering"
        )
    bad = ((arr < MIN_SHAPE) | (arr > MAX_SHAPE)).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{source}: box {i} has an implausible normalised size {arr[i].tolist()} "
            f"(accepted: {MIN_SHAPE:g} to {MAX_SHAPE:g})"
        )
    return arr


def box_shapes_from_table(table: pa.Table, include_difficult: bool = True) -> np.ndarray:
    """Normalised box shapes (float64 (N, 2): w / image width, h / image height) of a records table.

    ``table`` has the records schema of :mod:`yolov2.data.records` (``width``, ``height`` and a
    ``boxes`` list of ``{x1, y1, x2, y2, difficult, iscrowd}`` in absolute pixels, xyxy); extra
    columns (``shard``, ``key`` of ``index.parquet``) are ignored. Crowd boxes are excluded, and
    difficult ones too unless ``include_difficult``. Boxes come out in table order. A missing
    column, a null, a non-positive image size or a zero, negative or non-finite box size raises
    :class:`DatasetError` naming the image (before any clustering happens).
    """
    missing = [c for c in ("width", "height", "boxes") if c not in table.column_names]
    if missing:
        raise DatasetError(f"box table: missing column(s) {', '.join(missing)}; expected the records schema")
    ids = table.column("image_id") if "image_id" in table.column_names else None

    def image_name(row: int) -> str:
        return f"image {ids[row].as_py()!r}" if ids is not None else f"row {row}"

    boxes = table.column("boxes").combine_chunks()
    if boxes.null_count:
        raise DatasetError(f"box table: {image_name(_first_null(boxes))} has a null boxes list")
    parents = pc.list_parent_indices(boxes).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = boxes.flatten()  # StructArray of every box, in table order
    if flat.null_count:
        raise DatasetError(f"box table: {image_name(int(parents[_first_null(flat)]))} has a null box")
    fields = dict(zip([f.name for f in flat.type], flat.flatten()))
    needed = ("x1", "y1", "x2", "y2", "difficult", "iscrowd")
    absent = [f for f in needed if f not in fields]
    if absent:
        raise DatasetError(f"box table: boxes lack field(s) {', '.join(absent)}")
    cols = {}
    for name in needed:
        col = fields[name]
        if col.null_count:
            raise DatasetError(f"box table: {image_name(int(parents[_first_null(col)]))} has a box with a null {name}")
        cols[name] = col.to_numpy(zero_copy_only=False)
    sizes = {}
    for name in ("width", "height"):
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise DatasetError(f"box table: {image_name(_first_null(col))} has a null {name}")
        size = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bad_rows = np.flatnonzero(~(size > 0))
        if bad_rows.size:
            raise DatasetError(
                f"box table: {image_name(int(bad_rows[0]))} has a non-positive image {name} {size[bad_rows[0]]}"
            )
        sizes[name] = size

    keep = ~cols["iscrowd"].astype(bool)
    if not include_difficult:
        keep &= ~cols["difficult"].astype(bool)
    keep_idx = np.flatnonzero(keep)
    x1, y1, x2, y2 = (cols[c].astype(np.float64)[keep_idx] for c in ("x1", "y1", "x2", "y2"))
    rows = parents[keep_idx]
    wh = np.empty((keep_idx.size, 2), dtype=np.float64, order="F")
    wh[:, 0] = (x2 - x1) / sizes["width"][rows]
    wh[:, 1] = (y2 - y1) / sizes["height"][rows]
    bad = ~(np.isfinite(wh).all(axis=1) & (wh > 0).all(axis=1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(rows[i])
        box_number = int(keep_idx[i] - np.searchsorted(parents, row))  # index within the image's boxes
        raise DatasetError(
            f"box table: {image_name(row)} box {box_number} has a zero, negative or non-finite size "
            f"(x1={x1[i]}, y1={y1[i]}, x2={x2[i]}, y2={y2[i]}); {int(bad.sum())} such boxes"
        )
    return wh


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])
