"""Outside text the database can store: no lone surrogates (not Unicode), no NUL (PostgreSQL refuses it).

JSON lets a string carry ``"\\ud800"`` (half of a surrogate pair) or ``"\\u0000"``; Python
decodes both, but neither can be written: a lone surrogate has no UTF-8 encoding
(``UnicodeEncodeError`` on any backend), and PostgreSQL ``text`` and ``jsonb`` cannot hold NUL.
Input is checked with these rules where it enters, so such text is a 4xx naming the field,
never a 500 or a 503 from the database.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
# What in JSON text can decode to a lone surrogate: the character itself, or a \\uD800-\\uDFFF escape.
_SURROGATE_IN_JSON = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")
LONE_SURROGATE = "holds a lone surrogate (not valid Unicode)"
NUL = "holds a NUL character"


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (a lone surrogate, a NUL character), or None when it can."""
    if _SURROGATE.search(text):
        return LONE_SURROGATE
    if "\x00" in text:
        return NUL
    return None


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds half of a surrogate pair (JSON decodes a valid pair into one character)."""
    return _SURROGATE.search(text) is not None


def json_may_hold_lone_surrogate(text: str) -> bool:
    """Whether JSON ``text`` could decode to a lone surrogate; False rules it out without decoding.

    True may be a false alarm (a valid pair, or an escaped backslash before ``ud800``): then
    :func:`find_lone_surrogate` on the decoded value decides.
    """
    return _SURROGATE_IN_JSON.search(text) is not None


def find_lone_surrogate(value) -> str | None:
    """The path (``filters.q``, ``items[2]``) of the first key or string holding a lone surrogate
    in a decoded JSON value, else None. Iterative, so absurd nesting cannot exhaust the stack."""
    stack = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return path or "(body)"
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                child_path = f"{path}.{_shown(key)}" if path else _shown(key)
                if has_lone_surrogate(key):
                    return child_path
                stack.append((child_path, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in reversed(list(enumerate(item))))
    return None


def _shown(key: str) -> str:
    """A key as it can be shown in an error message (a lone surrogate escaped as ``\\ud800``)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def storable(text: str) -> str:
    """``text`` with every lone surrogate and NUL replaced by U+FFFD, for free text from outside
    (a card decline reason) that is kept for people to read rather than refused."""
    return _SURROGATE.sub("\ufffd", text).replace("\x00", "\ufffd")
