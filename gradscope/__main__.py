"""``python -m gradscope`` runs the CLI."""

from gradscope.cli import app

app(prog_name="gradscope")
