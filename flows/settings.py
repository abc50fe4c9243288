"""Where things are: the warehouse, the API, the shared real data. Flags win over the environment."""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from pipeline.changes import Rules
from pipeline.config import parse_rules
from pipeline.errors import UsageError
from pipeline.redact import redact
from pipeline.registry.defaults import DEFAULT_API_URL

DEFAULT_WAREHOUSE = "./trialsync-warehouse"


def warehouse_dir(flag: str | None = None) -> Path:
    env = os.environ.get("TRIALSYNC_WAREHOUSE")
    # A blank or control-character value would make a warehouse named "   " in the current directory.
    if not flag and env and (not env.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in env)):
        raise UsageError(f"TRIALSYNC_WAREHOUSE must be a directory path, not {env!r}; unset it for the "
                         f"default ({DEFAULT_WAREHOUSE})")
    return Path(flag or env or DEFAULT_WAREHOUSE).expanduser()


def api_url(flag: str | None = None) -> str:
    return check_api_url(flag or os.environ.get("TRIALSYNC_API_URL") or DEFAULT_API_URL)


def check_api_url(url: str) -> str:
    """An http(s) base URL with a host, no credentials, query or fragment. Credentials are refused
    (not just hidden): the URL is stored with each run and passed to Prefect as a flow parameter."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise UsageError("--api-url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket: http://[::1
        raise UsageError(f"--api-url is not a URL ({exc}): {redact(url)!r}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"--api-url must be an http(s) URL, got {redact(url)!r}")
    if "@" in parts.netloc:
        raise UsageError("--api-url must not contain credentials (user:password@host); the registry needs "
                         "none, and a proxy takes its own from HTTPS_PROXY")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UsageError(f"--api-url has an invalid port: {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"--api-url has no host: {url!r}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UsageError(f"--api-url must be a base URL without ?query or #fragment, got {redact(url)!r}")
    return url.rstrip("/")


def check_bulk_url(url: str) -> str:
    """A bulk file's URL: http(s) with a host and a valid port, without credentials in its user info
    (refused, as in ``--api-url``: the URL is stored with the run and passed to Prefect; a server's
    password belongs in ``~/.netrc``). A query is allowed (the registry's own download URL has one, a
    presigned URL's signature is one): the run stores the URL with secret-looking parameters masked."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise UsageError("a bulk URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise UsageError(f"the bulk URL is not a usable URL ({exc}): {redact(url)!r}") from None
    if "@" in parts.netloc:
        raise UsageError("a bulk URL must not contain credentials (user:password@host): it is stored with the "
                         "run and passed to Prefect; put a server's password in ~/.netrc")
    if not parts.hostname:
        raise UsageError(f"the bulk URL has no host: {redact(url)!r}")
    return url


def shared_data_dir(flag: str | None = None) -> Path:
    """The real registry data: ``--data`` > ``TRIALSYNC_SHARED_DATA`` > ``../shared/data`` beside the clone."""
    explicit = flag or os.environ.get("TRIALSYNC_SHARED_DATA")
    if explicit:
        if not (Path(explicit) / "ctgov" / "studies").is_dir():
            raise UsageError(f"{explicit} does not hold the real registry data (no ctgov/studies folder)")
        return Path(explicit).resolve()
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base / ".." / "shared" / "data"
        if (candidate / "ctgov" / "studies").is_dir():
            return candidate.resolve()
    raise UsageError(
        "cannot find the real registry data (ctgov/studies); pass --data DIR or set TRIALSYNC_SHARED_DATA"
    )


MAX_CONFIG_BYTES = 1024 * 1024  # the shipped files are a few KB; more is not a config file


CONFIG_READ_SECONDS = 10.0  # a pipe (``--config <(cat w.yaml)``, /dev/stdin) must have written by then
# A pipe's text by its path and the pipe (device, inode): a pipe can be read only once, and a command reads
# its config file more than once (checked before Prefect starts, read again by the flow; ``sync --alerts``
# after the sync). Emptied when a command starts (``forget_streams``).
_STREAMS: dict[tuple[str, int, int], str] = {}


def forget_streams() -> None:
    _STREAMS.clear()


def read_config(path: str | os.PathLike[str], what: str) -> str:
    """A config file's text; one ``UsageError`` line when it cannot be read, is a directory, is too
    big, or is not UTF-8 text. A pipe or character device (``--config <(cat w.yaml)``, /dev/stdin)
    is read up to ``MAX_CONFIG_BYTES`` within ``CONFIG_READ_SECONDS``: a named pipe nobody writes to
    or /dev/zero cannot block the command for ever nor fill memory. A pipe is read once per command:
    reading it again (the flow after the command's own check) gives the same text, not an empty one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    stream: tuple[str, int, int] | None = None
    try:
        info = os.fstat(fd)
        if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
            stream = (os.fspath(path), info.st_dev, info.st_ino)
            if stream in _STREAMS:
                return _STREAMS[stream]
            data = _read_stream(fd, path, what)
        elif not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file, pipe or character device"
            raise UsageError(f"cannot read {what} {path}: it is {kind}")
        elif info.st_size > MAX_CONFIG_BYTES:
            raise UsageError(f"{path}: is {info.st_size} bytes; a {what} is at most {MAX_CONFIG_BYTES} bytes")
        else:
            with os.fdopen(fd, "rb", closefd=False) as file:
                data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                         "save it as UTF-8") from None
    if stream is not None:
        _STREAMS[stream] = text
    return text


def config_dir(path: str | os.PathLike[str]) -> Path:
    """Where a config file's relative paths (a watchlist's feed and CA files) start: the file's own
    directory; for a pipe (``--config <(cat w.yaml)``, /dev/stdin), which has none, the current one."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return Path.cwd()
    return Path(path).resolve().parent


