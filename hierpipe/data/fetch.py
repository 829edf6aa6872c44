"""Obtain a dataset's raw files: download (or take a mirror, archive or directory), verify, extract.

Every step leaves either its complete result or something that is plainly unfinished, so an
interrupted ``hierpipe data prepare`` can simply be rerun: downloads stream into
``<name>.partial`` and are renamed only after their checksum matched (a rerun resumes the
partial file with an HTTP Range request), and archives are extracted into a hidden sibling
directory that is renamed to its final name only once every member is on disk. Archives come
from the internet, so members that would land outside the target directory (absolute paths,
``..``, links pointing outside) or create device files are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import lzma
import posixpath
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from hierpipe.core.errors import HierpipeError


class DownloadError(HierpipeError):
    """A source could not be downloaded (unreachable, HTTP error), as opposed to bad content."""


log = logging.getLogger(__name__)

_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
_DIGEST_LENGTHS = {"sha256": 64, "md5": 32}  # hex digits per supported algorithm
_URL_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20
# Some hosts answer urllib's default "Python-urllib/x.y" agent with 403.
_USER_AGENT = "hierpipe (dataset download)"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published: where it lives and what its bytes must hash to.

    ``checksum`` is ``"sha256:<hex>"`` or ``"md5:<hex>"`` (the form publishers give); ``None``
    means not pinned, which is allowed but logged, with the digest to pin. Archives (.tgz,
    .tar.gz, .tar, .tar.bz2, .tar.xz, .zip) are extracted unless ``extract`` is false; other
    files are copied as they are.
    """

    name: str
    url: str
    checksum: str | None
    extract: bool = True

    def __post_init__(self) -> None:
        # The name becomes a path under the work directory and the last part of mirror URLs.
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise HierpipeError(
                f"remote file name {self.name!r} must be a plain file name without slashes"
            )
        if self.checksum is not None:
            _parse_checksum(self.checksum)


def _parse_checksum(checksum: str) -> tuple[str, str]:
    """``(algorithm, lowercase hex digest)``, checked here so typos fail before any download."""
    algorithm, _, digest = checksum.partition(":")
    algorithm, digest = algorithm.strip().lower(), digest.strip().lower()
    if (
        algorithm not in _DIGEST_LENGTHS
        or len(digest) != _DIGEST_LENGTHS[algorithm]
        or not re.fullmatch(r"[0-9a-f]+", digest)
    ):
        raise HierpipeError(
            f"malformed checksum {checksum!r}: expected 'sha256:<64 hex digits>' or "
            "'md5:<32 hex digits>'"
        )
    return algorithm, digest


def _digest(path: Path, algorithm: str) -> str:
    # usedforsecurity=False keeps md5 available on FIPS-restricted systems: it only detects
    # corruption here, and the publishers of older datasets give nothing else.
    hasher = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


def _mismatch(path: Path, checksum: str) -> str | None:
    """The actual ``algorithm:digest`` of ``path`` if it differs from ``checksum``, else None."""
    algorithm, expected = _parse_checksum(checksum)
    actual = _digest(path, algorithm)
    return None if actual == f"{algorithm}:{expected}" else actual


def verify_checksum(path: Path, checksum: str) -> None:
    """Raise unless ``path`` hashes to ``checksum`` (``"sha256:<hex>"`` or ``"md5:<hex>"``).

    Corrupt or substituted raw files would otherwise surface much later as unreadable images
    or silently different results.
    """
    if not path.is_file():
        raise HierpipeError(f"cannot verify {path}: no such file")
    actual = _mismatch(path, checksum)
    if actual is not None:
        raise HierpipeError(
            f"checksum mismatch for {path}: expected {checksum.strip().lower()}, got {actual}"
        )


class _TransientError(Exception):
    """A network failure worth retrying (connection trouble, 5xx, a response cut short)."""


