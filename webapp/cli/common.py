"""What the command modules share."""

from __future__ import annotations

import getpass
import sys
from typing import NoReturn

import click


def cli_actor() -> str:
    """Who the audit log names for a command: ``cli:<login name>`` of the shell that ran it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in a bare container: still say it came from the CLI
        return "cli"


def fail(message: str) -> NoReturn:
    """Print ``message`` in red on stderr and exit with status 1."""
    click.secho(message, fg="red", err=True)
    sys.exit(1)
