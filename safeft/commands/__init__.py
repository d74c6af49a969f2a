"""Command groups of the `safeft` CLI, one module each (see safeft/cli.py)."""
