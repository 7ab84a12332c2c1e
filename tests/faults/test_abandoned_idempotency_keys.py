"""A request that dies in a database outage cannot release its Idempotency-Key; how long the
key stays "in progress" (409) before the next request with it may take it over is a setting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import inside, make_app
from webapp.domain.time import utcnow
from webapp.services.access import idempotency, tokens


@pytest.mark.parametrize("setting, taken_over", [(2.0, True), (120.0, False)])
def test_an_unanswered_key_is_taken_over_after_the_configured_time(sqlite_backend, setting, taken_over):
    app = make_app(sqlite_backend, IDEMPOTENCY_ABANDONED_AFTER_SECONDS=setting)
    with inside(app):
        token = tokens.create_token("shop", "storefront").token
        start = utcnow()
        first = idempotency.reserve(token.id, "order-1", "fp", now=start)
        # The first request died before it could answer or release the key; three seconds later:
        later = start + timedelta(seconds=3)
        if taken_over:
            assert idempotency.reserve(token.id, "order-1", "fp", now=later).record_id == first.record_id
        else:
            with pytest.raises(idempotency.IdempotencyError) as refused:
                idempotency.reserve(token.id, "order-1", "fp", now=later)
            assert (refused.value.status, refused.value.code) == (409, "idempotency_key_in_progress")


def test_the_default_is_two_minutes(sqlite_backend):
    app = make_app(sqlite_backend)
    assert app.config["IDEMPOTENCY_ABANDONED_AFTER_SECONDS"] == 120.0
