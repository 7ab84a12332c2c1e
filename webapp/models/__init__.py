"""SQLAlchemy models. Import models from here: ``from webapp.models import Operation``."""

from webapp.models.access import ApiToken, IdempotencyRecord
from webapp.models.console import AdminUser, BulkJob, BulkJobItem, FailedLogin
from webapp.models.email import EmailLog, EmailProviderCircuit, EmailRateSlot
from webapp.models.jobs import JobRun, PeriodicJob
from webapp.models.maintenance import AutoRequeue, MaintenanceCursor
from webapp.models.monitoring import Alert, AlertState, MetricRollup
from webapp.models.operations import Operation, OperationAttempt, OperationPause
from webapp.models.payments import Customer, Product, Purchase, StripeEvent, WebhookRejection

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
