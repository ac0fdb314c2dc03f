"""ptrag.eval."""
