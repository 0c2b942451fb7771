"""compare.py A.npz B.npz ...: exit 0 iff all arrays bit-identical."""

import sys

import numpy as np

files = [np.load(f) for f in sys.argv[1:]]
ref = files[0]
ok = True
for name, f in zip(sys.argv[2:], files[1:], strict=True):
    same = len(f.files) == len(ref.files) and all(np.array_equal(ref[k], f[k]) for k in ref.files)
    print(name, "identical" if same else "DIFFERENT", f"({len(f.files)} arrays)")
    ok &= same
sys.exit(0 if ok else 1)
