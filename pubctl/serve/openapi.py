"""The OpenAPI 3 description of ``pubctl serve``'s HTTP API, served at ``/openapi.json``.

It is built here, in one place, from the same constants the server checks requests
with (``params.py``); ``docs/openapi.json`` is a copy that a test holds equal to what the
server serves. Regenerate it with ``python -m pubctl.serve.openapi > docs/openapi.json``.

OpenAPI 3.0.3: every tool reads it, and its schemas (a dialect of JSON Schema draft 4)
say all the API needs. A test runs Schemathesis against a real server with it: every
answer must match, requests the description refuses must get a 4xx, requests it allows
must be accepted, and other methods get 405.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pubctl import __version__
from pubctl.serve.params import DEFAULT_LIMIT, MAX_AFTER, MAX_KINDS, MAX_LIMIT, MAX_WAIT_S
from pubctl.sources import KINDS

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"

# What the server writes: lowercase. What it reads: either case, as format "uuid" has it.
_UUID = {
    "type": "string",
    "format": "uuid",
    "pattern": "^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$",
}
_UUID_IN = {
    "type": "string",
    "format": "uuid",
    "pattern": "^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$",
}
_REF = "#/components/{}/{}".format


def _ref(section: str, name: str) -> dict[str, str]:
    return {"$ref": _REF(section, name)}


def _json_content(schema_name: str) -> dict[str, Any]:
    return {JSON: {"schema": _ref("schemas", schema_name)}}


_ITEM = {
    "type": "object",
    "description": "One item's newest state. A tombstone (`deleted: true`) has the payload `{}`.",
    "additionalProperties": False,
    "required": [
        "rev",
        "kind",
        "pub_id",
        "source_id",
        "payload",
        "payload_hash",
        "schema_version",
        "deleted",
    ],
    "properties": {
        "rev": {"type": "integer", "format": "int64", "minimum": 1},
        "kind": {"type": "string", "enum": list(KINDS)},
        "pub_id": {**_UUID, "description": "A stable, opaque identifier of the item."},
        "source_id": {
            "type": "integer",
            "format": "int64",
            "description": "The id of the source row: the topic's, or the question's for "
            "`question` and `explanation`.",
        },
        "payload": {
            "type": "object",
            "description": "Written in its RFC 8785 canonical bytes in the body: their "
            "SHA-256 is `payload_hash`.",
        },
        "payload_hash": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "The lowercase hex SHA-256 of the payload's RFC 8785 bytes.",
        },
        "schema_version": {"type": "integer", "minimum": 1},
        "deleted": {"type": "boolean"},
    },
}

_PAGE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["items", "next_after", "has_more", "feed_id"],
    "properties": {
        "items": {
            "type": "array",
            "description": "Rev ascending, at most `limit`.",
            "items": _ref("schemas", "Item"),
        },
        "next_after": {
            "type": "integer",
            "format": "int64",
            "minimum": 0,
            "description": "The last item's rev, or `after` when `items` is empty: the next "
            "request's `after`.",
        },
        "has_more": {
            "type": "boolean",
            "description": "A further request now could return more items.",
        },
        "feed_id": {
            **_UUID,
            "description": "The published state the revs belong to (`pub.feed_id()`).",
        },
    },
}


def _error(*required: str, **properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error", *required],
        "properties": {"error": {"type": "string"}, **properties},
    }


_SCHEMAS: dict[str, Any] = {
    "Item": _ITEM,
    "Page": _PAGE,
    "Error": _error(),
    "BadParameter": _error(
        "parameter",
        parameter={
            "type": "string",
            "description": "The parameter refused (an unknown one by its name, `query` for "
            "a query string over 4 KiB).",
        },
    ),
    "FeedIdMismatch": _error(
        "feed_id",
        feed_id={**_UUID, "description": "The current feed id: start again from `after=0`."},
    ),
    "Health": {
        "type": "object",
        "required": ["status", "revision", "feed_id", "last_rev", "listener", "replica"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "revision": {"type": "string", "description": "pubctl's schema revision."},
            "feed_id": {**_UUID, "nullable": True},
            "last_rev": {"type": "integer", "format": "int64", "nullable": True},
            "listener": {"type": "string", "enum": ["connected", "reconnecting"]},
            "replica": {"type": "boolean", "description": "The database is a hot standby."},
            "replay_lag_s": {
                "type": "number",
                "nullable": True,
                "description": "On a standby: seconds its replay is behind the WAL received.",
            },
            "replay_lag_bytes": {"type": "integer", "format": "int64", "nullable": True},
            "streaming": {
                "type": "boolean",
                "description": "On a standby: whether WAL still streams in.",
            },
        },
    },
    "HealthProblem": {
        "type": "object",
        "required": ["status", "reason"],
        "properties": {
            "status": {
                "type": "string",
                "description": "What is wrong: `unavailable`, `missing_privilege`, "
                "`not_migrated`, `wrong_revision`.",
            },
            "reason": {"type": "string"},
        },
    },
}

_HEADERS: dict[str, Any] = {
    "ETag": {
        "description": "A strong tag of the body: equal tags mean byte-equal bodies.",
        "required": True,
        "schema": {"type": "string", "pattern": '^(W/)?"[^"]*"$'},
    },
    "Cache-Control": {
        "description": "`public, max-age=S` (a request without `wait`, on a server run "
        "with `--cache-max-age S`), `no-store` (a long-poll) or `no-cache`; a 304 carries "
        "the one its 200 would.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "WWW-Authenticate": {
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer"},
    },
}

_FEED_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "after",
        "in": "query",
        "description": "The cursor: items with a larger rev.",
        "schema": {
            "type": "integer",
            "format": "int64",
            "minimum": 0,
            "maximum": MAX_AFTER,
            "default": 0,
        },
    },
    {
        "name": "limit",
        "in": "query",
        "description": "Items per page.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    {
        "name": "kind",
        "in": "query",
        "description": "The kinds wanted, one per `kind` parameter (absent: all).",
        "style": "form",
        "explode": True,
        "schema": {
            "type": "array",
            "maxItems": MAX_KINDS,
            "items": {"type": "string", "enum": list(KINDS)},
        },
    },
    {
        "name": "wait",
        "in": "query",
        "description": "Seconds to hold the request while nothing is newer than `after`: any "
        "JSON number (`0.5`, `1.802744152145689`, `1e1`; `+` written `%2B`).",
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
    },
    {
        "name": "feed_id",
        "in": "query",
        "description": "The feed id the cursor belongs to: 409 when it is not the current one.",
        "schema": _UUID_IN,
    },
    {
        "name": "If-None-Match",
        "in": "header",
        "description": "An ETag of an earlier answer (or `*`): 304 when the answer has it.",
        "schema": {"type": "string"},
    },
]

_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_UNAUTHORIZED = "Tokens are configured and the request has none of them."
_NONE: list[dict[str, list[str]]] = []


def _response(
    description: str, content: str | None = None, headers: tuple[str, ...] = ()
) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if headers:
        answer["headers"] = {name: _ref("headers", name) for name in headers}
    if content is not None:
        answer["content"] = _json_content(content)
    return answer


def _feed(method: str) -> dict[str, Any]:
    """GET and HEAD of the feed: the same answers, HEAD's without their bodies."""
    get = method == "get"
    return {
        "operationId": f"{method}Feed",
        "summary": "The feed's items after a rev" + ("" if get else " (headers only)"),
        "description": "A page of the revision-ordered feed; with `wait`, held until "
        "something newer than `after` is published or `wait` seconds pass (then 200 with "
        "empty `items`). Unknown parameters, and any but `kind` given twice, are refused.",
        "security": _BEARER,
        "parameters": _FEED_PARAMETERS,
        "responses": {
            "200": _response(
                "A page." if get else "A page's headers.",
                "Page" if get else None,
                ("ETag", "Cache-Control"),
            ),
            "304": _response(
                "`If-None-Match` names this answer's ETag.", None, ("ETag", "Cache-Control")
            ),
            "400": _response("A refused parameter.", "BadParameter" if get else None),
            "401": _ref("responses", "Unauthorized")
            if get
            else _response(_UNAUTHORIZED, None, ("WWW-Authenticate",)),
            "409": _response(
                "`feed_id` names a published state that no longer exists.",
                "FeedIdMismatch" if get else None,
            ),
            "503": _response(
                "The database is unreachable, every pool connection is busy, or the "
                "database is at another pubctl revision (`status`: `wrong_revision`).",
                "Error" if get else None,
                ("Retry-After",),
            ),
        },
    }


