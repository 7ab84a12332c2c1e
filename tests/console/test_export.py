"""CSV and JSON exports stream exactly the filtered set."""

from __future__ import annotations

import csv
import io
import json

from tests.support.console import make_op

# --- export -------------------------------------------------------------------------------


def test_exports_stream_the_filtered_set(client):
    email = make_op(kind="email", error="=cmd|' /C calc'!A0")
    make_op(kind="webhook")
    response = client.get("/admin/failed-operations/export.csv?kind=email")
    assert response.is_streamed and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(row["id"]) for row in rows] == [email.id]
    assert rows[0]["error_message"].startswith("'=")  # no spreadsheet formula injection
    assert json.loads(rows[0]["payload"]) == email.payload
    response = client.get("/admin/failed-operations/export.json?status=all")
    assert response.is_streamed
    data = json.loads(response.get_data(as_text=True))
    assert len(data) == 2 and {"fingerprint", "payload", "error_message"} <= set(data[0])
    assert client.get("/admin/failed-operations/export.xml").status_code == 404
