"""Weights files: download with sha256 verification into a local cache, offline use, local copies; local copies of
remote presets and CSVs (`stage_remote`, ``<cache>/remote``).

The cache lives in ``~/.cache/hpa_zoo`` (``HPA_ZOO_CACHE`` overrides it); weights files go to
``<cache>/weights/<spec.filename>``. Guarantees (ecosystem.md §6 item 1: weights must stay usable when a host
disappears, so: mirrors, pinned sha256, offline mode):

* a file in the cache has always been verified against ``spec.sha256``: downloads are streamed into a temporary
  file in the cache folder, checked (length and hash), and only then renamed into place, so a wrong hash, a
  truncated transfer or a crash never leaves a partial or bad file behind;
* a cache hit is re-hashed; a corrupted entry is removed (with a warning) and downloaded again;
* ``spec.urls`` are mirrors, tried in order; the error after the last one lists what went wrong with each;
* a transient failure (connection reset, a stall past the timeout, HTTP 5xx, a short transfer) is retried with
  exponential backoff, a bounded number of times per URL (``attempts`` / ``$HPA_ZOO_DOWNLOAD_ATTEMPTS``, default
  3); a 4xx, an HTML page instead of the file or a wrong hash is not retried; the timeout per socket operation is
  ``timeout`` / ``$HPA_ZOO_DOWNLOAD_TIMEOUT`` (seconds, default 60);
* a cache folder that cannot be written (full disk, read-only) stops at once with the path and what to change;
* ``HPA_ZOO_OFFLINE=1`` never touches the network; a miss names the exact path to put the file at;
* a spec without sha256 is never downloaded (nothing to verify it with); only an explicit ``local_path`` is used.

Own ``urllib`` streaming is used instead of ``keras.utils.get_file`` because ``get_file`` downloads in place,
keeps a file that fails its hash check and silently falls back to ``/tmp/.keras`` for an unwritable cache
(ecosystem.md §2.3).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from hpa_zoo.errors import ConfigError, WeightsError
from hpa_zoo.registry import WeightsSpec

log = logging.getLogger(__name__)

CACHE_ENV = "HPA_ZOO_CACHE"
OFFLINE_ENV = "HPA_ZOO_OFFLINE"
DEFAULT_CACHE = Path("~/.cache/hpa_zoo")
WEIGHTS_SUBDIR = "weights"
REMOTE_SUBDIR = "remote"  # staged copies of remote presets and CSVs (`stage_remote`)
TIMEOUT_ENV = "HPA_ZOO_DOWNLOAD_TIMEOUT"
ATTEMPTS_ENV = "HPA_ZOO_DOWNLOAD_ATTEMPTS"
#: seconds per socket operation (connect, each read), not for the whole file; ``$HPA_ZOO_DOWNLOAD_TIMEOUT``
DOWNLOAD_TIMEOUT_S = 60.0
#: tries per URL for transient failures (reset, timeout, 5xx, short transfer); ``$HPA_ZOO_DOWNLOAD_ATTEMPTS``
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_BACKOFF_S = 1.0  # wait before the 2nd attempt; doubled before each further one
_CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """Return the hpa-zoo cache folder, creating it first.

    ``$HPA_ZOO_CACHE`` if set (``~`` expanded), else ``~/.cache/hpa_zoo``.

    Raises:
        WeightsError: the folder cannot be created or is not writable (names it and says how to choose another).
    """
    raw = os.environ.get(CACHE_ENV) or str(DEFAULT_CACHE)
    path = Path(raw).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the hpa-zoo cache folder {path}: {e}. "
                           f"Set {CACHE_ENV} to a writable folder.") from e
    if not os.access(path, os.W_OK):
        raise WeightsError(f"the hpa-zoo cache folder {path} is not writable. Set {CACHE_ENV} to a writable folder.")
    return path


def is_offline() -> bool:
    """True when ``$HPA_ZOO_OFFLINE`` is 1/true/yes/on: no network access at all."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def weights_path(spec: WeightsSpec) -> Path:
    """Where `spec`'s file lives in the cache: ``cache_dir()/weights/<spec.filename>`` (folder created).

    Raises:
        WeightsError: ``spec.filename`` is not a plain file name.
    """
    name = spec.filename
    if not name or Path(name).name != name or name in {".", ".."}:
        raise WeightsError(f"weights spec {spec.name!r} has filename {name!r}; expected a plain file name "
                           "without folders (fix the registry row in hpa_zoo/registry.py)")
    folder = cache_dir() / WEIGHTS_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def sha256_file(path: str | os.PathLike) -> str:
    """Return the lowercase hex sha256 digest (64 chars) of the file at `path`, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _positive_setting(value, env: str, default, kind, what: str):
    """`value`, else ``$env``, else `default`, checked to be a positive `kind` (float or int)."""
    source = f"{what}={value!r}"
    if value is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return default
        source = f"${env}={raw!r}"
        value = raw
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not number > 0 or isinstance(value, bool):
        raise ConfigError(f"{source}: must be a positive {'number of seconds' if kind is float else 'integer'}")
    return number


def stage_remote(url, *, names=None) -> Path:
    """A local copy of a remote preset folder, CSV or image folder (``gs://``, ``s3://``, ``memory://``...: any
    `hpa_zoo.remote` URL) in ``cache_dir()/remote``; a local path is returned as it is.

    The copy is made under a file lock into a temporary folder renamed into place (`hpa_zoo.remote.stage`), and
    reused while the remote files are unchanged (one listing per call). With ``$HPA_ZOO_OFFLINE`` the remote is
    not read: an existing copy is used, a missing one is an error.

    Args:
        url: a file or folder URL (or a local path).
        names: only these relative file names of the folder ``url`` (e.g. the images a CSV lists).
    Returns:
        The local file or folder.
    Raises:
        HpaDataError: missing remote file / listed name, or offline without a copy; ConfigError: unknown scheme;
        WeightsError: the cache folder cannot be created.
    """
    from hpa_zoo.remote import is_remote, stage

    if not is_remote(url):
        return Path(os.fspath(url))
    return stage(url, cache_dir() / REMOTE_SUBDIR, names=names, check=not is_offline())


def stage_table(data_csv, images_dir=None) -> tuple[Path, Path | None]:
    """A fine-tuning / prediction CSV and the image files it lists, local: each remote part staged by
    `stage_remote` (the images: only the listed files of their folder).

    Args:
        data_csv: the CSV (``filename`` or ``filenames`` column, `hpa_zoo.data.user_images.read_table`), a path or
            a URL.
        images_dir: the folder the CSV's file names are relative to (default the CSV's folder), a path or a URL.
    Returns:
        (local CSV, local images folder, or ``images_dir`` unchanged (None included) when nothing was staged).
    Raises:
        HpaDataError: a missing CSV or listed image, a file name that is absolute or has a ``..`` part.
    """
    from hpa_zoo.data.user_images import listed_files
    from hpa_zoo.remote import is_remote, parent

    root = images_dir if images_dir is not None else parent(data_csv) if is_remote(data_csv) else None
    csv = stage_remote(data_csv)
    if root is None or not is_remote(root):
        return csv, None if root is None else Path(os.fspath(root))
    return csv, stage_remote(root, names=listed_files(csv))


def download_settings(timeout: float | None = None, attempts: int | None = None) -> tuple[float, int]:
    """(timeout in seconds per socket operation, attempts per URL): the arguments, else ``$HPA_ZOO_DOWNLOAD_TIMEOUT``
    / ``$HPA_ZOO_DOWNLOAD_ATTEMPTS``, else `DOWNLOAD_TIMEOUT_S` / `DOWNLOAD_ATTEMPTS`.

    Raises:
        ConfigError: a value that is not a positive number (timeout) or integer (attempts).
    """
    return (_positive_setting(timeout, TIMEOUT_ENV, DOWNLOAD_TIMEOUT_S, float, "timeout"),
            _positive_setting(attempts, ATTEMPTS_ENV, DOWNLOAD_ATTEMPTS, int, "attempts"))


def fetch(spec: WeightsSpec, *, local_path: str | os.PathLike | None = None, force: bool = False,
          progress: bool = True, unhashed: bool = False, timeout: float | None = None,
          attempts: int | None = None) -> Path:
    """Return the path of a verified local copy of `spec`'s weights file.

    Args:
        spec: the registry's weights row (urls = mirrors in order, sha256, filename).
        local_path: a file the user already has. It is verified against ``spec.sha256`` and copied into the cache.
            If the spec has no sha256 it is used in place, unverified, with a warning.
        force: download again even if a verified copy is cached.
        progress: print a progress line to stderr while downloading.
        unhashed: allow a spec without sha256 to be downloaded (and a cached copy used as is). Only for files
            the caller checks another way, e.g. a package's test tensors that the hash-pinned weights file must
            reproduce (`verify`); the caller removes the file when that check fails.
        timeout: seconds per socket operation (default ``$HPA_ZOO_DOWNLOAD_TIMEOUT`` or 60).
        attempts: tries per URL for transient failures (default ``$HPA_ZOO_DOWNLOAD_ATTEMPTS`` or 3), with
            exponential backoff from `DOWNLOAD_BACKOFF_S`.

    Returns:
        Path of the file (in the cache, unless `local_path` had to be used unverified).

    Raises:
        WeightsError: hash mismatch (names expected and actual sha256, the URL or file, and the remedy), every
            mirror failed (names each URL, its attempts and the cache path to fill by hand), offline and not cached
            (names the exact path to put the file at), the cache cannot be written (full or read-only disk), or the
            spec has no sha256 and no `local_path` was given.
        ConfigError: a non-positive `timeout` / `attempts` (or their environment variables).
    """
    expected = spec.sha256.strip().lower()
    timeout, attempts = download_settings(timeout, attempts)
    if local_path is not None:
        return _use_local(spec, Path(local_path), expected)
    if not expected and not unhashed:
        raise WeightsError(
            f"weights {spec.name!r} ({spec.filename}) have no sha256 in the registry, so hpa-zoo refuses to "
            "download them: a corrupted or substituted file could not be detected. Download the file yourself "
            f"from {' or '.join(spec.urls) or 'its source'} and pass local_path=...")
    target = weights_path(spec)
    if target.is_file() and not force and not expected:
        return target  # unhashed: the caller's own check decides
    if target.is_file() and not force:
        actual = sha256_file(target)
        if actual == expected:
            return target
        warnings.warn(f"cached weights file {target} is corrupted (sha256 {actual}, expected {expected}); "
                      "removing it and downloading it again", RuntimeWarning, stacklevel=2)
        target.unlink(missing_ok=True)
    if is_offline():
        if force and target.is_file():
            raise WeightsError(f"force=True needs the network, but {OFFLINE_ENV} is set; unset it to download "
                               f"weights {spec.name!r} again, or drop force=True to use {target}")
        raise WeightsError(
            f"{OFFLINE_ENV} is set and weights {spec.name!r} are not in the cache. Put the file "
            f"{spec.filename} (sha256 {expected or 'not pinned'}) at {target}, or pass local_path=..., or unset "
            f"{OFFLINE_ENV}. "
            f"It can be downloaded from: {', '.join(spec.urls) or '(no URL in the registry)'}")
    if not spec.urls:
        raise WeightsError(f"weights {spec.name!r} have no download URL in the registry; put {spec.filename} "
                           f"(sha256 {expected}) at {target} or pass local_path=...")
    failures = []
    for url in spec.urls:
        for attempt in range(1, attempts + 1):
            try:
                _download_verified(url, target, expected, progress=progress, timeout=timeout)
                return target
            except _Transient as e:
                if attempt == attempts:
                    failures.append(f"  {url}: {attempt} attempt(s), last: {e}")
                    break
                wait = DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1)
                log.warning("download of %s failed (attempt %d of %d: %s); retrying in %.1f s",
                            url, attempt, attempts, e, wait)
                time.sleep(wait)
            except _CacheWriteError:
                raise
            except WeightsError as e:
                failures.append(f"  {url}: 1 attempt (not retried), {e}")
                break
    raise WeightsError(
        f"could not download weights {spec.name!r} ({spec.filename}) from any of {len(spec.urls)} URL(s):\n"
        + "\n".join(failures)
        + f"\nRemedy: check your network/proxy and retry (a slow link: set {TIMEOUT_ENV}, now {timeout:g} s; "
          f"more tries: {ATTEMPTS_ENV}, now {attempts}), or download the file yourself, check its sha256 is "
          f"{expected}, and put it at {target} (or pass local_path=...).")


class _Transient(WeightsError):
    """A failure worth retrying: reset, timeout, HTTP 5xx, a short transfer."""


class _CacheWriteError(WeightsError):
    """The cache folder cannot be written (full, read-only, no permission): never retried."""


def _cache_write_error(path: Path, exc: OSError) -> _CacheWriteError:
    import errno

    free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    what = {errno.ENOSPC: f"the disk is full ({free / 1e6:.0f} MB free); free space there",
            errno.EDQUOT: "the disk quota is exceeded; free space there",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied"}.get(exc.errno, str(exc))
    return _CacheWriteError(f"cannot write the weights cache file {path}: {what} ({exc.strerror or exc}); "
                            f"or set {CACHE_ENV} to a folder with room that you can write. Nothing was kept in "
                            f"the cache")


def _use_local(spec: WeightsSpec, local: Path, expected: str) -> Path:
    """Verify a user-supplied file and copy it into the cache (or use it in place when there is no hash)."""
    if not local.is_file():
        raise WeightsError(f"local_path {local} for weights {spec.name!r} does not exist or is not a file")
    if not expected:
        warnings.warn(f"weights {spec.name!r} have no sha256 in the registry; using {local} unverified",
                      RuntimeWarning, stacklevel=3)
        return local
    actual = sha256_file(local)
    if actual != expected:
        raise WeightsError(
            f"local_path {local} does not match weights {spec.name!r}: sha256 {actual}, expected {expected}. "
            f"It is a different or corrupted file; download {spec.filename} again from "
            f"{' or '.join(spec.urls) or 'its source'}.")
    target = weights_path(spec)
    if target.exists() and target.samefile(local):
        return target
    with _temp_in(target.parent, target.name) as tmp:
        shutil.copyfile(local, tmp)
        if sha256_file(tmp) != expected:  # the copy itself went wrong (disk full...)
            raise WeightsError(f"copying {local} into the cache at {target} produced a different file; "
                               f"check free space in {target.parent}")
        os.replace(tmp, target)
    return target


@contextlib.contextmanager
def _temp_in(folder: Path, name: str):
    """Yield a fresh temporary path in `folder`; it is removed on exit unless it was renamed away."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    except OSError as e:
        raise _cache_write_error(folder / name, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    finally:
        tmp_path.unlink(missing_ok=True)


def _download_verified(url: str, target: Path, expected: str, *, progress: bool,
                       timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Stream `url` into a temp file beside `target`, check length and sha256, then rename onto `target`.

    Raises WeightsError (never leaving a file behind): `_Transient` for failures worth retrying (network errors,
    timeouts, HTTP 5xx, short transfers), `_CacheWriteError` when the cache cannot be written, a plain
    WeightsError for the rest (HTTP 4xx, an HTML page, a hash mismatch).
    """
    with _temp_in(target.parent, target.name) as tmp:
        h = hashlib.sha256()
        received = 0
        total = None
        try:
            # unbuffered: a full disk fails in write() below, not later in close() where it would mask the cause
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb", buffering=0) as out:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower() in ("text/html",
                                                                                              "application/xhtml+xml"):
                    head = resp.read(200).decode("utf-8", "replace").strip().replace("\n", " ")
                    raise WeightsError(f"the server answered with an HTML page, not the weights file (a login, "
                                       f"quota or error page?): {head[:120]!r}")
                shown = _Progress(url, total) if progress else None
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    try:
                        view = memoryview(chunk)
                        while view:  # raw writes may be short
                            view = view[out.write(view):]
                    except OSError as e:
                        raise _cache_write_error(target, e) from e
                    h.update(chunk)
                    received += len(chunk)
                    if shown:
                        shown.update(received)
                if shown:
                    shown.close(received)
                try:
                    os.fsync(out.fileno())
                except OSError as e:
                    raise _cache_write_error(target, e) from e
        except WeightsError:
            raise
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code in (408, 429):
                raise _Transient(f"HTTP {e.code} {e.reason}") from e
            raise WeightsError(f"download failed: {e}") from e
        except (TimeoutError, ConnectionError, http.client.IncompleteRead) as e:
            raise _Transient(f"download failed after {received} bytes: {type(e).__name__}: {e or 'timed out'}") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, ConnectionError, socket.gaierror)):
                raise _Transient(f"download failed after {received} bytes: {e.reason}") from e
            raise WeightsError(f"download failed after {received} bytes: {e}") from e
        except (http.client.HTTPException, OSError) as e:
            raise _Transient(f"download failed after {received} bytes: {e}") from e
        except ValueError as e:
            raise WeightsError(f"download failed: {e}") from e
        if total is not None and received != total:
            raise _Transient(f"truncated download: got {received} of {total} bytes (Content-Length); "
                             "the connection was closed early")
        actual = h.hexdigest()
        if expected and actual != expected:
            raise WeightsError(f"sha256 mismatch for the file downloaded from {url}: got {actual}, expected "
                               f"{expected} ({received} bytes). The mirror serves a different or corrupted file; "
                               "nothing was written to the cache")
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise _cache_write_error(target, e) from e


class _Progress:
    """A download progress bar on stderr (tqdm: throttled, one line; bytes with binary units)."""

    def __init__(self, url: str, total: int | None) -> None:
        from tqdm.auto import tqdm

        log.info("downloading %s", url)
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="hpa-zoo download",
                        file=sys.stderr, leave=True)

    def update(self, received: int) -> None:
        self.bar.update(received - self.bar.n)

    def close(self, received: int) -> None:
        self.bar.update(received - self.bar.n)
        self.bar.close()
