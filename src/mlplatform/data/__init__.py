"""Data: built-in datasets, ingest, validation, column kinds, the prepared splits."""