def document() -> dict[str, Any]:
    """The description, as a new dict."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "pubctl serve",
            "version": __version__,
            "description": "The published feed over HTTP (docs/viewer.md). Requests to "
            "/published/feed and /metrics need `Authorization: Bearer TOKEN` when the "
            "server has tokens (a server without any serves only loopback, unless run "
            "with --insecure-no-auth). Any other method than GET and HEAD: 405 with "
            "`Allow: GET, HEAD`. An unknown path, a trailing slash included: 404. The "
            "server never redirects. Every error body is JSON with an `error` string.",
        },
        "paths": {
            "/published/feed": {"get": _feed("get"), "head": _feed("head")},
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Whether the server can read the feed",
                    "description": "Answers within a second, whatever else the server "
                    "does; never needs a token.",
                    "security": _NONE,
                    "responses": {
                        "200": _response("The feed can be read.", "Health"),
                        "503": _response(
                            "The feed cannot be read now; `reason` says why.",
                            "HealthProblem",
                            ("Retry-After",),
                        ),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text format 0.0.4)",
                    "security": _BEARER,
                    "responses": {
                        "200": {
                            "description": "The metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _ref("responses", "Unauthorized"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This description",
                    "security": _NONE,
                    "responses": {
                        "200": {
                            "description": "The OpenAPI description of this API.",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the server's tokens (--token-file, PUBCTL_FEED_TOKENS).",
                }
            },
            "schemas": _SCHEMAS,
            "headers": _HEADERS,
            "responses": {"Unauthorized": _response(_UNAUTHORIZED, "Error", ("WWW-Authenticate",))},
        },
    }


def encoded() -> bytes:
    """The description as served and as kept in ``docs/openapi.json``."""
    return (json.dumps(document(), indent=2, ensure_ascii=False) + "\n").encode()


if __name__ == "__main__":
    sys.stdout.buffer.write(encoded())
