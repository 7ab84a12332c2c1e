"""The admin blueprint object, its hooks and error handlers (route modules import ``bp`` from here)."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Flask, current_app, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager
from flask_wtf.csrf import CSRFError, CSRFProtect

from webapp.blueprints.json_api import error_response
from webapp.services.console import sessions

bp = Blueprint("admin", __name__, url_prefix="/admin")
root = Blueprint("root", __name__)
login_manager = LoginManager()
csrf = CSRFProtect()

CSRF_EXEMPT_PREFIXES = ("/api/", "/webhooks/")
PARTIAL_PREFIX = "/admin/partials/"


# Routes authenticated by a signature, never by a browser session: no session is opened for them.
SESSIONLESS_PREFIXES = ("/webhooks/",)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, Secure over HTTPS even when the config does not force it."""

    def open_session(self, app: Flask, request):
        """The browser's session, or none at all (Flask's null session) on a signature-authenticated route."""
        if request.path.startswith(SESSIONLESS_PREFIXES):
            return None  # Flask falls back to a null session, which it never saves
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure when configured, or when this request arrived over HTTPS."""
        return bool(app.config["SESSION_COOKIE_SECURE"] or (request and request.is_secure))


@bp.record_once
def _install(state) -> None:
    app = state.app
    # TESTING must not switch CSRF off: the tests prove the protection works.
    app.config.setdefault("WTF_CSRF_ENABLED", True)
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "admin.login"
    app.session_interface = SessionInterface()
    app.register_error_handler(CSRFError, _csrf_refused)


@bp.before_app_request
def _csrf_guard():
    """Every state-changing request outside the token- and signature-authenticated APIs."""
    if request.path.startswith(CSRF_EXEMPT_PREFIXES):
        return None
    csrf.protect()
    return None


SESSION_KEY = "admin_session"


@login_manager.user_loader
def _load_user(user_id: str):
    """The admin of this browser's server-side session, if it is still live and theirs."""
    config = current_app.config
    user = sessions.resolve(
        session.get(SESSION_KEY),
        idle=timedelta(minutes=config["ADMIN_SESSION_IDLE_MINUTES"]),
        lifetime=timedelta(hours=config["ADMIN_SESSION_MAX_HOURS"]),
    )
    return user if user is not None and user.get_id() == user_id else None


@login_manager.unauthorized_handler
def _unauthorized():
    """Pages redirect to the log-in page; partials, htmx and actions get a 401."""
    if request.path.startswith(PARTIAL_PREFIX) or request.headers.get("HX-Request") or request.method != "GET":
        response = error_response(401, "unauthorized", "Log in to use the admin console.")
        response.headers["HX-Redirect"] = url_for("admin.login")
        return response
    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))


def _csrf_refused(error: CSRFError):
    message = (
        "Refused: this request has no valid CSRF token ("
        + error.description.rstrip(".")
        + "). Reload the page and try again."
    )
    if request.path.startswith(CSRF_EXEMPT_PREFIXES) or request.accept_mimetypes.best == "application/json":
        return error_response(400, "csrf_failed", message)
    template = "admin/_error.html" if request.headers.get("HX-Request") else "admin/error.html"
    return render_template(template, message=message, status=400), 400


@bp.after_app_request
def _vary_on_htmx(response):
    # The same URL answers a full page or a fragment depending on HX-Request: caches must know.
    if request.path.startswith("/admin"):
        response.vary.add("HX-Request")
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@root.get("/")
def index():
    """The dashboard: operations health."""
    return redirect(url_for("admin.health"))
