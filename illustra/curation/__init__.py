"""Curation jobs over the manifest and embeddings: EDA, duplicates, photos, imbalance (issues #4, #5)."""
