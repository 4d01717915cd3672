"""The results store: one SQLite file, versioned schema, every result written the moment it is measured."""

from .sqlite import SCHEMA_VERSION, ResultStore, new_run_id

__all__ = ["SCHEMA_VERSION", "ResultStore", "new_run_id"]
