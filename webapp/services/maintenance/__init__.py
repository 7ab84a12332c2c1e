"""Maintenance: auto-requeue of transient dead letters, retention cleanup, the fingerprint backfill."""
