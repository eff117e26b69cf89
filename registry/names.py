"""Name rules shared by every resource, checked before anything touches disk or the database."""
from __future__ import annotations

import re

from registry.errors import InvalidInput

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # starts with a letter: never mistaken for a version
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


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
