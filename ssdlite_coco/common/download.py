"""Download files over HTTP(S) with resume, SHA-1 verification and a progress bar.

Bytes go to ``<dest>.part`` first. After an interruption (a dropped connection, a killed job) the next
attempt asks the server for the rest with an HTTP ``Range`` header and appends to the ``.part`` file.
Only a complete file whose SHA-1 matches is renamed to ``dest``; a file whose SHA-1 does not match is
deleted, so nothing that looks valid is left behind.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ssdlite_coco.common.digests import file_digest
from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.common.progress import progress_bar

CHUNK_SIZE = 1 << 20
USER_AGENT = "ssdlite-coco/1.0 (+python urllib)"


class DownloadError(SsdliteError):
    """A download failed for good; the message names the URL and what to do."""


class _Interrupted(Exception):
    """A transfer stopped early; worth resuming."""


def part_path(dest: str | os.PathLike) -> Path:
    """Where the bytes of ``dest`` accumulate until the download is complete."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def check_url(url: str) -> None:
    """A URL that no retry can fix (no http/https/file scheme, no host) is an error at once."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.hostname):
        raise DownloadError(
            f"{url!r} is not a valid http(s) URL; fix it (base_url in the dataset section of the config), "
            "e.g. http://images.cocodataset.org"
        )


def _content_range_start(value: str | None) -> tuple[int, int | None] | None:
    """Parse ``bytes START-END/TOTAL`` into (START, TOTAL or None)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One request: fetch what ``part`` lacks and append it. Raises _Interrupted if it stops early."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Nothing left to send: the .part file is already complete (or longer than the file).
            return
        if 500 <= error.code < 600:
            raise _Interrupted(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(
            f"{url}: HTTP {error.code} {error.reason}; check the URL (base_url in the dataset section of the config)"
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Interrupted(str(getattr(error, "reason", error))) from error
    with response:
        if offset and response.status == 206:
            parsed = _content_range_start(response.headers.get("Content-Range"))
            if parsed is None or parsed[0] != offset:
                raise _Interrupted(
                    f"server answered Range bytes={offset}- with Content-Range "
                    f"{response.headers.get('Content-Range')!r}; restarting"
                )
            mode = "ab"
            total = parsed[1]
        else:
            if offset:
                print(
                    f"warning: {url}: the server ignored the request to resume at byte {offset}; "
                    "restarting from byte 0",
                    file=sys.stderr,
                )
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = offset
        with (
            part.open(mode) as stream,
            progress_bar(total=total, description=part.name[: -len(".part")], unit="B", enabled=progress) as bar,
        ):
            bar.update(offset)
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (http.client.IncompleteRead, OSError, http.client.HTTPException) as error:
                    raise _Interrupted(f"connection lost after {received} bytes ({error!r})") from error
                if not chunk:
                    break
                stream.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received < total:
            raise _Interrupted(f"connection closed after {received} of {total} bytes")


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha1: str | None = None,
    *,
    retries: int,
    timeout: float = 60.0,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (resuming a ``.part`` file left by an earlier attempt).

    ``sha1`` (hex), when given, must match the complete file. A dropped connection is resumed up to
    ``retries`` times within this call, waiting ``retry_wait`` × attempt seconds in between; the
    ``.part`` file stays for the next call if they all fail. ``dest`` appears only when complete.
    """
    check_url(url)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    attempt = 0
    while True:
        try:
            _transfer(url, part, timeout, progress)
            break
        except _Interrupted as error:
            attempt += 1
            kept = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise DownloadError(
                    f"{url}: download interrupted ({error}); {kept} bytes are kept in {part}, run again to resume"
                ) from None
            print(
                f"warning: {url}: {error}; {kept} bytes kept, retrying (attempt {attempt + 1} of {retries + 1})",
                file=sys.stderr,
            )
            time.sleep(retry_wait * attempt)
    if not part.exists():
        part.touch()
    if sha1:
        actual = file_digest(part, "sha1", progress=progress)
        if actual.lower() != sha1.lower():
            size = part.stat().st_size
            part.unlink()
            raise DownloadError(
                f"{url}: SHA-1 mismatch: expected {sha1.lower()}, got {actual} ({size} bytes); "
                "the download was deleted. Run again to retry, or if this mirror serves "
                "another version, set its SHA-1 in the dataset section of the config"
            )
    os.replace(part, dest)
    return dest


def file_url(base_url: str, path: str) -> str:
    """Join a base URL and a path with exactly one slash."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")
