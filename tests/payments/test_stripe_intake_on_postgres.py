"""Stripe intake's PostgreSQL-only statements: counting a refused delivery is an upsert there too."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.support.postgres import postgres_app
from webapp.services.payments import intake

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

NOW = datetime(2030, 1, 1, 12, 0, 0)


@pytest.fixture
def pg_app(tmp_path, templates):
    with postgres_app(tmp_path, templates) as app:
        yield app


def test_rejections_are_counted_on_postgresql(pg_app):
    intake.count_rejection(intake.INVALID_SIGNATURE, now=NOW)
    intake.count_rejection(intake.INVALID_SIGNATURE, now=NOW + timedelta(seconds=1))

    assert intake.rejection_counts() == {intake.INVALID_SIGNATURE: 2}
