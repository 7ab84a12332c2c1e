"""SQLAlchemy models. Import models from here: ``from webapp.models import Operation``."""

from .admin import AdminUser, BulkJob, BulkJobItem, FailedLogin
from .alerts import Alert, AlertState, AutoRequeue, MaintenanceCursor, MetricRollup, OperationPause
from .commerce import (ApiToken, Customer, IdempotencyRecord, Product, Purchase, StripeEvent,
                       WebhookRejection)
from .email import EmailLog, EmailProviderCircuit, EmailRateSlot
from .jobs import JobRun, PeriodicJob
from .operations import Operation, OperationAttempt

__all__ = [
    "AdminUser", "Alert", "AlertState", "ApiToken", "AutoRequeue", "BulkJob", "BulkJobItem",
    "Customer", "EmailLog", "EmailProviderCircuit", "EmailRateSlot", "FailedLogin",
    "IdempotencyRecord", "JobRun", "MaintenanceCursor", "MetricRollup", "Operation",
    "OperationAttempt", "OperationPause", "PeriodicJob", "Product", "Purchase", "StripeEvent",
    "WebhookRejection",
]
