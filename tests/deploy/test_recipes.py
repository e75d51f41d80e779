"""Offline checks of the deploy recipes in ``deploy/``: Docker is not on the machines this runs on, nor a
Kubernetes cluster, so these tests are what stands between a typo and a broken rollout.

They parse every YAML file; validate Kubernetes objects against the upstream OpenAPI schemas bundled in
``kubernetes-validate``, and the KEDA ScaledObject, the ServiceMonitor and the compose file against
schemas vendored in ``tests/deploy/schemas`` (see its README); read the Dockerfile; and cross-check the
recipes against each other and against the interfaces every process implements (ports, health
paths, grace periods, queue names, metric names).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llm_router.testing.sim_env import SIM_KEYS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = Path(__file__).with_name("schemas")
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# the oldest Kubernetes the manifests are meant for; kubernetes-validate bundles its schemas
K8S_VERSION = "1.30"

# Prometheus metrics every process exposes, with their type and labels (copied from the interfaces
# the fleet implements; a recipe may reference nothing else)
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels.split()))
    for name, kind, labels in [
        ("llm_router_queue_depth", "gauge", "queue"),
        ("llm_router_queue_oldest_age_seconds", "gauge", "queue"),
        ("llm_router_workers_live", "gauge", "queue"),
        ("llm_router_jobs_total", "counter", "status model provider"),
        ("llm_router_job_duration_seconds", "histogram", "model status"),
        ("llm_router_queue_wait_seconds", "histogram", "queue"),
        ("llm_router_upstream_latency_seconds", "histogram", "provider model"),
        ("llm_router_time_to_first_token_seconds", "histogram", "provider model"),
        ("llm_router_jobs_in_flight", "gauge", "queue"),
        ("llm_router_retries_total", "counter", "provider model"),
        ("llm_router_fallbacks_total", "counter", "model"),
        ("llm_router_deferrals_total", "counter", "queue"),
        ("llm_router_handoffs_total", "counter", "queue outcome"),
        ("llm_router_breaker_state", "gauge", "deployment state"),
        ("llm_router_tokens_total", "counter", "model type tenant"),
        ("llm_router_cost_usd_total", "counter", "model tenant"),
        ("llm_router_credits_reserved_usd", "gauge", ""),
        ("llm_router_http_requests_total", "counter", "route status"),
        ("llm_router_http_request_duration_seconds", "histogram", "route"),
    ]
}
# the metric KEDA scales the workers on
KEDA_DEPTH_METRIC = "llm_router_queue_depth"
# labels Prometheus adds to every series of a target
TARGET_LABELS = frozenset({"job", "instance"})
QUEUES = {"interactive", "bulk"}
DEFAULT_SHUTDOWN_GRACE_S = 25.0  # LLM_ROUTER_SHUTDOWN_GRACE_S when unset
GRACE_MARGIN_S = 5.0  # time to exit and flush after the grace, before the SIGKILL

# files under deploy/k8s that `kubectl apply -k` leaves out on purpose (they need CRDs or are examples)
K8S_OPTIONAL = {"keda-scaledobject.yaml", "servicemonitor.yaml", "secret-example.yaml"}

# vendored schemas: file -> (repository, path, commit, git blob id); also in schemas/README.md
SCHEMA_SOURCES = {
    "compose-spec.json": (
        "compose-spec/compose-spec",
        "schema/compose-spec.json",
        "170098ba07d9f53c383a41bfd4c5166b0a4529a6",
        "5db97d0fbbb8e7fbedea0bb5fdb3fe0e93b0e4b1",
    ),
    "keda.sh_scaledobjects.yaml": (
        "kedacore/keda",
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "68a5b5028f35b22d50597c69819ab32c4e92f21a",
        "f0302424ebce7f1903433910ae7a978c73ae85f3",
    ),
    "monitoring.coreos.com_servicemonitors.yaml": (
        "prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "f8fafd475f3d132e239432ae6172de60a6cb6516",
        "f5736255990a0e152851fadb55f84d6fd0f91d87",
    ),
}
CRD_SCHEMAS = {
    "keda.sh/v1alpha1/ScaledObject": "keda.sh_scaledobjects.yaml",
    "monitoring.coreos.com/v1/ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
}


# --------------------------------------------------------------------------------------------- loading


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=LOADER) if doc is not None]


def deploy_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every cluster object under deploy/k8s (the kustomization is not one)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_all(path):
            if doc.get("kind") != "Kustomization":
                out.append((path.name, doc))
    return out


def objects_of(kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for _, obj in k8s_objects() if obj["kind"] == kind}


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, container) for every container of every Deployment."""
    for dep in objects_of("Deployment").values():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            yield dep, c


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds from ConfigMaps and literal values (Secrets are opaque)."""
    env: dict[str, str] = {}
    configmaps = objects_of("ConfigMap")
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]].get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def declared_ports(container: dict[str, Any]) -> tuple[set[str], set[int]]:
    ports = container.get("ports", [])
    return {p["name"] for p in ports if "name" in p}, {p["containerPort"] for p in ports}


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@functools.cache
def compose() -> dict[str, Any]:
    """deploy/compose.yaml after compose's variable interpolation, with every variable unset."""
    (doc,) = load_yaml_all(DEPLOY / "compose.yaml")
    return interpolate(doc)


