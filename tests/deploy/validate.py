#!/usr/bin/env python3
"""Validates the deployment offline, since no container engine runs here:
- deploy/compose/compose.yaml against the Compose Specification's JSON schema, and every
  manifest in deploy/k8s/ against the Kubernetes v1.30 schemas (strict: unknown fields are
  errors), both vendored under tests/deploy/schemas/ (see its README.md);
- that the schemas are not vacuous (a misspelt field is refused);
- that the pieces agree: every file the compose stack mounts exists (deploy/grafana/ is
  only reported when missing), both cxstream configs parse with the real binary
  (`cxstream check-map`), their journey.maps resolve inside the container to the repo's map,
  the HTTP port is the same in the configs, the Dockerfile, compose, Prometheus and
  Kubernetes, the image's user is the manifests' user, and the Docker build context holds
  every file the build reads.

    python3 tests/deploy/validate.py [--cxstream PATH]
PATH defaults to $CX_CXSTREAM_BIN, else the newer of target/{debug,release}/cxstream; the
binary checks are skipped (and said so) when none exists. Prints a cargo-style result line.

    python3 tests/deploy/validate.py --sync-configmap
copies schemas/journeys/retail.yaml into deploy/k8s/configmap.yaml after the map changed."""
import argparse
import copy
import fnmatch
import glob
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import yaml
from referencing import Registry, Resource

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMAS = os.path.join(ROOT, "tests/deploy/schemas")
COMPOSE_DIR = os.path.join(ROOT, "deploy/compose")
COMPOSE_FILE = os.path.join(COMPOSE_DIR, "compose.yaml")
K8S_DIR = os.path.join(ROOT, "deploy/k8s")
K8S_VERSION = "v1.30.0"
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
MAP = os.path.join(ROOT, "schemas/journeys/retail.yaml")
# Created by another part of issue 9; reported, not failed, while absent.
OPTIONAL_MOUNTS = (os.path.join(ROOT, "deploy/grafana"),)
# apiVersion, kind -> vendored schema file.
K8S_KINDS = {
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("batch/v1", "Job"): "job-batch-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
}
# The compose services built from the Dockerfile.
CXSTREAM_SERVICES = ("init", "journey", "alerter", "simulator")
# The long-running ones: compose services and the Kubernetes Deployments running them.
SERVERS = {"journey": "cxstream-journey", "alerter": "cxstream-alerter"}


