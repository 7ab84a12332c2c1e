"""Seed 000's "Test Email Retry" with a real worker and a real SMTP server, on both backends:
the email fails until dead-lettered, the server recovers, an admin retry sends it exactly once."""

from __future__ import annotations

from tests.support.email import email_log, load, make_purchase, purchase_state, queue
from tests.support.polling import wait_for
from tests.support.smtp import TEMPORARY
from webapp.services.engine import operations


def test_email_dead_letters_then_admin_retry_sends_it_once(app, backend, start_worker, smtp_server):
    smtp_server.set_mode(TEMPORARY)
    start_worker(
        backend,
        SMTP_URL=smtp_server.url,
        EMAIL_PROVIDERS="smtp",
        EMAIL_RETRY_LADDER="200ms, 200ms, 200ms",
        EMAIL_FROM="Shop <noreply@shop.example>",
    )
    purchase_id = make_purchase()
    operation_id = queue(
        "lead_purchase_confirmation",
        purchase_id=purchase_id,
        context={"customer_name": "Ada", "product_name": "Lead: Acme", "amount_cents": 4900},
    )

    dead = wait_for(lambda: (op := load(operation_id)).state == "dead" and op, message="the email to be dead-lettered")

    assert dead.attempts == 4 and dead.error_kind == "transient"
    assert "451" in dead.error_message
    assert smtp_server.received() == [] and len(smtp_server.offered) == 4
    assert purchase_state(purchase_id)[0] == "undeliverable"

    smtp_server.set_mode("accept")
    operations.retry_dead(operation_id, by="admin@example.com")
    done = wait_for(
        lambda: (op := load(operation_id)).state == "succeeded" and op,
        message="the retried email to be sent",
    )

    assert done.attempts == 5
    [received] = wait_for(smtp_server.received, message="the message at the SMTP server")
    assert received.rcpt_tos == ("buyer@example.com",)
    assert "Lead: Acme" in received.message["Subject"]
    assert len(set(smtp_server.offered)) == 1  # every attempt offered the same Message-ID
    status, fulfilled_at = purchase_state(purchase_id)
    assert status == "sent" and fulfilled_at is not None
    assert [row.status for row in email_log(operation_id)] == ["failed"] * 4 + ["sent"]
    # The success was recorded once and nothing re-sends it.
    assert len(smtp_server.received()) == 1
