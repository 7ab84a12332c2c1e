"""webapp.services.maintenance.cleanup."""
