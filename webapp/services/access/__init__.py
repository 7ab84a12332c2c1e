"""webapp.services.access."""