def interpolate(node: Any) -> Any:
    """``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` as compose reads them with VAR unset."""
    if isinstance(node, dict):
        return {k: interpolate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v) for v in node]
    if isinstance(node, str):
        return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", node)
    return node


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@functools.cache
def cli_parser() -> Any:
    """The parser behind the `llm-router` console script, found through pyproject's entry point."""
    target = pyproject()["project"]["scripts"]["llm-router"]
    module, _, attr = target.partition(":")
    main = getattr(importlib.import_module(module), attr)
    return importlib.import_module(main.__module__).build_parser()


def parse_cli(argv: list[str]) -> Any:
    try:
        return cli_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`llm-router {shlex.join(argv)}` is not a valid command line")


def promql_metrics(expr: str) -> list[tuple[str, set[str]]]:
    """Every llm_router_* series an expression selects, with the label names its matchers use."""
    out = []
    for m in re.finditer(r"\b(llm_router_[A-Za-z0-9_]+)(\{[^}]*\})?", expr):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2) or ""))
        out.append((m.group(1), labels))
    return out


def metric_problems(expr: str) -> list[str]:
    """Why an expression's metric references are not in METRICS (an empty list when they all are)."""
    problems = []
    for name, labels in promql_metrics(expr):
        base, extra = name, set()
        if name not in METRICS:
            for suffix in ("_bucket", "_sum", "_count"):
                stem = name.removesuffix(suffix)
                if stem != name and METRICS.get(stem, ("",))[0] == "histogram":
                    base, extra = stem, ({"le"} if suffix == "_bucket" else set())
                    break
            else:
                problems.append(f"unknown metric {name}")
                continue
        unknown = labels - METRICS[base][1] - extra - TARGET_LABELS
        if unknown:
            problems.append(f"{name} has no label {sorted(unknown)}")
    return problems


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", deploy_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_yaml_all(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document should be a mapping"


def test_the_recipes_are_all_there() -> None:
    for name in [
        "Dockerfile",
        "compose.yaml",
        "prometheus/prometheus.yml",
        "grafana/llm-router.json",
        "k8s/keda-scaledobject.yaml",
        "README.md",
    ]:
        assert (DEPLOY / name).is_file(), f"deploy/{name} is missing"
    assert len(deploy_yaml_files()) >= 10


# ------------------------------------------------------------------------------------------ schemas


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.mark.parametrize("name", sorted(SCHEMA_SOURCES))
def test_vendored_schemas_are_the_upstream_files(name: str) -> None:
    repo, path, commit, blob = SCHEMA_SOURCES[name]
    assert git_blob_id((SCHEMAS / name).read_bytes()) == blob, f"{name} differs from {repo} {path} @ {commit}"
    assert commit in (SCHEMAS / "README.md").read_text(), "schemas/README.md should record the commit"


