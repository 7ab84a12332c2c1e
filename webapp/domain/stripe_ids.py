"""Which ids in a Stripe event Backstop can trust: printable ASCII of bounded length.

Stripe's ids (``evt_...``, ``pi_...``, ``ch_...``) are short ASCII words. A signed event whose
ids are anything else (a lone surrogate, a NUL, kilobytes of text) cannot come from Stripe
and cannot be stored or looked up; refusing it at intake (400) is better than accepting it
and letting its handler fail six times on the way to the dead-letter queue.
"""

from __future__ import annotations

from webapp.domain.text import find_lone_surrogate, json_may_hold_lone_surrogate

MAX_ID_LENGTH = 255
# Fields whose string value is the id of another Stripe object (an "expandable" field; when
# expanded it is an object whose own ``id`` is checked like any other).
REFERENCES = frozenset(
    {
        "application",
        "balance_transaction",
        "charge",
        "customer",
        "destination",
        "invoice",
        "latest_charge",
        "on_behalf_of",
        "payment_intent",
        "payment_method",
        "review",
        "setup_intent",
        "source",
        "source_transfer",
        "subscription",
        "transfer",
    }
)
# Merchant-defined values (ours, e.g. the purchase id) that are not Stripe ids.
FREE_FORM = frozenset({"metadata"})


def is_stripe_id(value) -> bool:
    """A non-empty string of printable ASCII (no spaces) no longer than :data:`MAX_ID_LENGTH`."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def event_problem(event: dict, *, text: str | None = None) -> str | None:
    """Why a decoded event cannot be taken, naming the field, or None when it can.

    Refused: a lone surrogate in any key or string (no UTF-8 encoding exists for it), and an
    ``id`` or object reference (``payment_intent``, ``charge``, ...) at any depth that is a
    string but not :func:`is_stripe_id`. Missing or ``null`` ids are left to the handlers.
    ``text``, the JSON the event was decoded from, lets the surrogate walk be skipped when
    the text cannot hold one.
    """
    if text is None or json_may_hold_lone_surrogate(text):
        path = find_lone_surrogate(event)
        if path is not None:
            return f"{path} holds a lone surrogate (not valid Unicode)"
    # Most events are fine: look without building paths, and name the field only when one is wrong.
    return _id_problem(event) if _holds_bad_id(event) else None


def _holds_bad_id(event: dict) -> bool:
    """Whether an ``id`` or reference anywhere in ``event`` is a string but not a Stripe id."""
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(child for child in item if isinstance(child, (dict, list)))
            continue
        for key, child in item.items():
            if isinstance(child, str):
                if (key == "id" or key in REFERENCES) and not is_stripe_id(child):
                    return True
            elif isinstance(child, (dict, list)) and key not in FREE_FORM:
                stack.append(child)
    return False


def _id_problem(event: dict) -> str | None:
    """The first wrong ``id`` or reference in ``event``, named by its path."""
    stack = [("", event)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
            continue
        if not isinstance(item, dict):
            continue
        for key, child in item.items():
            child_path = f"{path}.{key}" if path else key
            if key in FREE_FORM:
                continue
            if (key == "id" or key in REFERENCES) and isinstance(child, str) and not is_stripe_id(child):
                return f"{child_path} is not a Stripe id (printable ASCII, at most {MAX_ID_LENGTH} characters)"
            stack.append((child_path, child))
    return None
