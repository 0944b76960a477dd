#!/usr/bin/env python3
"""Semantic checks of the deploy files that schema checks cannot see; run by check-configs.

    check_configs.py ROOT WORKDIR

Checks, each printing `ok ...` or `FAIL ...`:
  - every metric an alert rule or a dashboard panel queries exists in
    src/telemetry/metrics.rs (so a renamed metric breaks CI, not a 3 a.m. page);
  - the dashboard: valid JSON, unique panel ids, the provisioned datasource uid; every
    query is written to WORKDIR/dashboard-rules.yml as a recording rule so
    `promtool check rules` parses its PromQL;
  - the compose file: depends_on targets exist and have a health check when waited on,
    bind-mounted files exist, the build context has the Dockerfile; ingestd's environment
    is written to WORKDIR/compose.env for `ingestd check`;
  - the Kubernetes manifests: kustomization resources exist, selectors match the pod
    labels, probes use /healthz and /readyz on a declared port, the grace period outlasts
    shutdown.deadline, the pod runs as the image's non-root uid with a read-only root
    filesystem, secret references are optional; the ConfigMaps are written to
    WORKDIR/k8s/ for `ingestd check`.
Exits 1 if any check failed.
"""
import json
import os
import re
import sys

import yaml

ROOT, WORK = sys.argv[1], sys.argv[2]
FAILURES = []


def ok(message):
    print("ok    " + message)


def fail(message):
    print("FAIL  " + message)
    FAILURES.append(message)


def check(condition, message):
    (ok if condition else fail)(message)
    return condition


def read(path):
    with open(os.path.join(ROOT, path)) as handle:
        return handle.read()


# ------------------------------------------------------------------ metric names

source = read("src/telemetry/metrics.rs")
KNOWN = set(re.findall(r'pub const [A-Z_]+: &str = "(ingestd_[a-z_]+)";', source))
HISTOGRAMS = {name for name in KNOWN if name.endswith("_seconds") or name.endswith("_events")}
QUERYABLE = set(KNOWN)
for name in HISTOGRAMS:
    QUERYABLE.update({name + "_bucket", name + "_sum", name + "_count"})
check(len(KNOWN) > 10, "src/telemetry/metrics.rs: %d metric names found" % len(KNOWN))


def unknown_metrics(expr):
    return sorted({name for name in re.findall(r"\bingestd_[a-z_]+\b", expr)} - QUERYABLE)


# ------------------------------------------------------------------ alert rules

alerts = yaml.safe_load(read("deploy/prometheus/alerts.yml"))
for group in alerts["groups"]:
    for rule in group["rules"]:
        missing = unknown_metrics(rule["expr"])
        check(not missing, "alert %s queries known metrics%s" % (
            rule["alert"], ": unknown " + ", ".join(missing) if missing else ""))
        check(rule.get("labels", {}).get("severity") in ("warning", "critical"),
              "alert %s has severity warning or critical" % rule["alert"])

# ------------------------------------------------------------------ dashboard

dashboard = json.loads(read("deploy/grafana/dashboards/ingestd.json"))
panels = dashboard["panels"]
ids = [panel["id"] for panel in panels]
check(len(ids) == len(set(ids)), "dashboard: %d panels, unique ids" % len(ids))
datasources = yaml.safe_load(read("deploy/grafana/provisioning/datasources/prometheus.yml"))
uid = datasources["datasources"][0]["uid"]
recording = []
for panel in panels:
    if panel["type"] == "row":
        continue
    check(panel.get("datasource", {}).get("uid") == uid,
          "dashboard panel %r uses the provisioned datasource %r" % (panel["title"], uid))
    for target in panel.get("targets", []):
        expr = target["expr"]
        missing = unknown_metrics(expr)
        if missing:
            fail("dashboard panel %r queries unknown metrics %s" % (panel["title"], ", ".join(missing)))
        # Grafana variables become what Grafana would send: a range and a match-all regex.
        promql = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
        promql = re.sub(r"\$\{?(instance|pipeline|sink)\}?", ".*", promql)
        recording.append({"record": "dashboard:panel_%d_%s" % (panel["id"], target["refId"]), "expr": promql})
for variable in dashboard["templating"]["list"]:
    missing = unknown_metrics(variable["definition"])
    check(not missing, "dashboard variable %s queries known metrics" % variable["name"])
