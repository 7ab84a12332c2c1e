"""The handler registry: an operation's ``name`` selects a function and its retry policy."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webapp.domain.retry import RetryPolicy

KINDS = ("email", "webhook", "job", "alert")

# Defaults follow the seeds: emails 3 retries, Stripe webhook processing 5, alerts 2.
DEFAULT_POLICIES: dict[str, RetryPolicy] = {
    "email": RetryPolicy.retries(3),
    "webhook": RetryPolicy.retries(5),
    "job": RetryPolicy.retries(3),
    "alert": RetryPolicy.retries(2),
}


@dataclass
class HandlerContext:
    """What a handler is given: the operation it runs for and this attempt's facts.

    ``operation`` is a detached snapshot and no transaction is open when the handler starts.
    A handler does its outside calls first and its database writes after them (through
    ``db.session``); the engine commits those writes together with the ``succeeded`` state.
    """

    operation: Any
    attempt: int
    now: datetime

    @property
    def payload(self) -> dict:
        """The operation's JSON payload."""
        return self.operation.payload or {}

    @property
    def idempotency_key(self) -> str:
        """A key stable across attempts, for providers that de-duplicate."""
        return self.operation.idempotency_key


@dataclass(frozen=True)
class Handler:
    """A registered handler: its name, kind, function, retry policy and lease."""

    name: str
    kind: str
    fn: Callable[[HandlerContext], Any]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    lease_seconds: float | None = None


class UnknownHandler(LookupError):
    """No handler is registered under an operation's name."""


class Registry:
    """Handlers by name."""

    def __init__(self):
        self._handlers: dict[str, Handler] = {}
        self._own_leases: tuple[tuple[str, float], ...] | None = None  # rebuilt after a registration

    def register(
        self, name: str, kind: str, fn, policy: RetryPolicy | None = None, lease_seconds: float | None = None
    ) -> Handler:
        """Register ``fn`` under ``name``; registering the same function again is a no-op."""
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}; expected one of {KINDS}")
        existing = self._handlers.get(name)
        if existing and existing.fn is not fn and _qualname(existing.fn) != _qualname(fn):
            raise ValueError(f"a different handler is already registered as {name!r}")
        handler = Handler(name, kind, fn, policy or DEFAULT_POLICIES[kind], lease_seconds)
        self._handlers[name] = handler
        self._own_leases = None
        return handler

    def get(self, name: str) -> Handler:
        """The handler registered under ``name``."""
        try:
            return self._handlers[name]
        except KeyError:
            raise UnknownHandler(f"no handler registered for {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._handlers)

    def own_leases(self) -> tuple[tuple[str, float], ...]:
        """``(name, lease_seconds)`` of the handlers that set their own lease, sorted by name.

        Read by every claim: built once per set of registrations, not per claim.
        """
        if self._own_leases is None:
            self._own_leases = tuple(
                (name, handler.lease_seconds)
                for name, handler in sorted(self._handlers.items())
                if handler.lease_seconds
            )
        return self._own_leases


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


registry = Registry()


def handler(name: str, kind: str, policy: RetryPolicy | None = None, lease_seconds: float | None = None):
    """Decorator registering a function as the handler for operations called ``name``."""

    def decorator(fn):
        registry.register(name, kind, fn, policy, lease_seconds)
        return fn

    return decorator


def import_handler_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import modules whose import registers handlers (``BACKSTOP_HANDLER_MODULES``)."""
    for module in modules:
        if module.strip():
            importlib.import_module(module.strip())
