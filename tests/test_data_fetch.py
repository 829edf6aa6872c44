"""Fetching raw datasets: downloads over 127.0.0.1 (resume, retries, checksums), safe extraction."""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import zipfile
from pathlib import Path

import pytest
from http_server import serve_directory

from hierpipe.core.errors import HierpipeError
from hierpipe.data.fetch import RemoteFile, download, extract, fetch, verify_checksum

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several read chunks of the server's socket


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# The layout every good archive holds, checked after extraction.
TREE = {"images/001.Cat/a.jpg": PAYLOAD, "images/002.Dog/b.jpg": b"dog", "classes.txt": b"1 Cat\n"}


def make_tar(path: Path, members: dict[str, bytes] = TREE, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes] = TREE) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


@pytest.fixture
def server(tmp_path):
    with serve_directory(write(tmp_path / "served" / "blob.bin", PAYLOAD).parent) as control:
        yield control


# --- download ---------------------------------------------------------------------------


@pytest.mark.parametrize("checksum", [sha256(PAYLOAD), md5(PAYLOAD)], ids=["sha256", "md5"])
def test_download_verifies_checksum(server, tmp_path, checksum):
    dest = tmp_path / "out" / "blob.bin"
    assert download(f"{server.url}/blob.bin", dest, checksum, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("blob.bin.partial").exists()
    verify_checksum(dest, checksum)


def test_download_reuses_a_verified_file(server, tmp_path):
    dest = write(tmp_path / "blob.bin", PAYLOAD)
    download(f"{server.url}/blob.bin", dest, sha256(PAYLOAD), progress=False)
    assert server.requests == []


def test_download_replaces_a_file_that_fails_its_checksum(server, tmp_path):
    dest = write(tmp_path / "blob.bin", b"stale")
    download(f"{server.url}/blob.bin", dest, sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_resumes_a_partial_file(server, tmp_path):
    dest = tmp_path / "blob.bin"
    half = len(PAYLOAD) // 2
    write(dest.with_name("blob.bin.partial"), PAYLOAD[:half])
    download(f"{server.url}/blob.bin", dest, sha256(PAYLOAD), progress=False)
    assert [request.range for request in server.requests] == [f"bytes={half}-"]
    assert dest.read_bytes() == PAYLOAD


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    dest = tmp_path / "blob.bin"
    write(dest.with_name("blob.bin.partial"), PAYLOAD[:1000])
    server.ignore_range = True
    download(f"{server.url}/blob.bin", dest, sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_restarts_when_the_partial_file_is_too_long(server, tmp_path):
    dest = tmp_path / "blob.bin"
    write(dest.with_name("blob.bin.partial"), PAYLOAD + b"junk")
    download(f"{server.url}/blob.bin", dest, sha256(PAYLOAD), progress=False)
    assert [request.range for request in server.requests] == [f"bytes={len(PAYLOAD) + 4}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_download_resumes_after_the_connection_is_cut(server, tmp_path):
    dest = tmp_path / "blob.bin"
    server.cut_next = 30_000
    download(f"{server.url}/blob.bin", dest, sha256(PAYLOAD), backoff=0, progress=False)
    assert [request.range for request in server.requests] == [None, "bytes=30000-"]
    assert dest.read_bytes() == PAYLOAD


def test_download_retries_after_503(server, tmp_path):
    dest = tmp_path / "blob.bin"
    server.fail_next = 2
    download(f"{server.url}/blob.bin", dest, sha256(PAYLOAD), backoff=0, progress=False)
    assert len(server.requests) == 3
    assert dest.read_bytes() == PAYLOAD


def test_download_gives_up_after_its_retries(server, tmp_path):
    server.fail_next = 10
    url = f"{server.url}/blob.bin"
    with pytest.raises(HierpipeError, match=r"blob\.bin failed after 3 attempts: HTTP 503"):
        download(url, tmp_path / "blob.bin", retries=2, backoff=0, progress=False)
    assert len(server.requests) == 3


def test_download_does_not_retry_404(server, tmp_path):
    with pytest.raises(HierpipeError, match=r"missing\.bin failed: HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "x", backoff=0, progress=False)
    assert len(server.requests) == 1


def test_download_checksum_mismatch_names_url_and_both_digests(server, tmp_path):
    dest = tmp_path / "blob.bin"
    wrong = sha256(b"something else")
    url = f"{server.url}/blob.bin"
    with pytest.raises(HierpipeError) as error:
        download(url, dest, wrong, progress=False)
    assert url in str(error.value)
    assert wrong in str(error.value)
    assert sha256(PAYLOAD) in str(error.value)
    assert list(tmp_path.glob("blob.bin*")) == []


def test_download_from_a_file_url(tmp_path):
    source = write(tmp_path / "blob.bin", PAYLOAD)
    dest = tmp_path / "out" / "blob.bin"
    download(source.as_uri(), dest, md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(HierpipeError, match="cannot read file://"):
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "m", progress=False)


def test_download_without_checksum_logs_the_digest_to_pin(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hierpipe.data.fetch"):
        download(f"{server.url}/blob.bin", tmp_path / "blob.bin", progress=False)
    assert sha256(PAYLOAD) in caplog.text


@pytest.mark.parametrize("checksum", ["sha1:abcd", "sha256:xyz", "md5:" + "0" * 31, "deadbeef"])
def test_malformed_checksum(tmp_path, checksum):
    with pytest.raises(HierpipeError, match="expected 'sha256:<64 hex digits>'"):
        verify_checksum(write(tmp_path / "f", b""), checksum)
    with pytest.raises(HierpipeError, match="malformed checksum"):
        RemoteFile("f", "http://127.0.0.1/f", checksum)


def test_verify_checksum_names_file_and_digests(tmp_path):
    path = write(tmp_path / "f.bin", PAYLOAD)
    with pytest.raises(HierpipeError) as error:
        verify_checksum(path, md5(b"other"))
    assert str(path) in str(error.value)
    assert md5(b"other") in str(error.value)
    assert md5(PAYLOAD) in str(error.value)


# --- extract ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a.tgz", "a.tar.gz", "a.tar", "a.tar.bz2", "a.tar.xz", "a.zip", "A.TGZ"]
)
def test_extract_formats(tmp_path, name):
    if name.endswith(".zip"):
        archive = make_zip(tmp_path / name)
    else:
        mode = {"tar": "w", "bz2": "w:bz2", "xz": "w:xz"}.get(name.rsplit(".", 1)[1], "w:gz")
        archive = make_tar(tmp_path / name, mode=mode)
    dest = tmp_path / "out"
    assert extract(archive, dest) == dest
    assert tree(dest) == TREE
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([name, "out"])


def test_extract_skips_an_existing_destination(tmp_path):
    dest = tmp_path / "out"
    write(dest / "done.txt", b"")
    extract(make_tar(tmp_path / "a.tgz"), dest)
    assert tree(dest) == {"done.txt": b""}


@pytest.mark.parametrize("name", ["a.tgz", "a.tar", "a.tar.bz2", "a.zip"])
def test_extract_truncated_archive(tmp_path, name):
    archive = tmp_path / name
    if name.endswith(".zip"):
        make_zip(archive)
    else:
        make_tar(archive, mode={"a.tgz": "w:gz", "a.tar": "w", "a.tar.bz2": "w:bz2"}[name])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(HierpipeError, match="truncated or corrupt") as error:
        extract(archive, tmp_path / "out")
    assert str(archive) in str(error.value)
    assert [path.name for path in tmp_path.iterdir()] == [name]


def test_extract_rejects_a_non_archive(tmp_path):
    with pytest.raises(HierpipeError, match=r"expected an archive \(\.tgz"):
        extract(write(tmp_path / "a.mat", b""), tmp_path / "out")


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (tar_member("../evil"), "has a '..' component"),
        (tar_member("ok/../../evil"), "has a '..' component"),
        (tar_member("/tmp/evil"), "has an absolute path"),
        (tar_member("passwd", tarfile.SYMTYPE, "/etc/passwd"), "links to the absolute path"),
        (tar_member("sub/up", tarfile.SYMTYPE, "../../x"), "outside the extraction directory"),
        (tar_member("hard", tarfile.LNKTYPE, "../x"), "outside the extraction directory"),
        (tar_member("null", tarfile.CHRTYPE), "is a device file"),
        (tar_member("disk", tarfile.BLKTYPE), "is a device file"),
        (tar_member("pipe", tarfile.FIFOTYPE), "fifo"),
    ],
    ids=lambda value: value.name if isinstance(value, tarfile.TarInfo) else "",
)
def test_extract_refuses_unsafe_tar_members(tmp_path, member, problem):
    archive = tmp_path / "bad.tar"
    make_tar(archive, mode="w")  # good members first: none of them may be written either
    with tarfile.open(archive, "a") as tarred:
        tarred.addfile(member)
    with pytest.raises(HierpipeError, match=problem) as error:
        extract(archive, tmp_path / "x" / "out")
    assert str(archive) in str(error.value)
    assert repr(member.name) in str(error.value)
    assert list((tmp_path / "x").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_extract_keeps_links_that_stay_inside(tmp_path):
    archive = make_tar(tmp_path / "a.tar", mode="w")
    with tarfile.open(archive, "a") as tarred:
        tarred.addfile(tar_member("images/latest", tarfile.SYMTYPE, "001.Cat"))
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "images" / "latest" / "a.jpg").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("name", "mode", "problem"),
    [
        ("../evil", 0o100644, "has a '..' component"),
        ("..\\evil", 0o100644, "has a '..' component"),
        ("/evil", 0o100644, "has an absolute path"),
        ("link", 0o120777, "is a symbolic link"),
        ("pipe", 0o010644, "fifo"),
    ],
)
def test_extract_refuses_unsafe_zip_members(tmp_path, name, mode, problem):
    archive = make_zip(tmp_path / "bad.zip")
    with zipfile.ZipFile(archive, "a") as zipped:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zipped.writestr(info, b"/etc/passwd")
    with pytest.raises(HierpipeError, match=problem) as error:
        extract(archive, tmp_path / "x" / "out")
    assert f"{archive}: member {name!r}" in str(error.value)
    assert list((tmp_path / "x").iterdir()) == []
    assert not (tmp_path / "evil").exists()


# --- fetch ------------------------------------------------------------------------------


@pytest.fixture
def published(tmp_path):
    """An archive and a plain file as a publisher serves them, with their RemoteFiles."""
    annotations = write(tmp_path / "served" / "annos.mat", b"MATLAB 5.0")
    archive = make_tar(annotations.with_name("CUB_200_2011.tgz"))
    with serve_directory(annotations.parent) as control:
        files = [
            RemoteFile(archive.name, f"{control.url}/{archive.name}", md5(archive.read_bytes())),
            RemoteFile(annotations.name, f"{control.url}/{annotations.name}", None),
        ]
        yield control, files, archive


def test_fetch_from_official_urls(published, tmp_path):
    server, files, _ = published
    work = tmp_path / "work"
    raw = fetch(files, None, work)
    assert raw == work / "raw"
    assert tree(raw) == {**TREE, "annos.mat": b"MATLAB 5.0"}
    assert sorted(path.name for path in (work / "downloads").iterdir()) == [
        "CUB_200_2011.tgz",
        "annos.mat",
    ]
    requests = len(server.requests)
    assert fetch(files, None, work) == raw  # complete: reused without a request
    assert len(server.requests) == requests


def test_fetch_extract_false_copies_the_archive(published, tmp_path):
    _, files, archive = published
    raw = fetch([RemoteFile(files[0].name, files[0].url, None, extract=False)], None, tmp_path)
    assert tree(raw) == {archive.name: archive.read_bytes()}


def test_fetch_from_a_mirror(published, tmp_path):
    server, files, _ = published
    # Official URLs that 404: only the mirror may be asked.
    moved = [RemoteFile(f.name, f"{server.url}/gone/{f.name}", f.checksum) for f in files]
    raw = fetch(moved, server.url + "/", tmp_path / "work")
    assert tree(raw) == {**TREE, "annos.mat": b"MATLAB 5.0"}
    assert {request.path for request in server.requests} == {"/CUB_200_2011.tgz", "/annos.mat"}


def test_fetch_from_a_mirror_with_a_wrong_file_leaves_no_raw_dir(published, tmp_path):
    server, files, _ = published
    wrong = [RemoteFile(files[0].name, files[0].url, md5(b"other"))]
    with pytest.raises(HierpipeError, match="checksum mismatch"):
        fetch(wrong, server.url, tmp_path / "work")
    assert not (tmp_path / "work" / "raw").exists()


def test_fetch_from_a_local_archive(published, tmp_path):
    _, files, archive = published
    raw = fetch(files, str(archive), tmp_path / "work")
    assert raw == tmp_path / "work" / "raw"
    assert tree(raw) == TREE


def test_fetch_verifies_a_local_archive_with_a_known_name(published, tmp_path):
    _, files, archive = published
    pinned = [RemoteFile(archive.name, files[0].url, md5(b"other"))]
    with pytest.raises(HierpipeError, match=f"checksum mismatch for {archive}"):
        fetch(pinned, str(archive), tmp_path / "work")
    assert not (tmp_path / "work" / "raw").exists()


def test_fetch_uses_an_extracted_directory_as_is(published, tmp_path):
    _, files, _ = published
    extracted = write(tmp_path / "CUB_200_2011" / "classes.txt", b"").parent
    assert fetch(files, str(extracted), tmp_path / "work") == extracted
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("source", ["ftp://example.org/cub", "missing", "served/annos.mat"])
def test_fetch_rejects_unknown_sources(published, tmp_path, source):
    _, files, _ = published
    if "://" not in source:  # a missing path, and a file that is no archive
        source = str(tmp_path / source)
    with pytest.raises(
        HierpipeError, match="expected an http://, https:// or file:// URL"
    ) as error:
        fetch(files, source, tmp_path / "work")
    assert repr(source) in str(error.value)