wanted = {
    "throughput per sink": "ingestd_sink_events_written_total",
    "write errors": "ingestd_sink_write_errors_total",
    "retries": "ingestd_sink_retries_total",
    "queue depth": "ingestd_sink_queue_depth",
    "end-to-end latency quantiles": "histogram_quantile(0.99, sum by (sink, le) (rate(ingestd_end_to_end_latency_seconds_bucket",
    "dead letters": "ingestd_dead_letters_total",
    "rate-limited events": "ingestd_rate_limited_events_total",
}
all_exprs = "\n".join(target["expr"] for panel in panels for target in panel.get("targets", []))
for what, needle in wanted.items():
    check(needle in all_exprs, "dashboard shows %s" % what)
with open(os.path.join(WORK, "dashboard-rules.yml"), "w") as handle:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}, handle, sort_keys=False)
ok("dashboard: %d queries written to dashboard-rules.yml for promtool" % len(recording))

# ------------------------------------------------------------------ compose

compose_path = os.path.join(ROOT, "deploy/docker-compose.yml")
compose = yaml.safe_load(read("deploy/docker-compose.yml"))
services = compose["services"]
for name, service in services.items():
    for target, spec in (service.get("depends_on") or {}).items():
        if not check(target in services, "compose %s depends on existing service %s" % (name, target)):
            continue
        if spec.get("condition") == "service_healthy":
            check("healthcheck" in services[target],
                  "compose %s waits for %s healthy, which has a healthcheck" % (name, target))
    for volume in service.get("volumes", []):
        source_path = volume.split(":")[0]
        if source_path.startswith("."):
            check(os.path.exists(os.path.join(os.path.dirname(compose_path), source_path)),
                  "compose %s mounts existing %s" % (name, source_path))
        else:
            check(source_path in (compose.get("volumes") or {}),
                  "compose %s uses declared volume %s" % (name, source_path))
    image = service.get("image", "")
    if "build" not in service:
        check(re.search(r":[0-9v][^:]*$", image) is not None and not image.endswith(":latest"),
              "compose %s pins its image tag (%s)" % (name, image))
stores = {"redis", "mongo", "scylla", "dynamodb"}
ingestd = services["ingestd"]
check(stores <= set(ingestd["depends_on"]) and
      all(ingestd["depends_on"][store]["condition"] == "service_healthy" for store in stores),
      "compose ingestd waits for every store to be healthy")
context = os.path.join(os.path.dirname(compose_path), ingestd["build"]["context"])
check(os.path.isfile(os.path.join(context, ingestd["build"].get("dockerfile", "Dockerfile"))),
      "compose ingestd build context holds the Dockerfile")
scylla_command = " ".join(services["scylla"]["command"])
check("--smp 1" in scylla_command and "--overprovisioned 1" in scylla_command,
      "compose scylla runs with --smp 1 --overprovisioned 1")
prometheus_config = yaml.safe_load(read("deploy/prometheus/prometheus.yml"))
targets = [target for job in prometheus_config["scrape_configs"] for static in job.get("static_configs", [])
           for target in static["targets"]]
check("ingestd:9000" in targets, "prometheus scrapes ingestd:9000 (the compose service)")
with open(os.path.join(WORK, "compose.env"), "w") as handle:
    for key, value in ingestd["environment"].items():
        handle.write("%s=%s\n" % (key, value))
grace = ingestd.get("stop_grace_period", "10s")
deadline_value = ingestd["environment"].get("INGESTD_SHUTDOWN__DEADLINE", "25s")


def seconds(text):
    match = re.fullmatch(r"(\d+)s", str(text))
    if not match:
        raise ValueError("not a duration in seconds: %r" % (text,))
    return int(match.group(1))


check(seconds(grace) > seconds(deadline_value),
      "compose ingestd stop_grace_period %s outlasts shutdown deadline %s" % (grace, deadline_value))

# ------------------------------------------------------------------ kubernetes

k8s_dir = os.path.join(ROOT, "deploy/k8s")
kustomization = yaml.safe_load(read("deploy/k8s/kustomization.yaml"))
objects = []
for resource in kustomization["resources"]:
    path = os.path.join(k8s_dir, resource)
    if check(os.path.isfile(path), "kustomization resource %s exists" % resource):
        with open(path) as handle:
            objects.extend(doc for doc in yaml.safe_load_all(handle) if doc)
with open(os.path.join(k8s_dir, "servicemonitor.yaml")) as handle:
    servicemonitor = yaml.safe_load(handle)
by_kind = {}
for obj in objects:
    check(obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"),
          "k8s %s/%s has apiVersion, kind and name" % (obj.get("kind"), obj.get("metadata", {}).get("name")))
    by_kind.setdefault(obj["kind"], []).append(obj)
deployment = by_kind["Deployment"][0]
pod = deployment["spec"]["template"]
pod_labels = pod["metadata"]["labels"]


def selects(selector):
    return selector and all(pod_labels.get(key) == value for key, value in selector.items())


