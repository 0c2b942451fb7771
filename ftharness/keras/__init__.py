"""Keras integration: `BackupAndRestore`, a drop-in for Keras's callback."""

from ftharness.keras.callback import BackupAndRestore

__all__ = ["BackupAndRestore"]
