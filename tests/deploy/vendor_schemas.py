#!/usr/bin/env python3
"""Refreshes the vendored schemas under tests/deploy/schemas/ (see README.md there).

    vendor_schemas.py k8s KUBERNETES_VALIDATE_DIR [VERSION]
        KUBERNETES_VALIDATE_DIR: an unpacked kubernetes-validate wheel (PyPI), e.g.
        `pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-*.whl`.
        Copies the kind schemas validate.py uses, verbatim, and the definitions they
        reach (only those, each one verbatim) from VERSION (default v1.30.0)-local-strict.
    vendor_schemas.py compose COMPOSE_SPEC_JSON
        Copies compose-spec/compose-spec's schema/compose-spec.json.
Record the new source and version in schemas/README.md."""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "schemas")
# The kinds deploy/k8s/ uses; validate.py refuses a manifest of any other kind.
K8S_KINDS = [
    "configmap-v1.json",
    "deployment-apps-v1.json",
    "job-batch-v1.json",
    "poddisruptionbudget-policy-v1.json",
    "service-v1.json",
]
# Kind files point into _definitions.json, whose own references are local.
DEFS_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def vendor_k8s(src_root, version):
    src = os.path.join(src_root, "kubernetes_validate", "kubernetes-json-schema", f"{version}-local-strict")
    dst = os.path.join(SCHEMAS, f"kubernetes-{version}-strict")
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    defs_doc = json.load(open(os.path.join(src, "_definitions.json")))
    defs = defs_doc["$defs"]
    todo = []
    for name in K8S_KINDS:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
        todo.extend(refs(json.load(open(os.path.join(src, name)))))
    keep = {}
    while todo:
        ref = todo.pop()
        prefix = next((p for p in DEFS_PREFIXES if ref.startswith(p)), None)
        if prefix is None:
            raise SystemExit(f"unexpected $ref {ref}")
        name = ref[len(prefix):]
        if name not in keep:
            keep[name] = defs[name]
            todo.extend(refs(defs[name]))
    pruned = {k: v for k, v in defs_doc.items() if k != "$defs"}
    pruned["$defs"] = {k: keep[k] for k in sorted(keep)}
    with open(os.path.join(dst, "_definitions.json"), "w") as f:
        json.dump(pruned, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"vendored {len(K8S_KINDS)} kinds and {len(keep)} of {len(defs)} definitions into {dst}")


def main(argv):
    if len(argv) >= 2 and argv[0] == "k8s":
        vendor_k8s(argv[1], argv[2] if len(argv) > 2 else "v1.30.0")
    elif len(argv) == 2 and argv[0] == "compose":
        shutil.copyfile(argv[1], os.path.join(SCHEMAS, "compose-spec.json"))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
