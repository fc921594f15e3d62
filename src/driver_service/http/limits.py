"""Limits of the HTTP API, documented in the OpenAPI document and docs/http.md."""

from __future__ import annotations

#: Largest request body accepted by default (413 past it; --http-max-body-bytes).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: Locations per upload request, whatever their size.
MAX_UPLOAD_LOCATIONS = 10_000
