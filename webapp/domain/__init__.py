"""Pure rules of Backstop: operation states, retry policies and error classes.

Nothing in this package touches the database, Flask or the queue.
"""
