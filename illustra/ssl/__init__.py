"""Self-supervised encoder: SimCLR pretraining from random initialisation, embeddings (issue #3)."""
