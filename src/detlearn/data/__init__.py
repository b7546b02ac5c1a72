"""Data preparation helpers that sit between the store and the models: splits."""
