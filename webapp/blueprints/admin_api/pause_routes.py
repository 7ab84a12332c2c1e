"""``/api/admin/pauses``: hold and resume the processing of one operation name (issue 5)."""

from __future__ import annotations

from flask import jsonify

from webapp.blueprints.admin_api import ApiError, _actor, _iso, _json_body, _note, bp
from webapp.services.engine import pauses


def _pause_json(item: dict) -> dict:
    return {**item, "paused_at": _iso(item["paused_at"])}


def _find(name: str) -> dict:
    item = next((item for item in pauses.list_pauses() if item["name"] == name), None)
    if item is None:
        raise ApiError(404, "not_found", f"no operation is called {name!r}")
    return item


@bp.get("/pauses")
def list_pauses():
    """Every pausable operation name, whether it is paused, by whom, and how many operations wait."""
    return jsonify(pauses=[_pause_json(item) for item in pauses.list_pauses()])


@bp.post("/pauses/<name>/pause")
def pause(name: str):
    """Hold ``name``: new operations are stored and wait. Body ``{"note": "..."}`` (optional)."""
    note = _note(_json_body())
    _find(name)
    try:
        item = pauses.pause(name, _actor(), note)
    except pauses.PauseError as exc:
        raise ApiError(400, "invalid_pause", str(exc)) from None
    return jsonify(pause=_pause_json(item))


@bp.post("/pauses/<name>/resume")
def resume(name: str):
    """Resume ``name``: its waiting operations are rung oldest first."""
    _find(name)
    try:
        rung = pauses.resume(name, _actor())
    except pauses.PauseError as exc:
        raise ApiError(400, "invalid_pause", str(exc)) from None
    return jsonify(pause=_pause_json(_find(name)), rung=rung)
