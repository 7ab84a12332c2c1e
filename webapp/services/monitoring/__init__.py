"""webapp.services.monitoring."""
