"""Put this directory on PYTHONPATH (with FAULTY_FS_PLAN set) to serve faulty:// URLs."""

import os

if os.environ.get("FAULTY_FS_PLAN"):
    import faulty_fs

    faulty_fs.register()
