"""The helpers every JSON endpoint shares: error shape, bearer tokens, UTC timestamps with Z."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from flask import Flask, request

from webapp.blueprints.json_api import ApiError, bearer_token, error_body, error_response, iso


@pytest.fixture
def flask_app():
    return Flask(__name__)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc123", "abc123"),
        ("bearer abc123", "abc123"),
        ("BEARER   abc123  ", "abc123"),
        ("Bearer ", None),
        ("Bearer", None),
        ("Basic abc123", None),
        ("abc123", None),
        (None, None),
    ],
)
def test_bearer_token_is_read_from_the_authorization_header(flask_app, header, token):
    headers = {} if header is None else {"Authorization": header}
    with flask_app.test_request_context(headers=headers):
        assert bearer_token(request) == token


def test_timestamps_are_utc_and_end_with_z():
    naive = datetime(2024, 5, 1, 12, 30, 15, 250000)
    assert iso(naive) == "2024-05-01T12:30:15.250000Z"
    assert iso(datetime(2024, 5, 1, 12, 30, tzinfo=UTC)) == "2024-05-01T12:30:00Z"
    assert iso(datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:30:00Z"
    assert iso(None) is None


def test_errors_have_one_shape(flask_app):
    with flask_app.app_context():
        response = error_response(422, "validation_failed", "bad fields", fields={"email": "required"})
        assert response.status_code == 422 and response.mimetype == "application/json"
        assert json.loads(response.get_data()) == {
            "error": "validation_failed",
            "message": "bad fields",
            "fields": {"email": "required"},
        }
        raised = ApiError(404, "not_found", "no such thing").response()
        assert raised.status_code == 404
        assert json.loads(raised.get_data()) == error_body("not_found", "no such thing")
