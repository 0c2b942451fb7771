"""Checkpoints: the manifest format, the local store and its lock."""
