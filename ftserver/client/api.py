"""A small client of ftserver's HTTP API (docs/http-api.md): list and download exports.

Synchronous (``urllib``), for scripts and the ``ftserver files`` command. Works against EMQX's
local exporter as well: the paths, the response shapes and the ``uri`` of each file are the
same. The bearer token is sent only to the API's own origin, never to a download URL that
points elsewhere (a presigned S3 URL, say).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

BASE = "/api/v5/file_transfer"
_CHUNK = 1 << 20


class ApiError(Exception):
    """An HTTP error answer (``status``) with the server's ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class FilesApi:
    """The file-transfer endpoints at ``url`` (for example ``http://127.0.0.1:18083``)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._origin = (parts.scheme, parts.netloc)

    def _open(self, url: str) -> Any:
        headers = {"Accept": "application/json"}
        parts = urllib.parse.urlsplit(url)
        if self.token and (parts.scheme, parts.netloc) == self._origin:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            body = exc.read()
            exc.close()
            code, message = "HTTP_ERROR", exc.reason
            try:
                doc = json.loads(body)
                code, message = str(doc.get("code", code)), str(doc.get("message", message))
            except (ValueError, AttributeError):
                pass
            raise ApiError(exc.code, code, str(message)) from None

    def _json(self, path: str) -> Any:
        with self._open(self.url + path) as resp:
            return json.loads(resp.read())

    def page(self, *, limit: int = 100, following: str | None = None) -> tuple[list[Any], str]:
        """One page of exported files, and the cursor of the next ("" on the last page)."""
        query = {"limit": str(limit)}
        if following:
            query["following"] = following
        doc = self._json(f"{BASE}/files?{urllib.parse.urlencode(query)}")
        return list(doc.get("files", [])), str(doc.get("cursor") or "")

    def iter_files(self, *, page: int = 100) -> Iterator[Any]:
        """Every exported file, page after page."""
        cursor: str | None = None
        while True:
            files, nxt = self.page(limit=page, following=cursor)
            yield from files
            if not nxt:
                return
            cursor = nxt

    def transfer_files(self, client_id: str, file_id: str) -> list[Any]:
        """The exported files of one transfer (``ApiError`` 404 when there are none)."""
        cid = urllib.parse.quote(client_id, safe="")
        fid = urllib.parse.quote(file_id, safe="")
        return list(self._json(f"{BASE}/files/{cid}/{fid}").get("files", []))

    def download(self, item: dict[str, Any], out: BinaryIO) -> tuple[int, str]:
        """Write the bytes of a file item (its ``uri``) to ``out``; (size, hex SHA-256)."""
        uri = str(item["uri"])
        url = urllib.parse.urljoin(self.url + "/", uri)
        h = hashlib.sha256()
        n = 0
        with self._open(url) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
        return n, h.hexdigest()


def safe_name(name: object) -> str:
    """A file item's ``name`` usable as a local file name (no directories, not . or ..)."""
    text = Path(str(name)).name
    if text in ("", ".", ".."):
        raise ValueError(f"unusable file name {name!r}")
    return text