class Failed(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Failed(msg)


def rel(path):
    return os.path.relpath(path, ROOT)


# ---------------------------------------------------------------- loading


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


INTERP = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(node, where="compose.yaml"):
    """Compose's variable interpolation with every variable unset: a stack that needs a
    variable without a default is refused, so `docker compose up` works as checked out."""
    if isinstance(node, dict):
        return {k: interpolate(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        if op in (":-", "-"):
            return arg
        raise Failed(f"{where}: ${{{name}}} has no default (unset variables become empty)")

    return INTERP.sub(sub, node)


def compose():
    with open(COMPOSE_FILE) as f:
        return interpolate(yaml.safe_load(f))


def k8s_docs():
    out = []
    for path in sorted(glob.glob(os.path.join(K8S_DIR, "*.yaml")) + glob.glob(os.path.join(K8S_DIR, "*.yml"))):
        for i, doc in enumerate(load_yaml_docs(path)):
            out.append((f"{rel(path)}#{i}", doc))
    return out


def k8s_find(kind, name=None):
    found = [d for _, d in k8s_docs() if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    need(found, f"deploy/k8s has no {kind}{' ' + name if name else ''}")
    return found


def k8s_validator(schema_file):
    base = os.path.join(SCHEMAS, f"kubernetes-{K8S_VERSION}-strict")
    defs = json.load(open(os.path.join(base, "_definitions.json")))
    schema = json.load(open(os.path.join(base, schema_file)))
    registry = Registry().with_resources([
        (defs["$id"], Resource.from_contents(defs)),
        (schema["$id"], Resource.from_contents(schema)),
    ])
    return jsonschema.Draft202012Validator(schema, registry=registry)


def compose_validator():
    schema = json.load(open(os.path.join(SCHEMAS, "compose-spec.json")))
    return jsonschema.Draft7Validator(schema)


def errors(validator, doc):
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def dockerfile():
    """Stages, the final stage's WORKDIR, USER, EXPOSE, ENTRYPOINT and COPY (src, dst)."""
    lines, cur = [], ""
    for raw in open(DOCKERFILE):
        line = raw.rstrip("\n")
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    stages = []
    for line in lines:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append({"from": args.split()[0], "run": [], "copy": [], "workdir": "/", "user": None,
                           "expose": [], "entrypoint": None})
            continue
        st = stages[-1]
        if instr == "RUN":
            st["run"].append(args)
        elif instr == "COPY":
            parts = args.split()
            flags = [p for p in parts if p.startswith("--")]
            paths = [p for p in parts if not p.startswith("--")]
            if not any(f.startswith("--from") for f in flags):
                for src in paths[:-1]:
                    st["copy"].append((src, posixpath.join(st["workdir"], paths[-1])))
        elif instr == "WORKDIR":
            st["workdir"] = posixpath.join(st["workdir"], args)
        elif instr == "USER":
            st["user"] = args
        elif instr == "EXPOSE":
            st["expose"] += [int(p.split("/")[0]) for p in args.split()]
        elif instr == "ENTRYPOINT":
            st["entrypoint"] = json.loads(args)
    return stages


# ---------------------------------------------------------------- path mapping


def compose_mounts(svc):
    """(host path or None for a named volume, container path) of a service's volumes."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            src, dst = parts[0], parts[1]
            bind = src.startswith((".", "/", "~"))
        else:
            src, dst, bind = v.get("source"), v["target"], v.get("type") == "bind"
        out.append((os.path.normpath(os.path.join(COMPOSE_DIR, src)) if bind else None, dst))
    return out


def image_path(path):
    """Where a path of the cxstream image comes from in the build context, or None."""
    final = dockerfile()[-1]
    for src, dst in final["copy"]:
        if path == dst or path.startswith(dst.rstrip("/") + "/"):
            return os.path.normpath(os.path.join(ROOT, src, path[len(dst):].lstrip("/")))
    return None


def container_to_host(svc, path, image=False):
    """The host file a container path of a compose service is, through its bind mounts
    (the longest match wins) or, for a cxstream image, the Dockerfile's COPY."""
    best = None
    for host, dst in compose_mounts(svc):
        if path == dst or path.startswith(dst.rstrip("/") + "/"):
            if best is None or len(dst) > len(best[1]):
                best = (host, dst)
    if best:
        need(best[0] is not None, f"{path} is on a named volume, not in the repository")
        return os.path.normpath(os.path.join(best[0], path[len(best[1]):].lstrip("/")))
    return image_path(path) if image else None


def k8s_mount_source(pod_spec, container, path):
    """(ConfigMap name, key) a container path of a pod is, through a configMap volume."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        dst = m["mountPath"]
        if path.startswith(dst.rstrip("/") + "/"):
            vol = volumes.get(m["name"])
            need(vol is not None, f"volumeMount {m['name']} names no volume")
            need("configMap" in vol, f"{path} is on volume {m['name']}, not a ConfigMap")
            key = path[len(dst):].lstrip("/")
            if m.get("subPath"):
                key = m["subPath"]
            return vol["configMap"]["name"], key
    raise Failed(f"{path} is on no volume of container {container['name']}")


def env_value(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None


# ---------------------------------------------------------------- the configs


def compose_config():
    c = compose()
    svc = c["services"]["journey"]
    path = svc["environment"]["CXSTREAM_CONFIG"]
    host = container_to_host(svc, path)
    need(host and os.path.isfile(host), f"compose journey: CXSTREAM_CONFIG {path} is no mounted file")
    return host, yaml.safe_load(open(host))


def k8s_config():
    dep = k8s_find("Deployment", "cxstream-journey")[0]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    path = env_value(container, "CXSTREAM_CONFIG")
    need(path, "the Deployment sets no CXSTREAM_CONFIG")
    cm_name, key = k8s_mount_source(pod, container, path)
    cm = k8s_find("ConfigMap", cm_name)[0]
    need(key in cm.get("data", {}), f"ConfigMap {cm_name} has no key {key} (CXSTREAM_CONFIG {path})")
    return pod, container, cm, yaml.safe_load(cm["data"][key])


def listen_port(cfg, where):
    listen = cfg.get("http", {}).get("listen")
    need(listen, f"{where}: http.listen is not set (the default 127.0.0.1 is unreachable from outside)")
    host, _, port = listen.rpartition(":")
    need(host.strip("[]") in ("0.0.0.0", "::"), f"{where}: http.listen {listen} must bind all interfaces")
    return int(port)


# ---------------------------------------------------------------- checks


def check_compose_schema():
    errs = errors(compose_validator(), compose())
    need(not errs, "compose.yaml does not follow the Compose Specification:\n  " + "\n  ".join(errs))


def check_k8s_schemas():
    docs = k8s_docs()
    need(docs, "deploy/k8s has no manifest")
    problems = []
    for where, doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in K8S_KINDS:
            problems.append(f"{where}: no vendored schema for {key} (add it to tests/deploy/vendor_schemas.py)")
            continue
        problems += [f"{where} ({key[1]}): {e}" for e in errors(k8s_validator(K8S_KINDS[key]), doc)]
        need(doc.get("metadata", {}).get("name"), f"{where}: metadata.name is missing")
    need(not problems, "\n  ".join(["manifests do not follow Kubernetes " + K8S_VERSION] + problems))


def check_schemas_refuse_mistakes():
    c = compose()
    c["services"]["journey"]["helthcheck"] = c["services"]["journey"].pop("healthcheck")
    need(errors(compose_validator(), c), "the compose schema accepted a misspelt service key")
    dep = copy.deepcopy(k8s_find("Deployment")[0])
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    need(errors(k8s_validator(K8S_KINDS[("apps/v1", "Deployment")]), dep),
         "the Deployment schema accepted a misspelt container field")
    dep = copy.deepcopy(k8s_find("Deployment")[0])
    dep["spec"]["replicas"] = "two"
    need(errors(k8s_validator(K8S_KINDS[("apps/v1", "Deployment")]), dep),
         "the Deployment schema accepted a string for replicas")


def check_compose_mounts(report):
    c = compose()
    missing = []
    for name, svc in c["services"].items():
        for host, dst in compose_mounts(svc):
            if host is None or os.path.exists(host):
                continue
            if host.startswith(OPTIONAL_MOUNTS):
                report.append(f"compose {name}: {rel(host)} (mounted at {dst}) does not exist yet")
            else:
                missing.append(f"compose {name}: {rel(host)} (mounted at {dst}) does not exist")
        build = svc.get("build")
        if build:
            ctx = os.path.normpath(os.path.join(COMPOSE_DIR, build if isinstance(build, str) else build["context"]))
            df = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(ctx, df)):
                missing.append(f"compose {name}: build {rel(os.path.join(ctx, df))} does not exist")
    need(not missing, "\n  ".join(missing))


def check_compose_services():
    c = compose()
    services = c["services"]
    for name in CXSTREAM_SERVICES:
        need(name in services, f"compose has no `{name}` service")
        need(services[name].get("build"), f"compose `{name}` is not built from the Dockerfile")
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            need(dep in services, f"compose {name} depends on unknown service {dep}")
        image = svc.get("image", "")
        if not svc.get("build"):
            tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
            need(tag and tag != "latest", f"compose {name}: image {image!r} is not pinned to a version")
    need("simulate" in services["simulator"].get("profiles", []), "the simulator is not under profile `simulate`")
    need(services["init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
         and services["init"]["depends_on"]["clickhouse"]["condition"] == "service_healthy",
         "init must wait for healthy Kafka and ClickHouse")
    for name in SERVERS:
        need(services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully",
             f"{name} must wait for init (topics, migrations)")
        hc = " ".join(services[name]["healthcheck"]["test"])
        need("/readyz" in hc, f"the {name}'s healthcheck does not ask /readyz")
    grace = services["journey"].get("stop_grace_period", "10s")
    need(re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 30,
         f"journey stop_grace_period {grace}: SIGTERM must have time to commit (>= 30s)")


def check_dockerfile():
    stages = dockerfile()
    need(len(stages) >= 2, "the Dockerfile is not multi-stage")
    build_runs = " ".join(r for s in stages[:-1] for r in s["run"])
    need(re.search(r"cargo build --release -p cxstream --locked", build_runs),
         "the builder does not run `cargo build --release -p cxstream --locked`")
    final = stages[-1]
    need(final["user"] and final["user"].split(":")[0].isdigit() and int(final["user"].split(":")[0]) > 0,
         f"the image's USER {final['user']!r} must be a numeric non-root uid")
    need(final["entrypoint"] == ["cxstream"], f"ENTRYPOINT is {final['entrypoint']}, not [\"cxstream\"]")
    # The default journey.maps is relative to the working directory.
    default_map = posixpath.join(final["workdir"], "schemas/journeys/retail.yaml")
    host = image_path(default_map)
    need(host and os.path.isfile(host), f"the image has no {default_map} (journey.maps' default)")


def check_dockerignore():
    patterns = [l.strip() for l in open(os.path.join(ROOT, ".dockerignore"))
                if l.strip() and not l.startswith("#")]

    def ignored(path):
        parts = path.split("/")
        for p in patterns:
            p = p.rstrip("/")
            anchored = p.lstrip("/")
            for i in range(1, len(parts) + 1):
                if fnmatch.fnmatch("/".join(parts[:i]), anchored):
                    return p
        return None

    needed = ["Cargo.toml", "Cargo.lock", "Dockerfile", "schemas/journeys/retail.yaml"]
    for toml in glob.glob(os.path.join(ROOT, "*/**/Cargo.toml"), recursive=True):
        if "/target/" not in toml:
            needed.append(rel(toml))
    for src in glob.glob(os.path.join(ROOT, "services/**/*.rs"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "benches/**/*.rs"), recursive=True):
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', open(src).read()):
            needed.append(os.path.relpath(os.path.normpath(os.path.join(os.path.dirname(src), m[1])), ROOT))
    bad = [f"{p} (by {ignored(p)!r})" for p in sorted(set(needed)) if ignored(p)]
    need(not bad, "the build context leaves out files the build reads: " + ", ".join(bad))


def check_ports():
    port_c = listen_port(compose_config()[1], "deploy/compose/cxstream.yaml")
    cfg_k = k8s_config()[3]
    port_k = listen_port(cfg_k, "ConfigMap cxstream.yaml")
    final = dockerfile()[-1]
    seen = {"compose config": port_c, "k8s config": port_k}
    for p in final["expose"]:
        seen["Dockerfile EXPOSE"] = p
    c = compose()
    prom = yaml.safe_load(open(os.path.join(COMPOSE_DIR, "prometheus.yml")))
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    named = {}
    for name, deployment in SERVERS.items():
        svc = c["services"][name]
        for p in svc.get("expose", []):
            seen[f"compose {name} expose"] = int(str(p).split("/")[0])
        m = re.search(r"/dev/tcp/[^/]+/(\d+)", " ".join(svc["healthcheck"]["test"]))
        need(m, f"cannot read the port of the {name}'s healthcheck")
        seen[f"compose {name} healthcheck"] = int(m[1])
        need(f"cxstream-{name}" in jobs, f"prometheus.yml has no cxstream-{name} job")
        for sd in jobs[f"cxstream-{name}"].get("dns_sd_configs", []):
            need(sd["names"] == [name], f"prometheus job cxstream-{name} scrapes {sd['names']}, not [{name}]")
            seen[f"prometheus {name} dns_sd"] = sd["port"]
        tmpl = k8s_find("Deployment", deployment)[0]["spec"]["template"]
        ctr = tmpl["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
        need(len(ports) == 1, f"the {name} container should declare exactly its HTTP port")
        named.update(ports)
        seen[f"k8s {name} containerPort"] = next(iter(ports.values()))
        for probe in ("livenessProbe", "readinessProbe"):
            port = ctr[probe]["httpGet"]["port"]
            seen[f"k8s {name} {probe}"] = ports.get(port, port)
        ann = tmpl["metadata"].get("annotations", {})
        if "prometheus.io/port" in ann:
            seen[f"k8s {name} prometheus.io/port"] = int(ann["prometheus.io/port"])
    for svc in k8s_find("Service"):
        for p in svc["spec"]["ports"]:
            seen[f"k8s Service {svc['metadata']['name']} targetPort"] = named.get(p["targetPort"], p["targetPort"])
    ports = set(seen.values())
    need(len(ports) == 1, "the HTTP port differs: " + ", ".join(f"{k}={v}" for k, v in seen.items()))


def check_compose_map_path():
    c = compose()
    _, cfg = compose_config()
    paths = cfg["journey"]["maps"]
    need(paths, "compose config journey.maps lists no map")
    for path in paths:
        need(path.startswith("/"), f"compose config journey.maps {path} should be absolute in the container")
        shipped = os.path.join(ROOT, "schemas/journeys", posixpath.basename(path))
        for name in CXSTREAM_SERVICES:
            host = container_to_host(c["services"][name], path, image=True)
            need(host and os.path.isfile(host), f"compose {name}: journey.maps {path} is no file of the image or mounts")
            need(os.path.isfile(shipped) and os.path.samefile(host, shipped),
                 f"compose {name}: journey.maps {path} is {rel(host)}, not a map of schemas/journeys/")


def check_k8s_map():
    pod, container, cm, cfg = k8s_config()
    paths = cfg["journey"]["maps"]
    need(paths == ["/etc/cxstream/retail.yaml"], f"Kubernetes journey.maps is {paths}, not the ConfigMap's retail.yaml")
    path = paths[0]
    cm_name, key = k8s_mount_source(pod, container, path)
    need(cm_name == cm["metadata"]["name"] and key in cm["data"],
         f"journey.map {path} is not a key of ConfigMap {cm['metadata']['name']}")
    need(cm["data"][key] == open(MAP).read(),
         f"ConfigMap key {key} differs from {rel(MAP)}: run tests/deploy/validate.py --sync-configmap")


def check_k8s_workloads():
    uid = int(dockerfile()[-1]["user"].split(":")[0])
    pods = {}
    for name, deployment in SERVERS.items():
        spec = k8s_find("Deployment", deployment)[0]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        pods[deployment] = labels
        sel = spec["selector"]["matchLabels"]
        need(sel and all(labels.get(k) == v for k, v in sel.items()),
             f"Deployment {deployment}'s selector does not select its pods")
        need(spec["template"]["spec"]["containers"][0].get("args") == [name],
             f"Deployment {deployment} does not run `cxstream {name}`")
        need(spec.get("replicas", 1) >= 2, f"Deployment {deployment} should run at least 2 replicas")
        pod = spec["template"]["spec"]
        need(pod.get("terminationGracePeriodSeconds", 30) >= 30, f"{deployment}: terminationGracePeriodSeconds < 30")
        c = pod["containers"][0]
        need(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{deployment}: liveness must probe /healthz")
        need(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{deployment}: readiness must probe /readyz")

    def selects_one(sel, where):
        chosen = [d for d, labels in pods.items() if sel and all(labels.get(k) == v for k, v in sel.items())]
        need(len(chosen) == 1, f"{where} selects the pods of {chosen or 'no Deployment'}, not of exactly one")
        return chosen[0]

    for kind, selector in (("PodDisruptionBudget", lambda d: d["spec"]["selector"]["matchLabels"]),
                           ("Service", lambda d: d["spec"]["selector"])):
        covered = {selects_one(selector(d), f"{kind} {d['metadata']['name']}") for d in k8s_find(kind)}
        need(covered == set(pods), f"{kind}s cover {sorted(covered)}, not every Deployment {sorted(pods)}")
    configmaps = {cm["metadata"]["name"] for cm in k8s_find("ConfigMap")}
    images = set()
    for where, doc in k8s_docs():
        tmpl = doc.get("spec", {}).get("template", {}).get("spec")
        if not tmpl:
            continue
        psc = tmpl.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not set")
        need(psc.get("runAsUser") == uid, f"{where}: runAsUser {psc.get('runAsUser')} is not the image's {uid}")
        for v in tmpl.get("volumes", []):
            if "configMap" in v:
                need(v["configMap"]["name"] in configmaps, f"{where}: ConfigMap {v['configMap']['name']} is not defined")
        for ctr in tmpl.get("initContainers", []) + tmpl["containers"]:
            sc = ctr.get("securityContext", {})
            need(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False,
                 f"{where} {ctr['name']}: read-only root and no privilege escalation expected")
            res = ctr.get("resources", {})
            need(res.get("requests") and res.get("limits"), f"{where} {ctr['name']}: resources need requests and limits")
            image = ctr["image"]
            need(":" in image.rpartition("/")[2] and not image.endswith(":latest"), f"{where}: image {image} is not pinned")
            images.add(image)
    need(len(images) == 1, f"the manifests use different cxstream images: {sorted(images)}")


def check_prometheus(report):
    c = compose()
    svc = c["services"]["prometheus"]
    prom_path = container_to_host(svc, "/etc/prometheus/prometheus.yml")
    need(prom_path and os.path.isfile(prom_path), "prometheus.yml is not mounted at /etc/prometheus/prometheus.yml")
    prom = yaml.safe_load(open(prom_path))
    hosts = []
    for rule in prom.get("rule_files", []):
        host = container_to_host(svc, rule)
        need(host and os.path.isfile(host), f"rule file {rule} is not mounted from the repository")
        hosts.append(host)
    need(any(os.path.samefile(h, os.path.join(ROOT, "deploy/prometheus/cxstream.rules.yml")) for h in hosts),
         "Prometheus does not load deploy/prometheus/cxstream.rules.yml")
    for am in prom["alerting"]["alertmanagers"]:
        for sc in am["static_configs"]:
            for t in sc["targets"]:
                need(t.split(":")[0] in c["services"], f"alertmanager target {t} is not a compose service")
    am_host = container_to_host(c["services"]["alertmanager"], "/etc/alertmanager/alertmanager.yml")
    need(am_host and os.path.samefile(am_host, os.path.join(ROOT, "deploy/prometheus/alertmanager.yml")),
         "Alertmanager does not load deploy/prometheus/alertmanager.yml")
    promtool = shutil.which("promtool")
    if not promtool:
        report.append("promtool not found: prometheus.yml checked for paths only")
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = copy.deepcopy(prom)
        local["rule_files"] = hosts
        path = os.path.join(tmp, "prometheus.yml")
        yaml.safe_dump(local, open(path, "w"))
        r = subprocess.run([promtool, "check", "config", path], capture_output=True, text=True)
        need(r.returncode == 0, f"promtool check config: {r.stdout}{r.stderr}")


def check_configs_with_binary(binary, report):
    if not binary:
        report.append("no cxstream binary: the configs were not parsed by cxstream (pass --cxstream)")
        return
    configs = [("deploy/compose/cxstream.yaml", open(compose_config()[0]).read())]
    configs.append(("ConfigMap cxstream.yaml", k8s_config()[2]["data"]["cxstream.yaml"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
    with tempfile.TemporaryDirectory() as tmp:
        for where, text in configs:
            # The map paths are the container's: the repository's maps of the same names
            # stand in (the path checks tie them together), checked as a set by check-map.
            maps = yaml.safe_load(text)["journey"]["maps"]
            env["CXSTREAM_JOURNEY_MAPS"] = ",".join(
                os.path.join(ROOT, "schemas/journeys", posixpath.basename(m)) for m in maps)
            path = os.path.join(tmp, "cxstream.yaml")
            open(path, "w").write(text)
            r = subprocess.run([binary, "--config", path, "check-map"], capture_output=True, text=True, env=env)
            need(r.returncode == 0 and r.stdout.startswith("journey `"),
                 f"{binary} refuses {where}: {r.stderr.strip() or r.stdout.strip()}")


def find_binary(arg):
    if arg:
        need(os.access(arg, os.X_OK), f"--cxstream {arg} is not an executable")
        return arg
    if os.environ.get("CX_CXSTREAM_BIN"):
        return os.environ["CX_CXSTREAM_BIN"]
    found = [p for p in (os.path.join(ROOT, "target", d, "cxstream") for d in ("debug", "release"))
             if os.access(p, os.X_OK)]
    return max(found, key=os.path.getmtime) if found else None


def sync_configmap():
    path = os.path.join(K8S_DIR, "configmap.yaml")
    head, sep, _ = open(path).read().partition("\n  retail.yaml: |\n")
    need(sep, f"{rel(path)} has no `retail.yaml: |` key (it must be the last one)")
    body = "".join("    " + l if l.strip() else "\n" for l in open(MAP).read().splitlines(True))
    open(path, "w").write(head + sep + body)
    print(f"copied {rel(MAP)} into {rel(path)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cxstream", help="the cxstream binary that parses the configs")
    ap.add_argument("--sync-configmap", action="store_true", help="copy the journey map into the ConfigMap and exit")
    args = ap.parse_args()
    if args.sync_configmap:
        sync_configmap()
        return 0
    report = []
    checks = [
        ("compose.yaml follows the Compose Specification", check_compose_schema),
        (f"Kubernetes manifests follow the {K8S_VERSION} schemas (strict)", check_k8s_schemas),
        ("the schemas refuse misspelt fields", check_schemas_refuse_mistakes),
        ("compose services, dependencies and pinned images", check_compose_services),
        ("compose mounts and build files exist", lambda: check_compose_mounts(report)),
        ("Dockerfile: multi-stage, locked build, non-root, entrypoint, schemas", check_dockerfile),
        (".dockerignore keeps what the build reads", check_dockerignore),
        ("one HTTP port across configs, image, compose, Prometheus, Kubernetes", check_ports),
        ("compose journey.maps resolve to the repository's maps", check_compose_map_path),
        ("Kubernetes journey.maps is the repository's map", check_k8s_map),
        ("Kubernetes workloads: selectors, probes, security, resources, image", check_k8s_workloads),
        ("Prometheus and Alertmanager load the repository's rules and routing", lambda: check_prometheus(report)),
        ("both cxstream configs parse with cxstream check-map",
         lambda: check_configs_with_binary(find_binary(args.cxstream), report)),
    ]
    passed, failed = 0, 0
    for name, fn in checks:
        try:
            fn()
            print(f"deploy: {name} ... ok")
            passed += 1
        except Failed as e:
            print(f"deploy: {name} ... FAILED\n  {e}")
            failed += 1
    for note in report:
        print(f"deploy: note: {note}")
    print(f"test result: {'FAILED' if failed else 'ok'}. {passed} passed; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
