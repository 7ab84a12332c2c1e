"""Use cases with side effects. Never import ``request``, ``g``, ``flask_login`` or ``tasks``."""
