"""Maintenance jobs: auto-requeue of transient dead letters, and retention cleanup."""
