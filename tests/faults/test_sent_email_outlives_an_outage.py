"""The database goes away in the instant between the SMTP relay accepting an email and the
email log recording it: the "sent" record must wait for the database rather than be lost, or
the next attempt would send the email a second time."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.exc import SQLAlchemyError

from tests.conftest import inside, make_app
from tests.faults.outages import Outage
from tests.support.email import email_log, load, queue
from tests.support.polling import wait_for
from webapp.config import load as load_settings
from webapp.domain.time import utcnow
from webapp.services.engine import reconciler, runner

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

OUTAGE_SECONDS = 1.5


def test_an_email_accepted_just_before_the_database_went_away_is_not_sent_again(postgres_backend, smtp_server):
    app = make_app(
        postgres_backend,
        SMTP_URL=smtp_server.url,
        EMAIL_PROVIDERS=["smtp"],
        EMAIL_RATE_PER_RECIPIENT_PER_MINUTE=0,
        EMAIL_RATE_GLOBAL_PER_MINUTE=0,
    )
    outage = Outage(postgres_backend.database_url)

    def database_goes_away(received):
        if outage.started is None:  # the first acceptance only
            outage.begin()
            threading.Timer(OUTAGE_SECONDS, outage.end).start()

    with inside(app):
        operation_id = queue("welcome", "ada@example.com")
        smtp_server.on_accept = database_goes_away
        try:
            runner.execute(operation_id)
        except SQLAlchemyError:
            pass  # the attempt's outcome could not be written either: a worker would log it
        wait_for(lambda: outage.ended is not None, message="the database to come back")

        # Later, workers and the reconciler carry on as usual: a lease that ran out is recovered
        # and the operation retried, if it was not finished.
        later = utcnow() + timedelta(hours=1)
        reconciler.reconcile(later, load_settings({}))
        runner.execute(operation_id, now=later + timedelta(hours=1), clock=lambda: later + timedelta(hours=1))

        assert len(smtp_server.received()) == 1
        assert load(operation_id).state == "succeeded"
        assert [row.status for row in email_log(operation_id)] == ["sent"]
