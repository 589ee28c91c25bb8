"""The OpenAPI 3 document of the HTTP API, served at ``GET /api/v5/openapi.json``.

Kept as data beside the code; a test checks that it describes exactly the routes
:func:`ftserver.http.api.build_app` registers (paths and methods), so the two cannot drift.
docs/http-api.md is the prose version.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["OPENAPI"]


def _error(description: str, *codes: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {"properties": {"code": {"type": "string", "enum": list(codes)}}},
                    ]
                }
            }
        },
    }


def _json(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_UNAUTHORIZED: Final = _error(
    "Missing or wrong bearer token (when http.token is set).", "UNAUTHORIZED"
)
_BAD_REQUEST: Final = _error("Bad limit or cursor.", "BAD_REQUEST")
_FILES_NOT_FOUND: Final = _error("No export of this transfer.", "FILES_NOT_FOUND")
_S3_ERROR: Final = _error(
    'With `export.kind = "s3"`: the bucket could not be read; `message` says why '
    "(`s3_no_such_bucket`, `s3_access_denied`, `s3_unavailable`, ...).",
    "S3_ERROR",
)

_TRANSFER_PARAMS: Final = [
    {"$ref": "#/components/parameters/clientid"},
    {"$ref": "#/components/parameters/fileid"},
]
_PAGE_PARAMS: Final = [
    {"$ref": "#/components/parameters/limit"},
    {"$ref": "#/components/parameters/following"},
]

_DOWNLOAD: Final = {
    "tags": ["file_transfer"],
    "summary": "Download an exported file",
    "description": (
        "Streams the file named by `fileref` (a path below the exports root, as the `uri` of "
        "a file item carries it). Supports HTTP Range requests (206, 416) and conditional "
        'requests (ETag, Last-Modified). With `export.kind = "s3"`, `fileref` is the '
        "object key and the answer is a 307 redirect to a presigned URL."
    ),
    "parameters": [
        {"$ref": "#/components/parameters/fileref"},
        {"$ref": "#/components/parameters/node"},
        {
            "name": "Range",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "example": "bytes=0-1023",
        },
    ],
    "responses": {
        "200": {
            "description": "The whole file.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "206": {
            "description": "The requested range.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "400": _error("Missing `fileref`.", "BAD_REQUEST"),
        "401": _UNAUTHORIZED,
        "404": _error(
            "No such file: empty, absolute or `..`-containing fileref, a path resolving outside "
            "the exports root, or an export not (yet) complete.",
            "NOT_FOUND",
        ),
        "307": {"description": "S3 exports: redirect (Location) to a presigned GET URL."},
        "416": {"description": "The range is not satisfiable (Content-Range: bytes */size)."},
        "502": _S3_ERROR,
    },
}

#: the whole document (JSON-serialisable)
OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.0.3",
    "info": {
        "title": "ftserver HTTP API",
        "version": "1",
        "description": (
            "File listing, download and health of ftserver, compatible with EMQX's "
            '`/api/v5/file_transfer` API. Errors are `{"code": ..., "message": ...}`.'
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}, {}],
    "tags": [{"name": "file_transfer"}, {"name": "health"}],
    "paths": {
        "/healthz": {
            "get": {
                "tags": ["health"],
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json("The process serves HTTP.", "Status")},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["health"],
                "summary": "Readiness",
                "description": (
                    "200 when every worker is up and the data directory is writable (a "
                    "temporary file is created and deleted), else 503 with the reason."
                ),
                "security": [],
                "responses": {
                    "200": _json("Ready.", "Status"),
                    "503": _json("Not ready; `reason` says why.", "Status"),
                },
            }
        },
        "/api/v5/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/v5/file_transfer/files": {
            "get": {
                "tags": ["file_transfer"],
                "summary": "List exported files",
                "description": (
                    "Exports in a stable order (by their path below the exports root). "
                    "`cursor` is present only when more files follow; pass it as "
                    "`following` to get the next page. A cursor stays valid while files "
                    'are added or removed. With `export.kind = "s3"` the files are the '
                    "bucket's objects in key order, and the cursor carries the S3 marker."
                ),
                "parameters": _PAGE_PARAMS,
                "responses": {
                    "200": _json("A page of files.", "FilesPage"),
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                    "502": _S3_ERROR,
                },
            }
        },
        "/api/v5/file_transfer/files/{clientid}/{fileid}": {
            "get": {
                "tags": ["file_transfer"],
                "summary": "Files exported by one transfer",
                "parameters": _TRANSFER_PARAMS,
                "responses": {
                    "200": _json("The transfer's files (normally one).", "FilesPage"),
                    "401": _UNAUTHORIZED,
                    "404": _FILES_NOT_FOUND,
                    "502": _S3_ERROR,
                },
            },
            "delete": {
                "tags": ["file_transfer"],
                "summary": "Delete the files exported by one transfer",
                "description": (
                    "Removes each export's manifest, then its file, then the directories "
                    "left empty."
                ),
                "parameters": _TRANSFER_PARAMS,
                "responses": {
                    "204": {"description": "Deleted."},
                    "401": _UNAUTHORIZED,
                    "404": _FILES_NOT_FOUND,
                    "502": _S3_ERROR,
                },
            },
        },
        "/api/v5/file_transfer/file": {
            "get": _DOWNLOAD,
            "head": {**_DOWNLOAD, "summary": "Headers of an exported file (size, ETag)"},
        },
        "/api/v5/file_transfer/transfers": {
            "get": {
                "tags": ["file_transfer"],
                "summary": "List transfers in progress",
                "description": "Unfinished transfers in staging, paged like the file list.",
                "parameters": _PAGE_PARAMS,
                "responses": {
                    "200": _json("A page of transfers.", "TransfersPage"),
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/v5/file_transfer/cluster/transfers": {
            "get": {
                "tags": ["file_transfer"],
                "summary": "List transfers in progress on every node",
                "description": "Streamed S3 transfers in progress across the cluster, from "
                "their checkpoints in the bucket (S3 export only), paged like the file list.",
                "parameters": _PAGE_PARAMS,
                "responses": {
                    "200": _json("A page of transfers.", "ClusterTransfersPage"),
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                    "404": _error("The exporter is not S3.", "NOT_A_CLUSTER"),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Required on /api/v5 when the http.token setting is set.",
            }
        },
        "parameters": {
            "limit": {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "Items per page.",
                "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
            },
            "following": {
                "name": "following",
                "in": "query",
                "required": False,
                "description": "The `cursor` of the previous page.",
                "schema": {"type": "string"},
            },
            "clientid": {
                "name": "clientid",
                "in": "path",
                "required": True,
                "description": "MQTT client identifier, percent-encoded (`/` as `%2F`).",
                "schema": {"type": "string"},
            },
            "fileid": {
                "name": "fileid",
                "in": "path",
                "required": True,
                "description": "File id of the transfer, percent-encoded (`/` as `%2F`).",
                "schema": {"type": "string"},
            },
            "fileref": {
                "name": "fileref",
                "in": "query",
                "required": True,
                "description": "Path of the file below the exports root.",
                "schema": {"type": "string"},
                "example": "8E/B5/7023DA998C12F0B2A6CA586027E48BEC6271/client-1/file-id-1/a.bin",
            },
            "node": {
                "name": "node",
                "in": "query",
                "required": False,
                "description": "Node holding the file (EMQX compatibility; ignored).",
                "schema": {"type": "string"},
            },
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "Status": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "unavailable"]},
                    "reason": {"type": "string"},
                },
            },
            "FileItem": {
                "type": "object",
                "required": ["clientid", "fileid", "name", "size", "timestamp", "uri", "metadata"],
                "properties": {
                    "clientid": {"type": "string"},
                    "fileid": {"type": "string"},
                    "name": {"type": "string"},
                    "size": {"type": "integer"},
                    "timestamp": {
                        "type": "string",
                        "format": "date-time",
                        "description": "Export time (`exported_at`, else the file's mtime).",
                    },
                    "uri": {
                        "type": "string",
                        "description": (
                            "Download path (/api/v5/file_transfer/file?...); with "
                            '`export.kind = "s3"`, a presigned GET URL of the object.'
                        ),
                    },
                    "metadata": {
                        "type": "object",
                        "description": "The manifest object (init metadata, checksum, ...).",
                    },
                },
            },
            "FilesPage": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"$ref": "#/components/schemas/FileItem"}},
                    "cursor": {"type": "string"},
                },
            },
            "TransferItem": {
                "type": "object",
                "required": [
                    "clientid",
                    "fileid",
                    "name",
                    "bytes_received",
                    "expected_size",
                    "last_activity",
                ],
                "properties": {
                    "clientid": {"type": "string"},
                    "fileid": {"type": "string"},
                    "name": {"type": "string", "nullable": True},
                    "bytes_received": {"type": "integer"},
                    "expected_size": {"type": "integer", "nullable": True},
                    "last_activity": {"type": "string", "format": "date-time"},
                },
            },
            "ClusterTransferItem": {
                "type": "object",
                "required": [
                    "clientid",
                    "fileid",
                    "name",
                    "expected_size",
                    "bytes_in_parts",
                    "node",
                    "generation",
                    "state",
                    "last_activity",
                ],
                "properties": {
                    "clientid": {"type": "string"},
                    "fileid": {"type": "string"},
                    "name": {"type": "string", "nullable": True},
                    "expected_size": {"type": "integer"},
                    "bytes_in_parts": {"type": "integer"},
                    "node": {"type": "string"},
                    "generation": {"type": "integer"},
                    "state": {"type": "string", "enum": ["streaming", "completing"]},
                    "last_activity": {"type": "string", "format": "date-time"},
                },
            },
            "ClusterTransfersPage": {
                "type": "object",
                "required": ["transfers"],
                "properties": {
                    "transfers": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/ClusterTransferItem"},
                    },
                    "cursor": {"type": "string"},
                },
            },
            "TransfersPage": {
                "type": "object",
                "required": ["transfers"],
                "properties": {
                    "transfers": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/TransferItem"},
                    },
                    "cursor": {"type": "string"},
                },
            },
        },
    },
}
