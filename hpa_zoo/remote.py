"""Local paths and URLs behind one small set of file functions (``gs://``, ``s3://``, ``memory://``, ...).

Every reader that may be handed a cloud path (the TFDS builders' CSVs and channel files, `predict --beam` /
`embed --beam` inputs, remote presets and fine-tuning CSVs) goes through here:

* a local path (or a ``file://`` URL) takes the fast path: ``open`` / ``os.path`` as before;
* a URL goes to fsspec first (``memory://`` built in; ``gs://`` with ``gcsfs``, ``s3://`` with ``s3fs``, any other
  installed fsspec protocol), then to Apache Beam's ``FileSystems`` when fsspec has no implementation for the
  scheme (``gs://`` with ``apache-beam[gcp]``, ``s3://`` with ``apache-beam[aws]``, ``hdfs://``);
* `stage` copies a remote file or folder (or chosen files of it) into a local folder under a file lock, atomically,
  with a manifest of the remote files' identities (fsspec's info record / Beam size + mtime): a second call with an
  unchanged remote reuses the copy, a changed one is copied again. `hpa_zoo.zoo.weights.stage_remote` puts these
  copies in the hpa-zoo cache.

TensorFlow's ``tf.io.gfile`` is not used: it does not know fsspec's ``memory://`` (the tests' in-memory file system).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator, Sequence

from hpa_zoo.errors import ConfigError, HpaDataError

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
MANIFEST = ".hpa_zoo_stage.json"
_INSTALL = ("install the package that reads it: gcsfs (or apache-beam[gcp]) for gs://, s3fs (or apache-beam[aws]) "
            "for s3://, or the fsspec package of that protocol")


def local_form(path) -> str:
    """``path`` as a string; a ``file://`` URL becomes the local path it names."""
    text = str(os.fspath(path))
    return text[len("file://"):] if text.startswith("file://") else text


def is_remote(path) -> bool:
    """Whether ``path`` is a URL (``scheme://...``, not ``file://``) rather than a local path."""
    return bool(_SCHEME.match(local_form(path)))


def join(root, *names: str) -> str:
    """``root/name/...`` for local paths and URLs alike (a URL keeps its ``//``, which ``pathlib`` would fold)."""
    root = local_form(root)
    if not is_remote(root):
        return os.path.join(root, *names)
    return "/".join([root.rstrip("/"), *(str(n).strip("/") for n in names)])


def base_name(path) -> str:
    """The last part of a local path or URL (``gs://b/x/train.csv`` -> ``train.csv``)."""
    return local_form(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path) -> str:
    """The folder of a local path or URL (``gs://b/x/train.csv`` -> ``gs://b/x``)."""
    path = local_form(path).rstrip("/")
    return path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path) or "."


def _fsspec(path: str):
    """fsspec's file system for ``path``, or None (no fsspec, unknown protocol, its package not installed)."""
    try:
        import fsspec
    except ImportError:
        return None
    try:
        return fsspec.core.url_to_fs(path)[0]
    except (ValueError, ImportError):
        return None


def _beam_fs(path: str):
    """Apache Beam's ``FileSystems`` when it has a file system for ``path``'s scheme, else None."""
    try:
        from apache_beam.io.filesystems import FileSystems
    except ImportError:
        return None
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        return None
    return FileSystems


def _backend(path: str):
    """``("fsspec", fs)`` or ``("beam", FileSystems)`` for a URL.

    Raises:
        ConfigError: neither knows the scheme (names the path and what to install).
    """
    fs = _fsspec(path)
    if fs is not None:
        return "fsspec", fs
    beam = _beam_fs(path)
    if beam is not None:
        return "beam", beam
    raise ConfigError(f"{path}: no fsspec protocol or Beam file system reads this scheme; {_INSTALL}")