def download(
    url: str,
    dest: Path,
    checksum: str | None = None,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``, verified when ``checksum`` is given.

    Streams into ``<dest>.partial`` and resumes it with a Range request on the next
    attempt or run, because the raw archives are gigabytes on slow academic servers.
    Network errors, 5xx answers and responses shorter than announced are retried ``retries``
    times, sleeping ``backoff * 2**attempt`` seconds. The checksum is checked before the
    rename, so ``dest`` only ever holds verified bytes; on a mismatch the partial file is
    deleted, since resuming it could never succeed. An existing ``dest`` that matches
    ``checksum`` (or any existing ``dest`` when there is none) is reused without a request.
    ``file://`` URLs are read through the same path. ``progress`` shows a tqdm bar when
    stderr is a terminal.
    """
    if checksum is not None:
        _parse_checksum(checksum)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if checksum is None:
            log.info("reusing %s (no checksum to verify it against)", dest)
            return dest
        actual = _mismatch(dest, checksum)
        if actual is None:
            log.info("reusing %s (checksum verified)", dest)
            return dest
        log.warning("%s has %s, expected %s; downloading it again", dest, actual, checksum)

    partial = dest.with_name(dest.name + ".partial")
    log.info("downloading %s -> %s", url, dest)
    for attempt in range(retries + 1):
        try:
            _stream(url, partial, timeout=timeout, progress=progress, label=dest.name)
            break
        except _TransientError as error:
            if attempt == retries:
                kept = f" ({partial} is kept; a rerun resumes it)" if partial.is_file() else ""
                raise DownloadError(
                    f"downloading {url} failed after {retries + 1} attempts: {error}{kept}"
                ) from error
            delay = backoff * 2**attempt
            log.warning(
                "downloading %s: %s; retry %d of %d in %.1f s",
                url,
                error,
                attempt + 1,
                retries,
                delay,
            )
            time.sleep(delay)

    if checksum is None:
        log.warning("no checksum pinned for %s; it has %s", url, _digest(partial, "sha256"))
    else:
        actual = _mismatch(partial, checksum)
        if actual is not None:
            partial.unlink()
            raise HierpipeError(
                f"checksum mismatch for {url}: expected {checksum.strip().lower()}, got {actual}"
                " (the download was deleted; the file changed upstream or the mirror is wrong)"
            )
    partial.replace(dest)
    return dest


def _stream(url: str, partial: Path, *, timeout: float, progress: bool, label: str) -> None:
    """One attempt: append the rest of ``url`` to ``partial`` (or rewrite it from byte 0)."""
    offset = partial.stat().st_size if partial.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            # The partial file is as long as the remote one or longer (the remote file
            # changed): nothing sensible to resume, so start over.
            log.info("%s: server refused to resume at byte %d; starting over", url, offset)
            partial.unlink()
            _stream(url, partial, timeout=timeout, progress=progress, label=label)
            return
        if error.code >= 500 or error.code in (408, 429):
            raise _TransientError(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(
            f"downloading {url} failed: HTTP {error.code} {error.reason}"
        ) from error
    except (OSError, http.client.HTTPException) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if urlsplit(url).scheme == "file":  # a missing local file does not come back on retry
            raise DownloadError(f"cannot read {url}: {reason}") from error
        raise _TransientError(str(reason)) from error

    with response:
        # file:// and servers without Range support answer with the whole file (status 200,
        # or None for file://); appending that would corrupt the partial file.
        resumed = bool(offset) and response.status == 206 and _range_start(response) == offset
        if offset and not resumed:
            log.info("%s: server ignored the resume request; starting from byte 0", url)
            offset = 0
        elif resumed:
            log.info("%s: resuming at byte %d", url, offset)
        length = response.headers.get("Content-Length", "")
        total = offset + int(length) if length.isdigit() else None
        received = offset
        with (
            partial.open("ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=None if progress else True,
            ) as bar,
        ):
            for chunk in _chunks(response):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client does not complain when the connection closes before Content-Length bytes.
    if total is not None and received < total:
        raise _TransientError(f"connection closed after {received} of {total} bytes")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body in chunks, with read failures (and only those) marked retryable."""
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as error:
            raise _TransientError(f"reading the response failed: {error}") from error
        if not chunk:
            return
        yield chunk


def _is_archive(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` (tar, possibly compressed, or zip) into the new directory ``dest``.

    Unsafe members (absolute paths, ``..`` components, links pointing outside, device files,
    fifos) are refused before anything is written. Extraction happens in a hidden sibling
    directory renamed to ``dest`` only when complete, so ``dest`` existing means a finished
    extraction and is skipped.
    """
    if dest.exists():
        log.info("%s already exists; skipping the extraction of %s", dest, archive)
        return dest
    with _staging(dest) as staging:
        _extract_into(archive, staging)
    return dest


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A hidden sibling of ``dest`` to fill, renamed to ``dest`` when the block succeeds.

    On any failure (interrupts included) the sibling is removed, so nothing that looks
    complete remains; a leftover from a killed process is removed on the next run.
    """
    path = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    path.rename(dest)


def _extract_into(archive: Path, target: Path) -> None:
    """Validate every member of ``archive``, then extract it into the existing ``target``."""
    if not archive.is_file():
        raise HierpipeError(f"cannot extract {archive}: no such file")
    if not _is_archive(archive.name):
        raise HierpipeError(
            f"cannot extract {archive}: expected an archive ({', '.join(_ARCHIVE_SUFFIXES)})"
        )
    log.info("extracting %s -> %s", archive, target)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    _refuse(archive, info.filename, _zip_problem(info))
                zipped.extractall(target)
        else:
            with tarfile.open(archive, "r:*") as tarred:
                for member in tarred.getmembers():
                    _refuse(archive, member.name, _tar_problem(member))
                # The "data" filter re-checks against the real file system (e.g. links
                # chained through earlier links), a second line behind the checks above.
                tarred.extractall(target, filter="data")
    except tarfile.FilterError as error:
        raise HierpipeError(f"refusing to extract {archive}: {error}") from error
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as error:
        raise _corrupt(archive, error) from error
    except OSError as error:
        # Decompressors report bad data as OSError without an errno (e.g. bz2's "Invalid
        # data stream"); an errno means the file system failed (disk full, permissions).
        if error.errno is None:
            raise _corrupt(archive, error) from error
        raise HierpipeError(f"extracting {archive} into {target} failed: {error}") from error


def _corrupt(archive: Path, error: BaseException) -> HierpipeError:
    detail = " ".join(str(error).split())  # tarfile lists what each opener said, on many lines
    return HierpipeError(
        f"cannot extract {archive}: the archive is truncated or corrupt ({detail}); "
        "delete it and obtain it again"
    )


def _refuse(archive: Path, member: str, problem: str | None) -> None:
    if problem is not None:
        raise HierpipeError(
            f"refusing to extract {archive}: member {member!r} {problem}; "
            "expected only files, directories and links that stay inside the target directory"
        )


def _path_problem(name: str) -> str | None:
    """Why writing ``name`` relative to the target could escape it, or None."""
    # Backslashes count as separators too: the archive may have been made on Windows.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"[A-Za-z]:/", normalized):
        return "has an absolute path"
    if ".." in normalized.split("/"):
        return "has a '..' component"
    return None


def _tar_problem(member: tarfile.TarInfo) -> str | None:
    problem = _path_problem(member.name)
    if problem is not None:
        return problem
    if member.issym() or member.islnk():
        if member.linkname.startswith("/"):
            return f"links to the absolute path {member.linkname!r}"
        # Symlink targets are relative to the link's directory, hard links to the archive root.
        base = posixpath.dirname(member.name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if target == ".." or target.startswith("../"):
            return f"links to {member.linkname!r}, outside the extraction directory"
        return None
    if not (member.isreg() or member.isdir()):
        return "is a device file, fifo or other special file"
    return None


def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    problem = _path_problem(info.filename)
    if problem is not None:
        return problem
    # Unix zip tools store the file mode in the high 16 bits; zipfile would write a symlink
    # as a regular file holding its target, so refuse rather than silently change it.
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is a device file, fifo or other special file"
    return None


def fetch(files: Sequence[RemoteFile], source: str | None, work_dir: Path) -> Path:
    """Return a directory holding the dataset's raw files, obtaining them as ``source`` says.

    - ``None``: download each file from its official URL into ``work_dir/downloads``;
    - an ``http://``, ``https://`` or ``file://`` URL: a mirror holding every file under its
      own name (same checksums);
    - an existing directory: the already extracted dataset, returned as is;
    - an existing archive file: extracted alone (verified when one of ``files`` has its name).

    Downloaded archives are extracted and other files copied into ``work_dir/raw``, which is
    built in a hidden sibling and renamed when complete, so its existence means it is
    complete and a rerun reuses it.
    """
    raw = work_dir / "raw"
    if source is None or urlsplit(source).scheme in _URL_SCHEMES:
        if raw.is_dir():
            log.info("%s already exists; reusing it", raw)
            return raw
        downloads = work_dir / "downloads"
        fetched = []
        for file in files:
            url = file.url if source is None else f"{source.rstrip('/')}/{file.name}"
            fetched.append((file, download(url, downloads / file.name, file.checksum)))
        with _staging(raw) as staging:
            for file, path in fetched:
                if file.extract and _is_archive(file.name):
                    _extract_into(path, staging)
                else:
                    log.info("copying %s -> %s", path, staging)
                    shutil.copy2(path, staging / file.name)
        return raw

    path = Path(source).expanduser()
    if path.is_dir():
        log.info("using the extracted dataset in %s", path)
        return path
    if path.is_file() and _is_archive(path.name):
        pinned = [file.checksum for file in files if file.name == path.name and file.checksum]
        for checksum in pinned:
            verify_checksum(path, checksum)
        if not pinned:
            log.warning("%s matches no pinned checksum; it cannot be verified", path)
        return extract(path, raw)
    raise HierpipeError(
        f"dataset source {source!r} is not usable: expected an http://, https:// or file:// "
        f"URL of a mirror, an existing directory with the extracted dataset, or an existing "
        f"archive ({', '.join(_ARCHIVE_SUFFIXES)})"
    )
