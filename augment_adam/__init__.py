"""The seed's import path, kept so the seed's code runs unchanged."""
