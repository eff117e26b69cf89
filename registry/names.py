"""Name rules shared by every resource, checked before anything touches disk or the database."""
from __future__ import annotations

import json
import re

from registry.errors import InvalidInput

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # starts with a letter: never mistaken for a version
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_TAGS = 32
MAX_META_BYTES = 64 * 1024


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise InvalidInput(f"{what} {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return value


def check_alias(value: str) -> str:
    if not _ALIAS.match(value) or value == "latest":
        raise InvalidInput(f"alias {value!r} is not valid: use 1-64 letters, digits, '_' or '-', starting with a "
                           "letter ('latest' is reserved)")
    return value


def check_project(value: str) -> str:
    if not _PROJECT.match(value):
        raise InvalidInput(f"project {value!r} is not valid: use 1-64 lowercase letters, digits, '_' or '-'")
    return value


def check_tags_and_meta(tags: list[str], meta: dict) -> None:
    if not isinstance(tags, list) or len(tags) > MAX_TAGS or not all(isinstance(t, str) and 0 < len(t) <= 64
                                                                     for t in tags):
        raise InvalidInput(f"tags must be at most {MAX_TAGS} strings of 1-64 characters")
    try:
        size = len(json.dumps(meta, allow_nan=False)) if isinstance(meta, dict) else None
    except ValueError:  # NaN / Infinity: not JSON, and PostgreSQL's json type refuses them
        size = None
    if size is None or size > MAX_META_BYTES:
        raise InvalidInput(f"metadata must be a JSON object of at most {MAX_META_BYTES} bytes (no NaN or Infinity)")
