"""Extract a vendored JobSet schema from the upstream CRD (run by hand, not by the tests).

    git -C JOBSET_CHECKOUT show TAG:config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml \
        | python tests/deploy/jobset_crd/extract.py > tests/deploy/jobset_crd/TAG.json

Keeps the v1alpha2 openAPIV3Schema as upstream wrote it, minus its `description`
strings (four fifths of the size, no effect on validation).
"""

from __future__ import annotations

import json
import sys

import yaml


def without_descriptions(node):
    if isinstance(node, dict):
        # A property may be *named* "description" (then its value is a schema, a dict).
        return {
            key: without_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [without_descriptions(value) for value in node]
    return node


def main() -> None:
    crd = yaml.safe_load(sys.stdin)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    json.dump(schema, sys.stdout, sort_keys=True, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
