"""A handler's result as stored on its operation: a small JSON object, bounded, never an error.

Handlers may return a short summary of what they did (``{"already_completed": true}``,
``{"provider": "smtp", "message_id": "..."}``). It is kept for the console's timeline and the
admin JSON. Whatever a handler returns, storing it must never fail the operation: values
JSON cannot hold become text, text the database cannot hold (NUL, lone surrogates) is
replaced, and anything over ``MAX_RESULT_BYTES`` becomes a marker saying how large it was.
"""

from __future__ import annotations

import json
import re

MAX_RESULT_BYTES = 2048
# How much of an oversized result is kept, as text, beside the marker.
PREVIEW_CHARACTERS = 200
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# JSON always writes NUL escaped; an escape is a backslash not itself escaped (an even run before it).
_ESCAPED_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def bounded_result(value) -> dict | None:
    """``value`` as the JSON object to store (None for no result), at most ``MAX_RESULT_BYTES`` encoded."""
    if value is None:
        return None
    if not isinstance(value, dict):
        value = {"value": value}
    try:
        text = json.dumps(value, default=str, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # keys JSON cannot hold, cycles, absurd nesting
        return {"unserialisable": _clean(repr(value)[:PREVIEW_CHARACTERS])}
    # NUL and lone surrogates: PostgreSQL's jsonb refuses the first, no UTF-8 holds the second.
    text = _clean(text)
    size = len(text.encode("utf-8"))
    if size > MAX_RESULT_BYTES:
        return {"truncated": True, "bytes": size, "preview": text[:PREVIEW_CHARACTERS]}
    return json.loads(text)


def _clean(text: str) -> str:
    return _ESCAPED_NUL.sub("\\1\ufffd", _LONE_SURROGATE.sub("\ufffd", text))
