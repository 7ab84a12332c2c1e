"""The health blueprint object, its hooks and error handlers (route modules import ``bp`` from here)."""

from flask import Blueprint

bp = Blueprint("health", __name__)
