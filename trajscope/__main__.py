"""``python -m trajscope`` runs the CLI."""

from trajscope.cli import main

main()
