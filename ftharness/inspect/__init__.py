"""Inspection and operations on a backup: `ls`, `verify`, `status`, `timeline`, `gc`.

Every command reads through `inspect.backup.BackupReader` (a `CheckpointStore`); `inspect.commands`
adds them to the `ftharness` command line.
"""
