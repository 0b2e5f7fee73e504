"""``python -m trajscope.cli`` runs the CLI."""

from trajscope.cli import main

main()
