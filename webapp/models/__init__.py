"""SQLAlchemy models. Import models from here: ``from webapp.models import Operation``."""

from .jobs import JobRun, PeriodicJob
from .operations import Operation, OperationAttempt

__all__ = ["JobRun", "Operation", "OperationAttempt", "PeriodicJob"]
