"""What a failed attempt records about its error, within the sizes the columns and pages expect."""

from __future__ import annotations

from tests.engine.scripted import T0, new_op
from tests.support.reads import attempts_of, load
from webapp.models import Operation
from webapp.services.engine import runner


def raising(exc):
    def step(ctx):
        raise exc

    return step


def test_a_long_error_keeps_the_head_of_its_message_and_the_tail_of_its_stack(sqlite_app):
    message = "".join(f"{n:05d}" for n in range(10_000))  # 50,000 characters, each position distinct
    operation_id = new_op("long-error", raising(ValueError(message)))

    assert runner.execute(operation_id, now=T0, clock=lambda: T0).outcome == "retrying"

    operation = load(operation_id)
    assert operation.error_message == message[:4000]
    # The traceback ends with the error line, so its last 20,000 characters are the message's end.
    assert operation.error_stack == message[-19_999:] + "\n"
    [attempt] = attempts_of(operation_id)
    assert (attempt.error_message, attempt.error_stack) == (operation.error_message, operation.error_stack)


def test_an_error_class_with_a_long_qualified_name_fits_its_column(sqlite_app):
    long_name = type("E" * 300, (Exception,), {"__module__": "handlers"})
    operation_id = new_op("long-class", raising(long_name("boom")))

    runner.execute(operation_id, now=T0, clock=lambda: T0)

    width = Operation.__table__.c.error_class.type.length
    assert load(operation_id).error_class == f"handlers.{'E' * 300}"[:width]


def test_an_error_without_a_message_is_named_by_its_class(sqlite_app):
    operation_id = new_op("silent-error", raising(KeyError()))

    runner.execute(operation_id, now=T0, clock=lambda: T0)

    operation = load(operation_id)
    assert (operation.error_class, operation.error_message) == ("KeyError", "KeyError")
