"""Object storage (``s3://``, ``gs://``, any fsspec URL) for ``slowfast batch``: the one module that imports fsspec.

``RemotePath`` names a file or folder by URL and offers the few ``pathlib.Path`` operations batch planning uses
(``/``, ``name``, ``stat``, ``is_dir``), so IN_DIR can be a URL; ``fetched`` downloads one video to a local
temporary file right before it is decoded (decord opens file names only, see README "Object storage");
``download``/``upload``/``remove`` move whole files for a remote OUT_DIR (``batch.remote_io``). Every failure of
the store is a ``SlowfastError`` of one line naming the URL and the problem (``store_error``); the S3 client is
set to give up within seconds (``FAST_S3``) instead of retrying for minutes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, SlowfastError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
FETCH_DIR = "SLOWFAST_FETCH_DIR"  # where decode workers put the videos they download (a folder the run removes)
# botocore makes up to 5 attempts with backoff and s3fs retries its own retryable errors 5 times: 7-10 s before a
# refused port says so, about 25 s for an address that drops packets (BENCHMARKS.md, "Issue 20 (helper s3)"). Two
# attempts and a 5 s connect timeout make a missing bucket, bad credentials or a dead endpoint one line within
# seconds; the 60 s read timeout (s3fs: 15 s) leaves a slow but working store its time per read.
FAST_S3 = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}
}
S3FS_RETRIES = 2
EXTRAS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
BUCKETS = (*EXTRAS, "abfss", "adl", "oss")  # schemes whose path starts with a bucket (check_bucket checks it)
IN_PROCESS = ("memory",)  # fsspec stores that live inside one process: outputs would vanish with it, decoders see none
GET_CHUNK = 128  # objects per batched download (download_all): what Ctrl-C waits for at most
LOCAL_DISK = (errno.ENOSPC, errno.EDQUOT)  # a download's error that is this machine's disk, not the store


def is_url(text: Any) -> bool:
    """Whether ``text`` is a URL with a scheme (``s3://b/k``); ``file://`` counts as a local path (``local_path``)."""
    return isinstance(text, (str, RemotePath)) and bool(URL.match(str(text))) and not str(text).startswith("file://")


def local_path(text: str) -> str:
    """``file:///x`` -> ``/x``; any other text as it is."""
    return text[len("file://") :] if text.startswith("file://") else text


def place(text: str | os.PathLike) -> Path | RemotePath:
    """A folder or file named as text (a Ray job's ``root``): a ``RemotePath`` for a URL, else a ``Path``."""
    return RemotePath(str(text)) if is_url(str(text)) else Path(local_path(str(text)))


@dataclass(frozen=True, slots=True)
class RemoteStat:
    """What ``os.stat`` tells of a local file, for an object: size, modification time (None where the store has
    none), and the store's own tag of the content (S3's ETag) where it has one."""

    st_size: int
    st_mtime_ns: int | None
    etag: str | None = None


def _filesystem(url: str):
    """``(fsspec file system, path without the scheme)`` for ``url``; a scheme without its package is a ConfigError."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in IN_PROCESS:
        raise ConfigError(f"{url}: {scheme}:// lives inside one process (the decoding processes would not see it, and "
                          "what is written there is gone when the run ends); give a folder or a bucket")  # fmt: skip
    options = FAST_S3 if scheme in ("s3", "s3a") else {}
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        package = EXTRAS.get(scheme, f"the fsspec package for {scheme}://")
        how = "pip install 'slowfast-cli[cloud]'" if package == "s3fs" else f"pip install {package}"  # [cloud]: s3fs
        if package not in EXTRAS.values():
            how = "see fsspec's list of known implementations"
        raise ConfigError(f"{url}: {scheme}:// needs {package}, which is not installed ({exc}); {how}") from None
    except ValueError as exc:  # an unknown scheme
        raise ConfigError(f"{url}: not a storage URL fsspec knows ({exc})") from None
    if hasattr(fs, "retries"):
        fs.retries = S3FS_RETRIES
    return fs, path.rstrip("/")


def store_error(exc: BaseException, url: str) -> SlowfastError:
    """One line for what went wrong with the store at ``url``: a missing bucket or object (a ConfigError, like a
    local path that does not exist), refused credentials, an endpoint that does not answer, or the store's message."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.errno in LOCAL_DISK:  # writing the local copy, not the store
        return SlowfastError(f"{url}: no room on this machine's disk for its copy ({exc.strerror}); TMPDIR chooses "
                             "the folder (give it one on a disk with room)")  # fmt: skip
    code = ""
    response = getattr(exc, "response", None) or getattr(getattr(exc, "__cause__", None), "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    checks = [
        ("NoSuchBucket", lambda: ConfigError(f"{url}: the bucket does not exist")),
        ("InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|InvalidToken|AuthFailure|Unauthorized|credentials",
         lambda: SlowfastError(f"{url}: the store refused the credentials ({code or first(text)}); check "
                               "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or your profile)")),
        ("AccessDenied|Forbidden|PermissionError", lambda: SlowfastError(f"{url}: access denied ({first(text)})")),
        ("EndpointConnectionError|ConnectTimeout|ConnectionRefused|Cannot connect|ClientConnectorError|"
         "ConnectionError|Could not connect|timed out|TimeoutError",
         lambda: SlowfastError(f"{url}: the storage endpoint does not answer ({first(text)}); check AWS_ENDPOINT_URL "
                               "and the network")),
    ]  # fmt: skip
    for pattern, make in checks:
        if re.search(pattern, f"{code} {text}", re.IGNORECASE):
            return make()
    if isinstance(exc, FileNotFoundError):
        return ConfigError(f"{url}: does not exist")
    if isinstance(exc, IsADirectoryError):
        return ConfigError(f"{url}: is a folder, not a file")
    return SlowfastError(f"{url}: storage error ({first(text)})")


def first(text: str, limit: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RemotePath:
    """A file or folder in object storage, named by its URL, with the ``Path`` operations batch planning uses.

    ``str()`` is the URL (what token files record as their ``source``); ``/`` joins a relative path, sharing the
    file system and the listing's cache of sizes and times, so a resume judges every video without a request each.
    """

    def __init__(self, url: str, fs=None, path: str | None = None, known: dict | None = None):
        self.url = url.rstrip("/") if url.count("/") > 2 else url
        if fs is None:
            fs, path = _filesystem(self.url)
        self.fs, self.path = fs, path if path is not None else self.url.split("://", 1)[1]
        self.known = known if known is not None else {}  # path -> RemoteStat of the objects list_files found

    def __truediv__(self, rel: str | os.PathLike) -> RemotePath:
        rel = Path(rel).as_posix()
        return RemotePath(f"{self.url}/{rel}", self.fs, f"{self.path}/{rel}", self.known)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self):  # to decode workers and Ray tasks: the URL; the file system is made again there
        return (RemotePath, (self.url,))

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def resolve(self) -> RemotePath:
        return self

    def is_relative_to(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (other == self or self.url.startswith(other.url + "/"))

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlowfastError:
            raise
        except Exception as exc:  # botocore, aiohttp, OSError: the store's own exceptions, made one line
            error = store_error(exc, self.url)
            if "access denied (PermissionError: Forbidden)" in str(error):  # a HEAD's 403 has no body to say why
                error = self._why_forbidden(error)
            raise error from None

    def _why_forbidden(self, error: SlowfastError) -> SlowfastError:
        """The reason a listing of the bucket gives (S3 answers HEAD with a bare 403, a list with its error code):
        refused credentials are then said so; any other reason keeps ``error``."""
        try:
            self.fs.ls(self.path.split("/", 1)[0], refresh=True)
        except Exception as exc:
            listed = store_error(exc, self.url)
            return listed if "credentials" in str(listed) else error
        return error

    def info(self) -> dict | None:
        """The store's description of the object (None when there is none): one request."""
        try:
            return self._call(self.fs.info, self.path)
        except ConfigError as exc:
            if str(exc).endswith("does not exist"):
                return None
            raise

    def is_dir(self) -> bool:
        """Whether the URL names a folder (a prefix with objects under it, even where an object has the same name as
        the prefix; a bucket's root, even empty). A missing bucket, refused credentials or a dead endpoint raise
        their one line instead of answering False."""
        info = self.info()
        if info is None:
            self.check_bucket()
        if info is not None and info.get("type") != "directory":  # s3://b/x as an object, and s3://b/x/... too
            listed = self._call(self.fs.ls, self.path + "/", detail=False)  # s3fs: [the object] when nothing is under
            return any(str(p).startswith(self.path + "/") for p in listed)
        return info is not None

    def check_bucket(self) -> None:
        """Raise ``ConfigError("URL: the bucket does not exist")`` when the first part of the path names no bucket
        (a store without buckets has nothing to check)."""
        bucket = self.path.split("/", 1)[0]
        if "://" not in self.url or not bucket or self.url.split("://", 1)[0].lower() not in BUCKETS:
            return
        try:
            self._call(self.fs.info, bucket)
        except ConfigError as exc:
            if str(exc).endswith("does not exist"):
                raise ConfigError(f"{self.url}: the bucket {bucket!r} does not exist") from None
            raise

    def exists(self) -> bool:
        return self.info() is not None

    def stat(self) -> RemoteStat:
        """Size, modification time and ETag (raises FileNotFoundError for a missing object, as ``Path.stat``): from the
        listing when ``list_files`` saw the object, else one request."""
        if self.path in self.known:
            return self.known[self.path]
        info = self.info()
        if info is None or info.get("type") == "directory":
            raise FileNotFoundError(2, "No such object", self.url)
        return identity(info)

    def fingerprint(self) -> str | None:
        """``provenance.file_fingerprint`` of the object (its size, first and last MiB: two ranged reads), or None."""
        from .provenance import FINGERPRINT_BYTES

        try:
            size = self.stat().st_size
            head = self._call(self.fs.cat_file, self.path, start=0, end=min(size, FINGERPRINT_BYTES))
            start = size - FINGERPRINT_BYTES if size > 2 * FINGERPRINT_BYTES else len(head)
            end = min(size, start + FINGERPRINT_BYTES)
            tail = self._call(self.fs.cat_file, self.path, start=start, end=end) if end > start else b""
        except (OSError, SlowfastError):
            return None
        h = hashlib.sha256(str(size).encode())
        h.update(head)
        h.update(tail)
        return "sha256:" + h.hexdigest()


def identity(info: dict) -> RemoteStat:
    """A ``RemoteStat`` from an fsspec info dict (S3's ``LastModified``, GCS's ``updated``, a local ``mtime``)."""
    import datetime as dt

    when = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("last_modified")
    if isinstance(when, str):
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    if isinstance(when, dt.datetime):
        mtime = int(when.timestamp() * 1_000_000) * 1000
    elif isinstance(when, (int, float)):
        mtime = int(when * 1_000_000) * 1000
    else:
        mtime = None
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return RemoteStat(int(info.get("size") or 0), mtime, str(etag).strip('"') if etag else None)


def list_files(root: RemotePath, unplaced: list[str] | None = None) -> list[str]:
    """Every object under ``root`` as a path relative to it, sorted; their RemoteStat go into ``root.known``.

    Folder markers (the empty ``dir/`` objects some tools make) are no files. A key with an empty, ``.`` or ``..``
    part (``in//a.mp4``, ``in/../a.mp4``: S3 keys are any text) names no place under a folder: taken as a path it
    would land outside OUT_DIR (or the staging folder), or on another key; it is left out, and its text relative to
    ``root`` goes into ``unplaced`` when given."""
    found = root._call(root.fs.find, root.path, detail=True)
    rels = []
    for path, info in found.items():
        if path.endswith("/") or info.get("type") == "directory" or not path.startswith(root.path + "/"):
            continue
        rel = path[len(root.path) + 1 :]
        if any(part in ("", ".", "..") for part in rel.split("/")):
            if unplaced is not None:
                unplaced.append(rel)
            continue
        root.known[path] = identity(info)
        rels.append(rel)
    return sorted(rels)


def download(url: RemotePath, local: Path) -> None:
    """Copy an object to the local file ``local`` (its folder is made)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    url._call(url.fs.get_file, url.path, str(local))


def download_all(root: RemotePath, rels: list[str], local: Path) -> None:
    """Copy the objects ``root/rel`` to ``local/rel``, many at once (fsspec's batched ``get``: one request each), in
    chunks of ``GET_CHUNK``: fsspec's event loop finishes a ``get`` it started even after Ctrl-C, and the run's last
    requests (removing its lock) queue behind it, so one call for every file made Ctrl-C wait for the whole pull."""
    for rel in rels:
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(rels), GET_CHUNK):
        part = rels[i : i + GET_CHUNK]
        root._call(root.fs.get, [f"{root.path}/{rel}" for rel in part], [str(local / rel) for rel in part])


def upload(local: Path, url: RemotePath) -> None:
    """Put a complete local file at ``url`` in one request (S3: one PUT, or a multipart upload completed at the end:
    an object appears whole or not at all)."""
    url._call(url.fs.put_file, str(local), url.path)
    url.known.pop(url.path, None)


def create(url: RemotePath, data: bytes) -> bool:
    """Write a small object only if none is there (S3's conditional ``If-None-Match: *`` PUT): True when written,
    False when one was there. A store without conditional writes takes it unconditionally (True)."""
    try:
        url.fs.pipe_file(url.path, data, mode="create")
    except FileExistsError:
        return False
    except (TypeError, NotImplementedError):  # no mode="create" in this fsspec backend
        url._call(url.fs.pipe_file, url.path, data)
    except Exception as exc:
        raise store_error(exc, url.url) from None
    return True


def read_bytes(url: RemotePath) -> bytes:
    return url._call(url.fs.cat_file, url.path)


def remove(url: RemotePath) -> None:
    with contextlib.suppress(SlowfastError):
        url._call(url.fs.rm_file, url.path)
    url.known.pop(url.path, None)


@contextlib.contextmanager
def fetched(url: str) -> Iterator[tuple[str, RemoteStat]]:
    """``(local file, RemoteStat)`` of the object at ``url``, downloaded to a new temporary file that is deleted when
    the block ends, however it ends. The file goes into ``$SLOWFAST_FETCH_DIR`` when set (a folder the batch removes
    at the end, so a decoder killed mid-video leaves nothing behind), else the system's temporary folder. A missing
    object raises ``SlowfastError("URL: does not exist")`` (a ``missing`` failure)."""
    source = RemotePath(url)
    info = source.info()
    if info is None or info.get("type") == "directory":
        raise SlowfastError(f"{url}: does not exist" if info is None else f"{url}: is a folder, not a video")
    folder = os.environ.get(FETCH_DIR) or None
    fd, tmp = tempfile.mkstemp(prefix="slowfast-fetch-", suffix=source.suffix, dir=folder)
    os.close(fd)
    try:
        download(source, Path(tmp))
        yield tmp, identity(info)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_any(path: str, load: Callable[[str], Any]) -> Any:
    """``load(path)`` (a ``video.Clip``) for a local file; for a URL, ``load`` of a downloaded copy (``fetched``), the
    clip then naming the URL, with the object's size, time and fingerprint as its identity (``VideoInfo.identity``:
    the token file records the video, not the copy) and errors naming the URL instead of the copy."""
    if not is_url(path):
        return load(path)
    from dataclasses import replace

    from .provenance import file_fingerprint

    with fetched(path) as (local, st):
        try:
            clip = load(local)
        except SlowfastError as exc:
            raise SlowfastError(str(exc).replace(local, path)) from None
        known = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "fingerprint": file_fingerprint(local)}
    return replace(clip, info=replace(clip.info, path=path, identity=known))
