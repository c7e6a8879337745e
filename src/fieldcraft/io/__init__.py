"""Checkpoints and output files (PNG, plots, video)."""