def config_path(base: Path, value: str, what: str) -> Path:
    """A path written in a config file (a watchlist's feed or CA file), absolute: ``~`` and ``~user`` are
    home directories, a relative path starts at ``base`` (``config_dir``). A ``~user`` with no such user
    (or ``~`` with no home directory), or a symbolic link loop, is one line naming ``what``, not a traceback."""
    try:
        path = base / Path(value).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        raise UsageError(f"{what}: {value.split('/')[0]!r} is no user's home directory") from None
    try:
        return path.resolve()
    except RuntimeError:  # Python 3.11: "Symlink loop from ..." (3.13: OSError ELOOP)
        raise UsageError(f"{what}: cannot resolve {value}: a loop of symbolic links") from None
    except OSError as exc:
        raise UsageError(f"{what}: cannot resolve {value}: {exc.strerror}") from None


def _read_stream(fd: int, path: str | os.PathLike[str], what: str) -> bytes:
    """All of a pipe's bytes (to its end), with a deadline and a size cap."""
    deadline = time.monotonic() + CONFIG_READ_SECONDS
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UsageError(f"cannot read {what} {path}: it did not end within {CONFIG_READ_SECONDS:g}s "
                             "(a pipe nobody writes to?)")
        if not select.select([fd], [], [], left)[0]:
            continue
        try:
            chunk = os.read(fd, 65_536)
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise UsageError(f"{path}: is more than {MAX_CONFIG_BYTES} bytes; a {what} is at most "
                             f"{MAX_CONFIG_BYTES} bytes")


def rules(path: str | None, meta: Mapping[str, str]) -> Rules:
    """Severity rules: a YAML file (its ``severity:`` mapping, checked whole: ``FILE: key: what is
    wrong``) > the warehouse's stored rules > defaults."""
    if path:
        return parse_rules(read_config(path, "rules file"), str(path))
    if "rules" in meta:
        return Rules.from_mapping(orjson.loads(meta["rules"]))
    return Rules()
