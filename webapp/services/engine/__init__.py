"""webapp.services.engine.runner."""
