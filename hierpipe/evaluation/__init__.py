"""Embedding export and evaluation: a trained run's embeddings, its metrics."""
