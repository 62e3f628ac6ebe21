"""Value checks shared by the configuration and the destination kinds: each returns what is expected, or None.

A dataclass field declares its check with :func:`checked`; ``node.config`` runs it when the file is loaded and
names the key, the value and the expectation in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], str | None]
"""A value check: returns what is expected when the value is wrong, else None."""


def checked(default: Any = dataclasses.MISSING, check: Check | None = None) -> Any:
    """A dataclass field with ``check`` in its metadata; without ``default`` the key is required."""
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


def number_range(low: float, high: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            return f"a number from {low:g} to {high:g}" if high is not None else f"a number of at least {low:g}"
        return None

    return check


def choice(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def each(check: Check) -> Check:
    """A check of every item of a list value; names the first item that fails.

    >>> each(not_empty)(("a", " "))
    "a list whose every item is a non-empty value (item 2, ' ', is not)"
    """

    def check_items(values: Any) -> str | None:
        for number, value in enumerate(values, 1):
            problem = check(value)
            if problem is not None:
                return f"a list whose every item is {problem} (item {number}, {value!r}, is not)"
        return None

    return check_items


def not_empty(value: Any) -> str | None:
    return None if str(value).strip() else "a non-empty value"


def host_problem(value: str) -> str | None:
    """What is wrong with a host name or address (only emptiness can be told before connecting)."""
    return None if value.strip() else "a host name or address"


def port_problem(value: int) -> str | None:
    """
    >>> port_problem(104) is None, port_problem(0)
    (True, 'a port from 1 to 65535')
    """
    return None if 1 <= value <= 65535 else "a port from 1 to 65535"


def ae_title_problem(value: str) -> str | None:
    """What is wrong with a DICOM AE title, or None when it is valid.

    >>> ae_title_problem("SEGNODE") is None
    True
    >>> ae_title_problem("A" * 17)
    'an AE title of 1-16 characters without backslash or control characters'
    """
    text = value.strip(" ")
    if not 1 <= len(value) <= 16 or not text or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "an AE title of 1-16 characters without backslash or control characters"
    if not value.isascii():
        return "an AE title of ASCII characters"
    return None
