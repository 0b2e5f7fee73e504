"""Placeholder: commands of this group are added by their own issue."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app`` (none yet)."""
