"""ptrag.genes."""
