"""A handler's result is stored as a small JSON object whatever the handler returns."""

from __future__ import annotations

import json
from datetime import datetime

from webapp.domain.results import MAX_RESULT_BYTES, bounded_result


def test_results_are_json_objects_the_database_can_hold_and_never_over_the_limit():
    assert bounded_result(None) is None
    assert bounded_result({"credits_granted": 5000}) == {"credits_granted": 5000}
    assert bounded_result("completed") == {"value": "completed"}  # not a dict: wrapped
    assert bounded_result({"at": datetime(2030, 1, 1)}) == {"at": "2030-01-01 00:00:00"}  # JSON-safe
    assert bounded_result({"id": "\ud800x", "nul": "a\x00b"}) == {"id": "\ufffdx", "nul": "a\ufffdb"}
    assert bounded_result({"text": "\\u0000 stays text"}) == {"text": "\\u0000 stays text"}
    assert bounded_result({(1, 2): "tuple key"}) == {"unserialisable": "{(1, 2): 'tuple key'}"}
    huge = bounded_result({"body": "é" * 5000})
    assert huge["truncated"] is True and huge["bytes"] > MAX_RESULT_BYTES
    assert len(json.dumps(huge).encode()) <= MAX_RESULT_BYTES
