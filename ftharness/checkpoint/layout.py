"""Every name the storage layer gives to files and directories, in one place.

A backup (a local checkpoint directory, or the prefix of a backup URL)::

    ckpt-000000012345/            a committed checkpoint (it has manifest.json)
        manifest.json             written last: the checkpoint exists iff it does
        <data files>
    .tmp-ckpt-...-<pid>-<hex>/    local only: a checkpoint being written, or
                                  one being deleted (renamed away first)
    .upload-ckpt-...-<pid>/       local only: hard links of a checkpoint being
                                  uploaded (immune to retention meanwhile)
    corrupt-ckpt-...-<time>/      local only: a checkpoint that failed to
                                  verify, moved aside, never deleted
    .ftharness/                   the harness's own records
        lease-000000000007.json   remote only: the lease, one record per renewal
        delete-on-success.json    a finished job asks its supervisor to remove the backup
        events/<run>-<session>-attempt-0001.json    the supervisor's records

Checkpoint listings match `ckpt-<12 digits>` exactly, so none of the other
names can ever be taken for a checkpoint.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ftharness.checkpoint.manifest import CHECKPOINT_PREFIX, MANIFEST_NAME

__all__ = [
    "CHECKPOINT_PREFIX",
    "DELETE_ON_SUCCESS_MARKER",
    "EVENTS_DIR",
    "LEASE_RECORD_PREFIX",
    "MANIFEST_NAME",
    "QUARANTINE_PREFIX",
    "STAGING_PREFIX",
    "STATE_DIR",
    "TEMPORARY_PREFIX",
]

# The manifest's own names (`ckpt-` and `manifest.json`) are defined with the
# manifest that parses them and re-exported here.
TEMPORARY_PREFIX = ".tmp-"
STAGING_PREFIX = ".upload-"
QUARANTINE_PREFIX = "corrupt-"
STATE_DIR = ".ftharness"
LEASE_RECORD_PREFIX = "lease-"
# Relative to the backup's root; a dot name, never listed as a checkpoint.
EVENTS_DIR = PurePosixPath(STATE_DIR) / "events"
# Written by a supervised worker whose job wants its backup removed once the
# job succeeds (Keras's delete_checkpoint=True): the supervisor removes the
# backup, locally and remotely, when the command exits 0 and this file exists.
DELETE_ON_SUCCESS_MARKER = f"{STATE_DIR}/delete-on-success.json"