@contextlib.contextmanager
def open_file(path, mode: str = "rb", encoding: str | None = None) -> Iterator[IO]:
    """Open a local file or a URL for reading: **the one file-opening function** of remote-aware readers.

    Args:
        path: local path, ``file://`` URL or any URL fsspec / Beam ``FileSystems`` reads.
        mode: ``"rb"`` (bytes) or ``"r"`` (text, ``encoding`` default UTF-8).
    Yields:
        A file object.
    Raises:
        HpaDataError: the file does not exist or cannot be read (names it); ConfigError: an unknown scheme.
    """
    if mode not in ("rb", "r"):
        raise ConfigError(f"open_file(mode={mode!r}): only 'rb' and 'r' (reading) are supported")
    path = local_form(path)
    if not is_remote(path):
        with open(path, mode, encoding=encoding if mode == "r" else None) as f:
            yield f
        return
    kind, backend = _backend(path)
    try:
        if kind == "fsspec":
            f = backend.open(path, "rb")
        else:
            f = backend.open(path, compression_type="uncompressed")
    except Exception as exc:  # fsspec: FileNotFoundError / OSError; Beam: BeamIOError, per file system
        raise HpaDataError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    with f:
        if mode == "rb":
            yield f
        else:
            import io

            yield io.TextIOWrapper(f, encoding=encoding or "utf-8")


def read_bytes(path) -> bytes:
    """All bytes of a local file or a URL (`open_file`).

    Raises:
        HpaDataError: missing or unreadable (names it); ConfigError: an unknown scheme.
    """
    path = local_form(path)
    if not is_remote(path):
        return Path(path).read_bytes()
    with open_file(path) as f:
        return f.read()


def is_file(path) -> bool:
    """Whether a local file or a URL names an existing file."""
    path = local_form(path)
    if not is_remote(path):
        return os.path.isfile(path)
    kind, backend = _backend(path)
    if kind == "fsspec":
        return bool(backend.isfile(path))
    return bool(backend.exists(path)) and not path.endswith("/")


def is_dir(path) -> bool:
    """Whether a local folder exists, or a URL folder holds at least one file (object stores have no empty
    folders)."""
    path = local_form(path)
    if not is_remote(path):
        return os.path.isdir(path)
    kind, backend = _backend(path)
    if kind == "fsspec":
        return bool(backend.isdir(path))
    return bool(backend.match([path.rstrip("/") + "/*"])[0].metadata_list)


def exists(path) -> bool:
    """Whether a local file / folder or a URL file / folder exists."""
    return is_file(path) or is_dir(path)


def list_folder(folder) -> list[str]:
    """The names (not paths) of the files directly in a local or URL folder, sorted.

    Raises:
        HpaDataError: a URL folder that does not exist.
    """
    folder = local_form(folder)
    if not is_remote(folder):
        return sorted(p.name for p in Path(folder).iterdir() if p.is_file())
    prefix = folder.rstrip("/") + "/"
    kind, backend = _backend(folder)
    if kind == "fsspec":  # one level only (a folder beside millions of images is not walked)
        try:
            listed = backend.ls(folder, detail=True)
        except FileNotFoundError as exc:
            raise HpaDataError(f"{folder}: folder not found") from exc
        names = [str(info["name"]).rstrip("/").rsplit("/", 1)[-1] for info in listed
                 if info.get("type", "file") == "file"]
    else:
        names = [m.path[len(prefix):] for m in backend.match([prefix + "*"])[0].metadata_list]
    return sorted(n for n in names if n and "/" not in n)


def _identity(info: dict) -> str:
    """A string that changes when the file does: the hash of fsspec's whole info record (size, mtime / etag /
    generation, as the file system reports them; what fsspec's own ``ukey`` hashes)."""
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()


def _tree(root: str) -> dict[str, str]:
    """Every file under a URL folder (or the URL file itself, as ``""``): relative name -> identity (a string that
    changes when the file does: `_identity`, Beam size + mtime)."""
    kind, backend = _backend(root)
    if kind == "fsspec":
        if backend.isfile(root):
            return {"": _identity(backend.info(root))}
        import fsspec

        prefix = fsspec.core.strip_protocol(root).rstrip("/") + "/"  # the path form fsspec's find returns
        found = backend.find(root, detail=True)  # one listing, with each file's info (no request per file)
        return {str(p)[len(prefix):]: _identity(info) for p, info in found.items()
                if info.get("type", "file") == "file" and str(p).startswith(prefix)}

    def match(pattern: str) -> list:
        try:
            return backend.match([pattern])[0].metadata_list
        except Exception:  # Beam: BeamIOError when a pattern cannot be matched; pylint: disable=broad-except
            return []

    same = [m for m in match(root) if m.path == root]
    if same:
        return {"": f"{same[0].size_in_bytes}:{same[0].last_updated_in_seconds}"}
    prefix = root.rstrip("/") + "/"
    metas = match(prefix + "**")
    return {m.path[len(prefix):]: f"{m.size_in_bytes}:{m.last_updated_in_seconds}" for m in metas
            if m.path.startswith(prefix) and not m.path.endswith("/")}


