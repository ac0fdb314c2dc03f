"""ptrag.data."""