check(selects(deployment["spec"]["selector"]["matchLabels"]), "k8s Deployment selector matches its pod labels")
check(selects(by_kind["Service"][0]["spec"]["selector"]), "k8s Service selects the pods")
check(selects(by_kind["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"]), "k8s PodDisruptionBudget selects the pods")
check(selects(servicemonitor["spec"]["selector"]["matchLabels"]) and
      selects(by_kind["Service"][0]["metadata"].get("labels", {}) | {"app.kubernetes.io/name": "ingestd"}),
      "k8s ServiceMonitor selects the Service")
spec = pod["spec"]
container = spec["containers"][0]
port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
check(port_names.get("http") == 9000, "k8s container declares port http = 9000")
check(container["livenessProbe"]["httpGet"]["path"] == "/healthz" and
      container["readinessProbe"]["httpGet"]["path"] == "/readyz" and
      all(container[probe]["httpGet"]["port"] in port_names
          for probe in ("livenessProbe", "readinessProbe", "startupProbe")),
      "k8s probes: liveness /healthz, readiness /readyz, on a declared port")
check(pod["metadata"]["annotations"].get("prometheus.io/port") == "9000", "k8s scrape annotations on port 9000")
dockerfile = read("Dockerfile")
image_uid = int(re.search(r"^ARG INGESTD_UID=(\d+)", dockerfile, re.M).group(1))
security = spec["securityContext"]
check(security.get("runAsNonRoot") is True and security.get("runAsUser") == image_uid,
      "k8s pod runs as non-root uid %d (the image's)" % image_uid)
container_security = container["securityContext"]
check(container_security.get("readOnlyRootFilesystem") is True and
      container_security.get("allowPrivilegeEscalation") is False and
      container_security.get("capabilities", {}).get("drop") == ["ALL"],
      "k8s container: read-only root filesystem, no privilege escalation, no capabilities")
check("requests" in container["resources"] and "memory" in container["resources"].get("limits", {}),
      "k8s container has resource requests and a memory limit")
secret_refs = [env["valueFrom"]["secretKeyRef"] for env in container["env"]
               if "secretKeyRef" in env.get("valueFrom", {})]
check(secret_refs and all(ref.get("optional") is True for ref in secret_refs),
      "k8s credentials come from Secret references (%d, optional)" % len(secret_refs))
configmaps = {cm["metadata"]["name"]: cm for cm in by_kind["ConfigMap"]}
mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
env = {item["name"]: item.get("value") for item in container["env"]}
for volume in spec["volumes"]:
    if "configMap" not in volume:
        continue
    name = volume["configMap"]["name"]
    check(name in configmaps, "k8s volume %s refers to ConfigMap %s defined here" % (volume["name"], name))
spool_dir = re.search(r'^dir = "([^"]+)"', configmaps["ingestd-config"]["data"]["ingestd.toml"], re.M)
check(spool_dir and mounts.get("spool") == spool_dir.group(1) and
      any(volume["name"] == "spool" and "configMap" not in volume for volume in spec["volumes"]),
      "k8s spool.dir is a writable volume (the root filesystem is read-only)")
check(env.get("INGESTD_CONFIG_FILE", "").startswith(mounts.get("config", "?") + "/") and
      env.get("INGESTD_PIPELINES_DIR") == mounts.get("pipelines"),
      "k8s INGESTD_CONFIG_FILE / INGESTD_PIPELINES_DIR point into the mounted ConfigMaps")
config_toml = configmaps["ingestd-config"]["data"]["ingestd.toml"]
deadline = re.search(r'^deadline = "(\d+)s"', config_toml, re.M)
check(deadline and spec["terminationGracePeriodSeconds"] > int(deadline.group(1)),
      "k8s terminationGracePeriodSeconds %s outlasts shutdown.deadline %s" % (
          spec["terminationGracePeriodSeconds"], deadline.group(0) if deadline else "?"))
strategy = deployment["spec"]["strategy"]
check(strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0,
      "k8s rollout overlaps old and new pod (maxUnavailable 0: no pub/sub gap)")
os.makedirs(os.path.join(WORK, "k8s", "pipelines"), exist_ok=True)
with open(os.path.join(WORK, "k8s", "ingestd.toml"), "w") as handle:
    handle.write(config_toml)
for name, text in configmaps["ingestd-pipelines"]["data"].items():
    with open(os.path.join(WORK, "k8s", "pipelines", name), "w") as handle:
        handle.write(text)
ok("k8s ConfigMaps written to %s/k8s for ingestd check" % WORK)

print()
if FAILURES:
    print("%d check(s) failed" % len(FAILURES))
    sys.exit(1)
print("all semantic checks passed")