@contextlib.contextmanager
def local_copy(root, names: Sequence[str]) -> Iterator[Path]:
    """A local folder holding ``names`` (relative file names) of ``root``: ``root`` itself when it is local, else a
    temporary copy removed afterwards. An `HpaDataError` raised inside names the remote paths, not the temporary
    ones (for one-off reads, e.g. one image on a Beam worker; `stage` keeps its copies)."""
    root = local_form(root)
    if not is_remote(root):
        yield Path(root)
        return
    tmp = Path(tempfile.mkdtemp(prefix="hpa_zoo_remote_"))
    try:
        for name in names:
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read_bytes(join(root, name)))
        try:
            yield tmp
        except HpaDataError as exc:
            raise HpaDataError(str(exc).replace(str(tmp), root.rstrip("/"))) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage(url, into, *, names: Sequence[str] | None = None, check: bool = True) -> Path:
    """A local copy of a remote file or folder, kept in ``into`` and refreshed when the remote changes.

    Args:
        url: a URL file or folder (a local path is returned as it is, nothing copied).
        into: the local folder holding staged copies (``<into>/<sha256 of url and names>/<name>``).
        names: copy only these files of the folder ``url`` (relative names, e.g. the images a CSV lists); None:
            the file, or every file under the folder.
        check: compare the remote files' identities with the copy's manifest (one listing); False: reuse any
            existing copy without touching the remote (offline).
    Returns:
        The local file or folder (``Path``).
    Raises:
        HpaDataError: the URL does not exist, a listed name is missing, or (``check=False``) nothing is staged yet;
        ConfigError: an unknown scheme; DiskWriteError: ``into`` cannot be written.
    """
    import filelock

    from hpa_zoo.atomic import atomic_dir
    from hpa_zoo.safepaths import check_relative_name

    url = local_form(url).rstrip("/")
    if not is_remote(url):
        return Path(url)
    for name in names or ():
        check_relative_name(name, url)
    key = hashlib.sha256(json.dumps([url, sorted(names) if names is not None else None]).encode()).hexdigest()[:20]
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    slot, name = into / key, base_name(url) or "root"
    with filelock.FileLock(into / f"{key}.lock", thread_local=False):
        staged = _read_manifest(slot)
        if not check:
            if staged is None:
                raise HpaDataError(f"{url}: no local copy in {slot} and the remote may not be read now (offline); "
                                   f"run once online, or copy it to a local path and pass that")
            return slot / name
        tree = _tree(url)
        if not tree:
            raise HpaDataError(f"{url}: not found (no such file, or an empty folder)")
        if names is not None:
            missing = [n for n in names if n not in tree]
            if missing:
                raise HpaDataError(f"{url}: missing {', '.join(sorted(missing)[:10])}"
                                   f"{' ...' if len(missing) > 10 else ''} (listed, not on the remote)")
            tree = {n: tree[n] for n in names}
        if staged == {"url": url, "files": tree}:
            log.debug("%s: using the local copy in %s", url, slot)
            return slot / name
        log.info("%s: copying %d file(s) into %s", url, len(tree), slot)
        with atomic_dir(slot) as tmp:
            for rel in tree:
                target = tmp / name / rel if rel else tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(read_bytes(join(url, rel) if rel else url))
            (tmp / MANIFEST).write_text(json.dumps({"url": url, "files": tree}))
    return slot / name


def _read_manifest(slot: Path) -> dict | None:
    try:
        return json.loads((slot / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
