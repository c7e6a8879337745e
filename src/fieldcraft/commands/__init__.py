"""Command-line sub-commands, one module per task (see :mod:`fieldcraft.cli`)."""
