"""Datasets, converters to TRL formats, and the label store."""
