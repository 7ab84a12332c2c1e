"""SQLAlchemy models. Import models from here: ``from webapp.models import Operation``."""

from webapp.models.admin import AdminUser, BulkJob, BulkJobItem, FailedLogin
from webapp.models.alerts import Alert, AlertState, AutoRequeue, MaintenanceCursor, MetricRollup, OperationPause
from webapp.models.commerce import (
    ApiToken,
    Customer,
    IdempotencyRecord,
    Product,
    Purchase,
    StripeEvent,
    WebhookRejection,
)
from webapp.models.email import EmailLog, EmailProviderCircuit, EmailRateSlot
from webapp.models.jobs import JobRun, PeriodicJob
from webapp.models.operations import Operation, OperationAttempt

__all__ = [
    "AdminUser",
    "Alert",
    "AlertState",
    "ApiToken",
    "AutoRequeue",
    "BulkJob",
    "BulkJobItem",
    "Customer",
    "EmailLog",
    "EmailProviderCircuit",
    "EmailRateSlot",
    "FailedLogin",
    "IdempotencyRecord",
    "JobRun",
    "MaintenanceCursor",
    "MetricRollup",
    "Operation",
    "OperationAttempt",
    "OperationPause",
    "PeriodicJob",
    "Product",
    "Purchase",
    "StripeEvent",
    "WebhookRejection",
]
