"""webapp.services.console."""
