"""webapp.devdata."""
