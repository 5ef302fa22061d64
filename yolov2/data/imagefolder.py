"""Classification image folders, ``root/<class>/<image>``: scanned into samples, class names and named rejects.

Why not torchvision's ``ImageFolder``: one bad file among a million must become a reject naming the file and
the reason, not a crash in the middle of an epoch, nor a silent skip. Every image gets the checks the detection
readers give theirs: the header check of :func:`yolov2.data.images.inspect_image_file` (empty, truncated, not an
image, unsupported format, decompression bomb) and its extension against its content
(:func:`yolov2.data.images.check_image_against_record`), and the path rules of :mod:`yolov2.data.paths` (only
regular files are opened, nothing may resolve outside ``root`` through a symlink, names must be UTF-8).

Layout: each folder directly under ``root`` is a class, named by the folder; its images sit directly in it,
with an image extension (:data:`yolov2.data.images.IMAGE_EXTENSIONS`). Label ``i`` is ``class_names[i]``, the
names sorted. Without ``class_names`` the classes are the folders holding at least one usable image (a class
with no image cannot be learnt). Pass the training folder's ``class_names`` when scanning a validation folder,
so labels agree; a folder not among them is then rejected as a whole.

Rejects (:class:`yolov2.data.records.Reject`, level "image", ``source`` the file or folder): a file directly under
``root``, a hidden entry there (``.ipynb_checkpoints``, ``.DS_Store``: not classes), a class folder that leads
outside ``root``, cannot be listed, has a name that is not UTF-8, is not among the given class names, or holds
no usable image; in a class folder, a sub-folder, a file without an image extension, and every image failing a
check above.
Counting: every entry of ``root`` and of each scanned class folder is a sample, a reject, or a scanned class
folder, so nothing is dropped silently. ``strict=True`` raises :class:`DatasetError` at the first problem instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from yolov2.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, check_image_against_record, inspect_image_file
from yolov2.data.paths import (
    RootConfinement,
    dataset_file_reason,
    not_utf8_reason,
    outside_root_reason,
    printable,
)
from yolov2.data.records import ImageRecord, Reject, reject_or_raise
from yolov2.errors import DatasetError

__all__ = ["ImageFolderSample", "ImageFolderScan", "scan_image_folder", "scan_class_folder", "image_file_reason"]


class ImageFolderSample(NamedTuple):
    """One image: its path (``root/<class>/<file>``) and its class index into the scan's class names."""

    path: str
    label: int


class ImageFolderScan(NamedTuple):
    """What :func:`scan_image_folder` found: samples (by class, then file name), the class names, the rejects."""

    samples: list[ImageFolderSample]
    class_names: list[str]
    rejects: list[Reject]


def scan_image_folder(
    root: str | Path,
    class_names: Sequence[str] | None = None,
    split: str | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageFolderScan:
    """Scan ``root/<class>/<image>`` (module docstring): samples, class names and rejects.

    ``class_names``: the classes to use, in label order (a validation folder takes the training folder's);
    default: the sorted names of the class folders holding a usable image. ``split`` is written into the
    rejects. A missing ``root`` is a :class:`DatasetError`: there is nothing to scan.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: image folder not found (expected root/<class>/<image> folders)")
    confinement = RootConfinement(root)
    known = None if class_names is None else {name: i for i, name in enumerate(class_names)}
    rejects: list[Reject] = []
    found: dict[str, list[str]] = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        reason = _class_folder_reason(path, name, root, known)
        if reason is not None:
            rejects.append(reject_or_raise(printable(path), reason, "image", printable(name), split, strict))
            continue
        try:
            paths, folder_rejects = scan_class_folder(path, confinement, split, strict, max_pixels)
        except OSError as e:  # the folder cannot be listed (permissions, a vanished mount)
            reason = f"cannot list class folder ({e.strerror})"
            rejects.append(reject_or_raise(printable(path), reason, "image", printable(name), split, strict))
            continue
        rejects.extend(folder_rejects)
        if paths:
            found[name] = paths
            continue
        left_out = " (class left out)" if known is None else ""
        had = f"its {len(folder_rejects)} entries were rejected" if folder_rejects else "it is empty"
        reason = f"class folder holds no usable image: {had}{left_out}"
        rejects.append(reject_or_raise(printable(path), reason, "image", printable(name), split, strict))
    names = sorted(found) if class_names is None else list(class_names)
    label_of = {name: i for i, name in enumerate(names)}
    in_label_order = sorted(found, key=lambda name: label_of[name])
    samples = [ImageFolderSample(path, label_of[name]) for name in in_label_order for path in found[name]]
    return ImageFolderScan(samples, names, rejects)


def scan_class_folder(
    folder: str | Path,
    confine_to: str | Path | RootConfinement | None,
    split: str | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[str], list[Reject]]:
    """The usable image paths of one class folder, sorted by file name, and a reject for every other entry.

    Separate from :func:`scan_image_folder` so a stage can scan class folders in parallel (one task each);
    ``confine_to``: the dataset root no file may resolve outside of.
    """
    folder = str(folder)
    class_name = os.path.basename(folder)
    paths: list[str] = []
    rejects: list[Reject] = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        reason = image_file_reason(path, confine_to, max_pixels)
        if reason is None:
            paths.append(path)
        else:
            image_id = printable(f"{class_name}/{name}")
            rejects.append(reject_or_raise(printable(path), reason, "image", image_id, split, strict))
    return paths, rejects


def image_file_reason(
    path: str | Path, confine_to: str | Path | RootConfinement | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str | None:
    """Why the file at ``path`` is not a usable image of a class folder, or None when it is.

    In order: a name that is not UTF-8, a sub-folder, no image extension, not a regular file or resolving
    outside ``confine_to`` (never opened then), a header check failing (empty, truncated, not an image, ...),
    an extension that does not match the content.
    """
    path = str(path)
    bad_name = not_utf8_reason("image file name", path)
    if bad_name:
        return bad_name
    suffix = Path(path).suffix.lower()
    if os.path.isdir(path) and suffix not in IMAGE_EXTENSIONS:
        return "a folder inside a class folder: images must sit directly in root/<class>/ (sub-folders are not read)"
    if suffix not in IMAGE_EXTENSIONS:
        named = f"extension '{printable(Path(path).suffix)}'" if suffix else "no extension"
        return f"not an image file name ({named}; image files end in {', '.join(IMAGE_EXTENSIONS)})"
    unusable = dataset_file_reason(path, confine_to)
    if unusable:
        return unusable
    try:
        info = inspect_image_file(path, max_pixels)
    except DatasetError as e:
        return str(e).removeprefix(f"{path}: ")
    record = ImageRecord(Path(path).stem, "", path, info.width, info.height)
    return check_image_against_record(info, record, path)  # the size agrees by construction: the extension


def _class_folder_reason(path: str, name: str, root: str, known: dict[str, int] | None) -> str | None:
    """Why the entry ``name`` of ``root`` is not a class folder to scan, or None when it is."""
    bad_name = not_utf8_reason("class folder", name)
    if bad_name:
        return bad_name
    if name.startswith("."):
        return "hidden entry in the image folder root: not a class (classes are the visible folders)"
    if not os.path.isdir(path):
        return "file directly under the image folder root: images must sit in a class folder, root/<class>/<image>"
    outside = outside_root_reason(path, root)
    if outside:
        return outside
    if known is not None and name not in known:
        return f"class folder '{name}' is not among the {len(known)} given class names (folder not read)"
    return None
