"""``python -m polars_azurechat``: the command-line interface."""

from polars_azurechat.cli import app

app(prog_name="polars-azurechat")
