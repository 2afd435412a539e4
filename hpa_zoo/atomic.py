"""Atomic file writing: write to a temporary file in the same folder, then `os.replace` it into place.

A crash therefore never leaves a truncated file that a later run would trust. A write that fails because the disk
is full, read-only or not writable raises `hpa_zoo.errors.DiskWriteError` naming the file, the free space and what
to free or change (`disk_write_error`); the temporary file is removed and the earlier file at `path` is intact.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from hpa_zoo.errors import DiskWriteError

_DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.EFBIG: "the file is too large for the file system"}


def _existing_parent(path: Path) -> Path:
    for folder in [path.parent, *path.parents]:
        if folder.exists():
            return folder
    return Path("/")


def _errno_of(exc: BaseException) -> int | None:
    """The errno of `exc` or of an error in its cause chain (h5py/Keras wrap OSErrors, some only in the text)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            return exc.errno
        match = re.search(r"errno = (\d+)|\[Errno (\d+)\]", str(exc))
        if match and int(match.group(1) or match.group(2)) in _DISK_ERRNOS:
            return int(match.group(1) or match.group(2))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def disk_write_error(path: str | os.PathLike, exc: BaseException, *, hint: str = "") -> DiskWriteError | None:
    """A `DiskWriteError` for a failed write of `path` when `exc` is a full / read-only / unwritable disk, else None.

    Besides the errno (of `exc` or its causes), a failure on a file system that is read-only or has under 1 MB
    left counts: writers such as h5py do not always keep the errno.

    Args:
        path: the file that was being written.
        exc: the error the writer raised.
        hint: what else the user can change, e.g. ``"pass another --out"``.
    """
    if isinstance(exc, DiskWriteError) or not isinstance(exc, Exception):
        return None
    path = Path(path)
    folder = _existing_parent(path)
    code = _errno_of(exc)
    try:
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        read_only = bool(stats.f_flag & os.ST_RDONLY)
    except OSError:
        free, read_only = None, False
    if code is None and read_only:
        code = errno.EROFS
    if code is None and free is not None and free < 1_000_000 and isinstance(exc, (OSError, RuntimeError)):
        code = errno.ENOSPC
    if code is None:
        return None
    what = _DISK_ERRNOS[code]
    room = f" ({free / 1e6:.1f} MB free in {folder})" if free is not None else ""
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = f"free space in {folder}"
    else:
        fix = f"make {folder} writable"
    fix += f", or {hint}" if hint else ", or write to another folder"
    return DiskWriteError(f"cannot write {path}: {what}{room}; {fix}. Nothing half-written was kept; earlier files "
                          f"are intact ({type(exc).__name__}: {str(exc)[:200]})")


def model_bytes(model) -> int:
    """About how many bytes a ``.weights.h5`` / ``.keras`` of `model` takes: its variables and, when built, its
    optimizer's (int)."""
    import numpy as np

    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    total = 0
    for v in variables:
        try:
            itemsize = np.dtype(str(v.dtype)).itemsize
        except TypeError:
            itemsize = 4
        total += int(np.prod([int(d or 1) for d in v.shape])) * itemsize
    return total


def ensure_free_space(path: str | os.PathLike, nbytes: int, *, hint: str = "") -> None:
    """Refuse (before writing) when the file system of `path` has less than ``1.2 * nbytes + 256 kB`` free.

    h5py (Keras ``save_weights``) crashes the process with a segmentation fault when the disk fills up during a
    write, so weights files are checked up front instead of relying on the write error.

    Raises:
        DiskWriteError: naming `path`, the bytes needed and free, and the fix.
    """
    path = Path(path)
    folder = _existing_parent(path)
    try:
        stats = os.statvfs(folder)
    except OSError:
        return
    free = stats.f_bavail * stats.f_frsize
    need = int(1.2 * nbytes) + 256_000
    if stats.f_flag & os.ST_RDONLY:
        raise disk_write_error(path, OSError(errno.EROFS, os.strerror(errno.EROFS)), hint=hint)
    if free < need:
        fix = f"or {hint}" if hint else "or write to another folder"
        raise DiskWriteError(f"cannot write {path}: the disk is full ({free / 1e6:.1f} MB free in {folder}, about "
                             f"{need / 1e6:.1f} MB needed); free space in {folder}, {fix}. Nothing was written; "
                             f"earlier files are intact")


