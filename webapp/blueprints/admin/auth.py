"""Log in and log out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from webapp.blueprints.admin.blueprint import SESSION_KEY, bp
from webapp.services.console import admins, audit, sessions


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths: never an open redirect to another host."""
    if not target:
        return url_for("admin.health")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("admin.health")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The log-in form; failures are throttled per email and client address, and per address."""
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("admin/login.html", next=request.args.get("next", ""), email="")
    email = request.form.get("email", "")
    result = admins.log_in(
        email,
        request.form.get("password", ""),
        request.remote_addr or "unknown",
        max_failures=current_app.config["LOGIN_MAX_FAILURES"],
        max_address_failures=current_app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"],
        lock_minutes=current_app.config["LOGIN_LOCK_MINUTES"],
    )
    if result.user is None:
        status = 429 if result.locked_until else 401
        return render_template(
            "admin/login.html", error=result.error, email=email, next=request.form.get("next", "")
        ), status
    # A fresh session on log-in: nothing from before (a planted session id, a token) survives.
    session.clear()
    login_user(result.user)
    session[SESSION_KEY] = sessions.start(result.user.id)
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
@login_required
def logout():
    """End the session: on the server too, so a saved copy of the cookie opens nothing."""
    audit.record(
        "logout",
        actor=current_user.email,
        target_type="admin",
        target_id=current_user.get_id(),
        address=request.remote_addr or "unknown",
    )
    sessions.revoke(session.get(SESSION_KEY))  # commits the audit row with the revocation
    logout_user()
    session.clear()
    flash("You are logged out.")
    return redirect(url_for("admin.login"))
