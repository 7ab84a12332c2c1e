"""SQLAlchemy models. Import models from here: ``from webapp.models import Operation``."""

from webapp.models.access import ApiToken, IdempotencyRecord
from webapp.models.console import (
    AdminSession,
    AdminUser,
    AuditEntry,
    BulkJob,
    BulkJobItem,
    FailedLogin,
    FailedLoginAddress,
)
from webapp.models.email import EmailLog, EmailProviderCircuit, EmailRateLimit
from webapp.models.jobs import ConsumerBeat, JobRun, PeriodicJob
from webapp.models.maintenance import AutoRequeue, MaintenanceCursor
from webapp.models.monitoring import Alert, AlertState, MetricRollup, OperationHourRollup
from webapp.models.operations import Operation, OperationAttempt, OperationPause
from webapp.models.payments import Customer, Product, Purchase, StripeEvent, StripeEventReplay, WebhookRejection

__all__ = [
    "AdminSession",
    "AdminUser",
    "Alert",
    "AlertState",
    "ApiToken",
    "AuditEntry",
    "AutoRequeue",
    "BulkJob",
    "BulkJobItem",
    "ConsumerBeat",
    "Customer",
    "EmailLog",
    "EmailProviderCircuit",
    "EmailRateLimit",
    "FailedLogin",
    "FailedLoginAddress",
    "IdempotencyRecord",
    "JobRun",
    "MaintenanceCursor",
    "MetricRollup",
    "OperationHourRollup",
    "Operation",
    "OperationAttempt",
    "OperationPause",
    "PeriodicJob",
    "Product",
    "Purchase",
    "StripeEvent",
    "StripeEventReplay",
    "WebhookRejection",
]