def save_weights_atomic(model, path: str | os.PathLike, *, hint: str = "", optimizer: bool = True) -> Path:
    """``model.save_weights`` into `path` atomically, after `ensure_free_space` for it.

    Args:
        optimizer: True: the layers and the optimizer's state (what a resume needs); False: the layers only
            (`save_network_weights`: a third of the file for Adam, for checkpoints and presets that are only
            ever loaded for inference or fine-tuning).
    Raises:
        DiskWriteError: the disk is full (checked first) or read-only / not writable.
    """
    ensure_free_space(path, model_bytes(model), hint=hint)
    with atomic_path(path) as tmp:
        if optimizer:
            model.save_weights(tmp)
        else:
            save_network_weights(model, tmp)
    return Path(path)


def _network_and_optimizer(model):
    """The model whose layers are saved (a training wrapper names its bare network ``saved_network``) and the
    optimizer to leave out (None if it has none)."""
    net = getattr(model, "saved_network", None) or model
    return net, getattr(net, "optimizer", None) or getattr(model, "optimizer", None)


def save_network_weights(model, path: str | os.PathLike) -> None:
    """Write the layers' weights of a built keras `model` to the ``.weights.h5`` `path`, without the optimizer.

    The file is what ``model.save_weights`` writes for a model that was never compiled, so `hpa_zoo.load`, a
    preset and ``keras.Model.load_weights`` read it as usual. (``Model.save_weights`` has no switch for this in
    Keras 3.15; its own writer, ``saving_lib.save_weights_only``, takes the objects to skip.) Not atomic by itself:
    `save_weights_atomic` (``optimizer=False``) is.
    """
    from keras.src.saving import saving_lib

    net, opt = _network_and_optimizer(model)
    saving_lib.save_weights_only(net, str(path), objects_to_skip=[opt] if opt is not None else None)


def load_network_weights(model, path: str | os.PathLike) -> None:
    """Load a ``.weights.h5`` into the layers of `model`, leaving its optimizer's state as it is.

    For files written by `save_network_weights` (or any weights file) into a compiled model, without Keras'
    "Skipping variable loading for optimizer" warning that a plain ``load_weights`` prints for them.
    """
    from keras.src.saving import saving_lib

    net, opt = _network_and_optimizer(model)
    saving_lib.load_weights_only(net, str(path), objects_to_skip=[opt] if opt is not None else None)


def atomic_snapshot(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make `path` an atomic copy of the file `source` as it is now: a hard link renamed into place (no bytes
    copied; a later atomic write of `source` makes a new file and leaves this one as it was), or, where the file
    system has no hard links, a copy through `atomic_write_bytes`."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return atomic_write_bytes(path, source.read_bytes())
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    Use it for writers that need a file name (``model.save_weights``, ``cv2.imwrite``, ``df.to_csv``).
    The temporary name keeps the final suffix (``suffix`` overrides it) because some writers check it.

    Raises:
        DiskWriteError: the folder or the file cannot be written (full, read-only, no permission): names the
            path, the free space and the fix (`disk_write_error`); other errors of the writer pass unchanged.
    """
    path = Path(path)
    sfx = suffix if suffix is not None else "".join(path.suffixes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{sfx}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise disk_write_error(path, exc) or exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        translated = disk_write_error(path, exc)
        if translated is not None:
            raise translated from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_to_csv(df, path: str | os.PathLike, **kwargs) -> Path:
    """`pandas.DataFrame.to_csv` into `path` atomically (index=False unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` (moving an older folder aside
    first, then deleting it), on error it is removed and `path` is left as it was (a full or read-only disk:
    `DiskWriteError`, as `atomic_path`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise disk_write_error(path, exc) or exc
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        translated = disk_write_error(path, exc)
        if translated is not None:
            raise translated from exc
        raise
