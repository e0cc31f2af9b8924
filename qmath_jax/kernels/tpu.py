"""Placeholder until the Mosaic kernel lands."""
