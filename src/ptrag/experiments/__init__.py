"""ptrag.experiments."""