def openapi_to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural OpenAPI v3 schema as a JSON schema that refuses fields the CRD does not know."""
    node = dict(node)
    if node.get("nullable") and "type" in node:
        node["type"] = [node["type"], "null"]
    for key in ("properties", "patternProperties"):
        if key in node:
            node[key] = {k: openapi_to_jsonschema(v) for k, v in node[key].items()}
    for key in ("items", "not"):
        if isinstance(node.get(key), dict):
            node[key] = openapi_to_jsonschema(node[key])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = openapi_to_jsonschema(node["additionalProperties"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            node[key] = [openapi_to_jsonschema(v) for v in node[key]]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


@functools.cache
def crd_validator(file_name: str) -> jsonschema.Draft7Validator:
    (crd,) = load_yaml_all(SCHEMAS / file_name)
    spec = crd["spec"]
    (version,) = [v for v in spec["versions"] if v.get("served") and v.get("storage")]
    schema = openapi_to_jsonschema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{version['name']}"}
    schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.protocols.Validator, instance: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    ]


@pytest.mark.parametrize(
    "obj",
    [obj for _, obj in k8s_objects()],
    ids=[f"{f}:{o.get('kind')}/{o.get('metadata', {}).get('name')}" for f, o in k8s_objects()],
)
def test_kubernetes_object_validates(obj: dict[str, Any]) -> None:
    crd = CRD_SCHEMAS.get(f"{obj['apiVersion']}/{obj['kind']}")
    if crd:
        errors = schema_errors(crd_validator(crd), obj)
        assert not errors, "\n".join(errors)
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{'.'.join(map(str, e.path))}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{e.message}: add its schema to tests/deploy/schemas and CRD_SCHEMAS")


def test_compose_validates_against_the_compose_spec() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = schema_errors(jsonschema.Draft7Validator(schema), compose())
    assert not errors, "\n".join(errors)


# ------------------------------------------------------------------------------------------ Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), one list per stage; ARGs before the
    first FROM are substituted into the FROM lines."""
    instructions, buf = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        word, _, rest = (buf + line).partition(" ")
        instructions.append((word.upper(), rest.strip()))
        buf = ""
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions:
        if word == "ARG" and not stages and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        elif word == "FROM":
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest)
            stages.append([(word, rest)])
        elif stages:
            stages[-1].append((word, rest))
    return stages


def exec_form(rest: str) -> list[str]:
    assert rest.startswith("["), f"use the exec (JSON) form: {rest}"
    return json.loads(rest)


def copy_sources() -> list[str]:
    sources = []
    for stage in dockerfile_stages():
        for word, rest in stage:
            if word not in ("COPY", "ADD"):
                continue
            argv = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if any(a.startswith("--from=") for a in argv):
                continue  # from another stage, not from the build context
            sources += [a for a in argv if not a.startswith("--")][:-1]
    return sources


def glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stay within a path segment, ``**`` spans any."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return out


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins; ``!`` re-includes."""
    excluded = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        rx = glob_regex(pattern.removeprefix("!").strip("/"))
        if any(re.fullmatch(rx, p) for p in prefixes):
            excluded = not pattern.startswith("!")
    return excluded


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context() -> None:
    sources = copy_sources()
    assert {"pyproject.toml", "README.md", "llm_router/", "producer/", "worker/", "config/"} <= set(sources)
    ignore_file = DEPLOY / "Dockerfile.dockerignore"
    patterns = [
        line.strip() for line in ignore_file.read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
        files = [REPO / src] if (REPO / src).is_file() else sorted((REPO / src).rglob("*.py"))
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            assert not dockerignore_excludes(rel, patterns), (
                f"{ignore_file.name} keeps {rel} out of the image"
            )
    assert dockerignore_excludes(".venv/bin/python", patterns), "the build context should leave out .venv"
    assert dockerignore_excludes("deploy/providers.env", patterns), "keys must stay out of the build context"


def test_dockerfile_runtime_stage() -> None:
    stages = dockerfile_stages()
    final = dict(stages[-1])  # the last instruction of each kind in the image that runs
    base = re.fullmatch(r"python:3\.(\d+)-slim(?:-\w+)?", final["FROM"].split()[0])
    assert base and int(base.group(1)) >= 11, f"a slim Python 3.11+ base: {final['FROM']}"
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert final["STOPSIGNAL"] == "SIGTERM"
    (script,) = exec_form(final["ENTRYPOINT"])
    assert script in pyproject()["project"]["scripts"], f"ENTRYPOINT {script} is no console script"
    parse_cli(exec_form(final["CMD"]))
    installs = [rest for stage in stages for word, rest in stage if word == "RUN" and "pip install" in rest]
    assert installs and all("[" not in i and "-e " not in i for i in installs), "install `.` without extras"


def test_dockerfile_uid_is_the_one_kubernetes_runs_as() -> None:
    uid = dict(dockerfile_stages()[-1])["USER"].split(":")[0]
    assert uid.isdigit(), "a numeric USER, so runAsNonRoot can verify it"
    for dep in objects_of("Deployment").values():
        ctx = dep["spec"]["template"]["spec"]["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert str(ctx["runAsUser"]) == uid, (
            f"{dep['metadata']['name']} runs as {ctx['runAsUser']}, not {uid}"
        )


def test_container_ports_are_exposed_by_the_image() -> None:
    exposed = {
        int(p.split("/")[0]) for w, rest in dockerfile_stages()[-1] if w == "EXPOSE" for p in rest.split()
    }
    for dep, c in containers():
        assert declared_ports(c)[1] <= exposed, f"{dep['metadata']['name']}: port not in EXPOSE {exposed}"


# ------------------------------------------------------------------------------------------ Kubernetes


def test_container_commands_are_llm_router_commands() -> None:
    for dep, c in containers():
        name = dep["metadata"]["name"]
        assert "command" not in c, f"{name}: keep the image's ENTRYPOINT (llm-router), set args only"
        args = parse_cli(c["args"])
        if args.command == "worker":
            assert set(args.queues.split(",")) <= QUEUES, f"{name}: unknown queue in {args.queues}"


def test_probes_and_scrape_ports_are_ports_the_container_declares() -> None:
    for dep, c in containers():
        name = dep["metadata"]["name"]
        names, numbers = declared_ports(c)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if port is not None:
                assert port in names | numbers, (
                    f"{name} {probe} uses port {port}, declared: {names | numbers}"
                )
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) in numbers, f"{name}: scrape port not declared"
        # the port the process listens on is the declared one
        args = parse_cli(c["args"])
        listens = int(container_env(c)["LLM_ROUTER_METRICS_PORT"]) if args.command == "worker" else args.port
        assert listens in numbers, f"{name} listens on {listens}, declares {numbers}"


def test_liveness_is_healthz_and_readiness_is_readyz() -> None:
    for dep, c in containers():
        name = dep["metadata"]["name"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name


def test_workers_get_killed_only_after_their_shutdown_grace() -> None:
    workers = 0
    for dep, c in containers():
        if c["args"][0] != "worker":
            continue
        workers += 1
        grace = float(container_env(c).get("LLM_ROUTER_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
        kill_after = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert kill_after >= grace + GRACE_MARGIN_S, (
            f"{dep['metadata']['name']}: terminationGracePeriodSeconds {kill_after} should exceed "
            f"LLM_ROUTER_SHUTDOWN_GRACE_S {grace} by {GRACE_MARGIN_S} s"
        )
    assert workers == 2, "an interactive and a bulk worker Deployment"


def test_every_container_has_requests_limits_and_a_locked_down_context() -> None:
    for dep, c in containers():
        name = dep["metadata"]["name"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: resources.{kind}"
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True, name


def test_services_and_budgets_select_pods_that_exist() -> None:
    deployments = objects_of("Deployment")
    pod_labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}
    for name, dep in deployments.items():
        assert labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels[name]), name
    for name, svc in objects_of("Service").items():
        selected = [n for n, labels in pod_labels.items() if labels_match(svc["spec"]["selector"], labels)]
        assert selected, f"Service {name} selects no pod"
        for port in svc["spec"]["ports"]:
            for n in selected:
                (c,) = deployments[n]["spec"]["template"]["spec"]["containers"]
                names, numbers = declared_ports(c)
                assert port["targetPort"] in names | numbers, f"Service {name}: {n} has no port {port}"
    covered: dict[str, int] = dict.fromkeys(deployments, 0)
    for pdb in objects_of("PodDisruptionBudget").values():
        for n, labels in pod_labels.items():
            covered[n] += labels_match(pdb["spec"]["selector"]["matchLabels"], labels)
    assert all(v == 1 for v in covered.values()), f"each Deployment needs exactly one PDB: {covered}"


def test_worker_metrics_service_is_headless() -> None:
    headless = [s for s in objects_of("Service").values() if s["spec"].get("clusterIP") == "None"]
    assert any(s["spec"]["ports"][0]["port"] == 9100 for s in headless), "a headless Service on 9100"


def test_service_monitors_select_services_and_their_ports() -> None:
    services = objects_of("Service")
    for name, sm in objects_of("ServiceMonitor").items():
        wanted = sm["spec"]["selector"]["matchLabels"]
        selected = [s for s in services.values() if labels_match(wanted, s["metadata"]["labels"])]
        assert selected, f"ServiceMonitor {name} selects no Service"
        for endpoint in sm["spec"]["endpoints"]:
            for svc in selected:
                port_names = {p["name"] for p in svc["spec"]["ports"]}
                assert endpoint["port"] in port_names, (
                    f"{name}: {svc['metadata']['name']} has no port {endpoint}"
                )


def test_no_namespace_is_hard_coded() -> None:
    for file_name, obj in k8s_objects():
        assert "namespace" not in obj["metadata"], f"{file_name}: {obj['metadata']['name']}"
    (kustomization,) = load_yaml_all(K8S / "kustomization.yaml")
    assert "namespace" not in kustomization


def test_config_defaults_to_sentinel_and_holds_no_secret() -> None:
    data = objects_of("ConfigMap")["llm-router-config"]["data"]
    sentinels = data["LLM_ROUTER_REDIS_SENTINELS"].split(",")
    assert sentinels and all(re.fullmatch(r"[a-z0-9.-]+:\d+", s) for s in sentinels), sentinels
    assert data["LLM_ROUTER_REDIS_SENTINEL_MASTER"]
    leaked = [k for k in data if k in ("REDIS_URL", "LLM_ROUTER_REDIS_URL") or k.endswith("_API_KEY")]
    assert not leaked, f"secrets belong in a Secret: {leaked}"


def test_the_redis_variables_are_the_ones_the_processes_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import Settings
    from llm_router.redis_client import redis_target

    config = objects_of("ConfigMap")["llm-router-config"]["data"]
    secret = objects_of("Secret")["llm-router-redis-example"]["stringData"]
    for name in [n for n in os.environ if "REDIS" in n]:
        monkeypatch.delenv(name)
    for name, value in {**config, **secret}.items():
        if "REDIS" in name:
            monkeypatch.setenv(name, value)
    target = redis_target(Settings(_env_file=None))
    assert len(target.sentinels) == 3 and target.master == config["LLM_ROUTER_REDIS_SENTINEL_MASTER"]
    assert (target.password, target.sentinel_password) == ("REPLACE_ME", "REPLACE_ME")


def test_secrets_are_examples_of_the_ones_the_deployments_read() -> None:
    secrets = objects_of("Secret")
    assert secrets and all(n.endswith("-example") for n in secrets), f"only examples: {sorted(secrets)}"
    for name, secret in secrets.items():
        assert all("REPLACE_ME" in v for v in secret["stringData"].values()), f"{name}: placeholders only"
    refs = {s["secretRef"]["name"] for _, c in containers() for s in c.get("envFrom", []) if "secretRef" in s}
    assert {f"{r}-example" for r in refs} == set(secrets), "one example per Secret a container reads"
    for dep, c in containers():
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                assert src["configMapRef"]["name"] in objects_of("ConfigMap"), dep["metadata"]["name"]


def test_kustomization_lists_every_manifest_but_the_optional_ones() -> None:
    (kustomization,) = load_yaml_all(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed <= files, f"missing: {listed - files}"
    assert listed | K8S_OPTIONAL == files, f"neither listed nor optional: {files - listed - K8S_OPTIONAL}"


# ------------------------------------------------------------------------------------------------ KEDA


def test_keda_scales_each_worker_pool_on_its_own_queue() -> None:
    deployments = objects_of("Deployment")
    scaled = objects_of("ScaledObject")
    assert len(scaled) == 2
    by_queue = {}
    for name, so in scaled.items():
        spec = so["spec"]
        target = deployments.get(spec["scaleTargetRef"]["name"])
        assert target, f"{name} scales {spec['scaleTargetRef']['name']}, which is no Deployment here"
        assert "replicas" not in target["spec"], f"{target['metadata']['name']}: replicas belong to KEDA"
        (c,) = target["spec"]["template"]["spec"]["containers"]
        queues = parse_cli(c["args"]).queues.split(",")
        assert len(queues) == 1, f"{name}: a scaled pool serves one queue"
        by_queue[queues[0]] = spec
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name  # the CRD's CEL rule
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus"
            query = trigger["metadata"]["query"]
            assert not metric_problems(query), f"{name}: {metric_problems(query)}"
            assert f'queue="{queues[0]}"' in query, f"{name} scales the {queues[0]} pool on {query}"
            assert not query.startswith("sum("), "every process reports the same depth: max, not sum"
            assert float(trigger["metadata"]["threshold"]) > 0
    assert by_queue.keys() == QUEUES
    assert by_queue["interactive"]["minReplicaCount"] >= 1, "the interactive pool never scales to zero"
    bulk_queries = [t["metadata"]["query"] for t in by_queue["bulk"]["triggers"]]
    assert f'max({KEDA_DEPTH_METRIC}{{queue="bulk"}})' in bulk_queries


# ---------------------------------------------------------------------------------------------- compose


def test_compose_redis_keeps_every_job() -> None:
    redis = compose()["services"]["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"]), redis["image"]
    args = redis["command"]
    settings = dict(zip(args[1::2], args[2::2], strict=True))
    assert settings["--appendonly"] == "yes"
    assert settings["--appendfsync"] == "everysec"
    assert settings["--maxmemory-policy"] == "noeviction"
    assert any(
        v["target"] == "/data" if isinstance(v, dict) else v.endswith(":/data") for v in redis["volumes"]
    )


def test_compose_workers_scale() -> None:
    services = compose()["services"]
    worker = services["worker"]
    assert "container_name" not in worker, "--scale worker=N needs compose to name the containers"
    assert "ports" not in worker, "replicas cannot share a published host port"
    assert "profiles" not in worker
    assert parse_cli(worker["command"]).command == "worker"
    grace = float(compose_env(worker).get("LLM_ROUTER_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S))
    assert duration_s(worker["stop_grace_period"]) >= grace + GRACE_MARGIN_S
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_compose_profiles() -> None:
    services = compose()["services"]
    assert services["sim"]["profiles"] == ["sim"]
    assert parse_cli(services["sim"]["command"]).command == "simulate"
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
    for name in ("redis", "api", "worker"):
        assert "profiles" not in services[name], f"{name} runs in every profile"
    assert parse_cli(services["api"]["command"]).command == "serve"


def test_compose_files_exist() -> None:
    for name, svc in compose()["services"].items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == REPO, f"{name}: build from the repository's root"
            assert (context / build["dockerfile"]).is_file()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


def test_sim_env_points_workers_at_the_simulator() -> None:
    lines = (DEPLOY / "sim.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    sim = parse_cli(compose()["services"]["sim"]["command"])
    assert env.pop("LLM_ROUTER_UPSTREAM") == f"http://sim:{sim.port}"
    assert env == SIM_KEYS


def test_prometheus_scrapes_the_api_and_every_worker_replica() -> None:
    services = compose()["services"]
    (config,) = load_yaml_all(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]]
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert int(port) == parse_cli(services[host]["command"]).port, target
    dns = [d for job in jobs.values() for d in job.get("dns_sd_configs", [])]
    assert dns, "scaled workers are found through Docker's DNS"
    for sd in dns:
        assert sd["type"] == "A"
        for name in sd["names"]:
            assert int(compose_env(services[name])["LLM_ROUTER_METRICS_PORT"]) == sd["port"], name
    assert "worker" in {n for sd in dns for n in sd["names"]}


# ---------------------------------------------------------------------------------------------- Grafana


@functools.cache
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "llm-router.json").read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def dashboard_queries() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_queries_only_known_metrics() -> None:
    exprs = dashboard_queries()
    problems = [f"{p} in {e}" for e in exprs for p in metric_problems(e)]
    assert not problems, "\n".join(problems)
    assert all("llm_router_" in e for e in exprs), "every query reads an llm-router metric"


def test_dashboard_covers_the_fleet() -> None:
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in dashboard_queries() for n, _ in promql_metrics(e)}
    wanted = {
        "llm_router_queue_depth",
        "llm_router_queue_oldest_age_seconds",
        "llm_router_jobs_total",
        "llm_router_job_duration_seconds",
        "llm_router_queue_wait_seconds",
        "llm_router_upstream_latency_seconds",
        "llm_router_time_to_first_token_seconds",
        "llm_router_breaker_state",
        "llm_router_cost_usd_total",
        "llm_router_tokens_total",
        "llm_router_workers_live",
        "llm_router_jobs_in_flight",
    }
    assert wanted <= used, f"no panel for {sorted(wanted - used)}"
    quantiles = set(re.findall(r"histogram_quantile\((0\.\d+)", " ".join(dashboard_queries())))
    assert {"0.5", "0.95", "0.99"} <= quantiles


def test_dashboard_panels_use_the_datasource_variable() -> None:
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    items = [item for p in dashboard_panels() for item in [p, *p.get("targets", [])]]
    for item in items + dashboard()["templating"]["list"]:
        if "datasource" in item:
            where = item.get("title") or item.get("name") or item.get("refId")
            assert item["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where


def test_grafana_provisioning_finds_the_dashboard_and_prometheus() -> None:
    services = compose()["services"]
    (providers,) = load_yaml_all(DEPLOY / "grafana" / "provisioning" / "dashboards" / "llm-router.yaml")
    (datasources,) = load_yaml_all(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    target = mounts["./grafana/llm-router.json"]
    assert os.path.dirname(target) in {p["options"]["path"] for p in providers["providers"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (ds,) = datasources["datasources"]
    host_port = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"])
    assert host_port and host_port.group(1) in services, ds["url"]
