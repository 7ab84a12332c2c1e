"""gunicorn settings for the benchmarks (``-c python:bench.gunicorn_ready``): each worker says when its app is loaded.

gunicorn logs "Booting worker" before the worker imports the app; on a loaded machine the
import takes seconds, and a load started then would meet one worker where the run has two.
"""


def post_worker_init(worker) -> None:
    """Log the line :class:`bench.common.Gunicorn` waits for, once per worker, after the app is loaded."""
    worker.log.info("Worker ready with pid: %s", worker.pid)
