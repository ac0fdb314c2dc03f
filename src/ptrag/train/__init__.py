"""ptrag.train."""
