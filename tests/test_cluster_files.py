"""cluster/: every launcher file passes Ray's own validator (offline, no cloud calls) and every node or
pod runs Ray with token authentication, the dashboard kept off public interfaces, the pinned Ray."""

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config  # what `ray up` runs first

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_FILES = sorted(CLUSTER.glob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAY_PIN = f"ray[default,train,tune]=={ray.__version__}"
TORCH_PIN = "torch==2.13.0"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def prepared(raw: dict) -> dict:
    """Ray's own checks: provider defaults merged in, then the JSON schema and cross-field rules."""
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return cfg


def _home(path: str) -> str:
    return path.replace("$HOME/", "~/").replace("${HOME}/", "~/")


def auth_problems(cfg: dict) -> list[str]:
    """What keeps a prepared launcher config from running every node with token authentication."""
    problems = []
    mounted = {_home(remote) for remote in cfg.get("file_mounts", {})}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        if not starts:
            problems.append(f"{key}: no `ray start`")
        for cmd in starts:
            before = cmd[:cmd.index("ray start")]
            if not re.search(r"\bRAY_AUTH_MODE=token\b", before):
                problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token")
            path = re.search(r"\bRAY_AUTH_TOKEN_PATH=([^\s;]+)", before)
            if not path or _home(path.group(1)) not in mounted:
                problems.append(f"{key}: RAY_AUTH_TOKEN_PATH is not a file shipped by file_mounts")
            if "0.0.0.0" in cmd:
                problems.append(f"{key}: listens on 0.0.0.0")
            hosts = re.findall(r"--dashboard-host[= ](\S+)", cmd)
            if any(h != "127.0.0.1" for h in hosts):
                problems.append(f"{key}: dashboard on {hosts}")
    return problems


def setup_problems(cfg: dict) -> list[str]:
    """Every node installs the installed Ray's version, torch and the synced project."""
    problems = []
    per_type = [t["worker_setup_commands"] for t in cfg["available_node_types"].values()
                if "worker_setup_commands" in t]
    for name, cmds in [("head", cfg["head_setup_commands"]), ("worker", cfg["worker_setup_commands"]),
                       *[("node type", c) for c in per_type]]:
        text = "\n".join(cmds)
        if RAY_PIN not in text:
            problems.append(f"{name} setup does not install {RAY_PIN}")
        if other := set(re.findall(r"ray\[[^\]]*\]==([\w.]+)", text)) - {ray.__version__}:
            problems.append(f"{name} setup pins other Ray versions {other}")
        if TORCH_PIN not in text:
            problems.append(f"{name} setup does not install {TORCH_PIN}")
        if not any(re.search(rf"pip install .*-e {re.escape(remote)}\s*$", c)
                   for c in cmds for remote in cfg["file_mounts"]):
            problems.append(f"{name} setup does not pip install -e a checkout shipped by file_mounts")
    return problems


def test_cluster_folder_has_the_documented_files():
    assert {p.name for p in LAUNCHER_FILES} >= {"aws.yaml", "gcp.yaml", "local.yaml"}
    assert {p.name for p in KUBERAY_FILES} >= {"raycluster.yaml", "rayjob.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_file_passes_rays_validator(path):
    cfg = prepared(load(path))
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_every_node_starts_ray_with_token_auth_and_a_private_dashboard(path):
    cfg = prepared(load(path))
    assert auth_problems(cfg) == []
    assert any(_home(r).endswith("/.ray/auth_token") for r in cfg["file_mounts"])


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_every_node_installs_pinned_ray_torch_and_the_project(path):
    assert setup_problems(prepared(load(path))) == []


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_file_has_cpu_head_and_autoscaling_gpu_group(name):
    cfg = prepared(load(CLUSTER / name))
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["resources"]
    assert head.get("CPU", 0) == 0 and head.get("GPU", 0) == 0
    gpu = [t for n, t in types.items() if n != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu)
    if name == "gcp.yaml":   # GCE refuses GPU VMs that would live-migrate
        for t in gpu:
            assert t["node_config"]["guestAccelerators"]
            assert t["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


def test_checks_fail_on_broken_configs():
    """The validator and the auth/setup checks above do reject what they are meant to reject."""
    raw = load(CLUSTER / "aws.yaml")
    typo = copy.deepcopy(raw)
    typo["available_node_types"]["gpu_worker"]["max_worker"] = typo["available_node_types"]["gpu_worker"].pop(
        "max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        prepared(typo)

    no_auth = copy.deepcopy(raw)
    no_auth["worker_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token", "") for c in
                                            raw["worker_start_ray_commands"]]
    assert auth_problems(prepared(no_auth)) == ["worker_start_ray_commands: `ray start` without RAY_AUTH_MODE=token"]

    defaults = copy.deepcopy(raw)   # without our start commands Ray's defaults open the dashboard on 0.0.0.0
    del defaults["head_start_ray_commands"]
    assert "head_start_ray_commands: listens on 0.0.0.0" in auth_problems(prepared(defaults))

    old_ray = copy.deepcopy(raw)
    old_ray["setup_commands"] = [c.replace(RAY_PIN, "ray[default,train,tune]==2.59.0") for c in raw["setup_commands"]]
    assert any("2.59.0" in p for p in setup_problems(prepared(old_ray)))


# --- KubeRay manifests: no CRD schema ships with Ray, so check what matters here ---------------------

def ray_cluster_specs(doc: dict) -> list[dict]:
    if doc.get("kind") == "RayCluster":
        return [doc["spec"]]
    if doc.get("kind") == "RayJob":
        return [doc["spec"]["rayClusterSpec"]]
    return []


def values_of(key: str, node) -> list:
    """Every value stored under `key`, anywhere in a parsed manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in values_of(key, v)]
    if isinstance(node, list):
        return [x for v in node for x in values_of(key, v)]
    return []


def token_env_problems(where: str, env: list[dict] | None) -> list[str]:
    by_name = {e["name"]: e for e in env or []}
    problems = []
    if by_name.get("RAY_AUTH_MODE", {}).get("value") != "token":
        problems.append(f"{where}: RAY_AUTH_MODE is not token")
    ref = by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    if not (ref.get("name") and ref.get("key")):
        problems.append(f"{where}: RAY_AUTH_TOKEN does not come from a Secret (secretKeyRef)")
    return problems


def kuberay_problems(docs: list[dict]) -> list[str]:
    problems = []
    specs = [s for d in docs for s in ray_cluster_specs(d)]
    if not specs:
        problems.append("no RayCluster or RayJob")
    for spec in specs:
        if spec.get("rayVersion") != ray.__version__:
            problems.append(f"rayVersion {spec.get('rayVersion')!r} != {ray.__version__}")
        head = spec["headGroupSpec"]
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            problems.append("head service exposed outside the cluster")
        pods = [("head", head["template"])] + [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
        for group, template in pods:
            for c in template["spec"]["containers"]:
                problems += token_env_problems(f"{group}/{c['name']}", c.get("env"))
        if spec.get("enableInTreeAutoscaling"):
            problems += token_env_problems("autoscaler", spec.get("autoscalerOptions", {}).get("env"))
    for doc in docs:
        if doc.get("kind") == "RayJob":
            for c in doc["spec"].get("submitterPodTemplate", {}).get("spec", {}).get("containers", [{}]):
                problems += token_env_problems(f"submitter/{c.get('name')}", c.get("env"))
    for image in values_of("image", docs):
        if ray.__version__ not in image.rsplit(":", 1)[-1]:
            problems.append(f"image {image} is not tagged with Ray {ray.__version__}")
    return problems


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_manifest_pins_ray_and_turns_token_auth_on(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert all(d["apiVersion"] == "ray.io/v1" for d in docs)
    assert kuberay_problems(docs) == []


def test_kuberay_manifests_share_one_token_secret_and_the_rayjob_cleans_up():
    refs = {(ref["name"], ref["key"]) for path in KUBERAY_FILES
            for ref in values_of("secretKeyRef", list(yaml.safe_load_all(path.read_text())))}
    assert len(refs) == 1
    job = load(CLUSTER / "kuberay" / "rayjob.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert "bigmodel-ray run" in job["entrypoint"] and "jobs/quickstart.yaml" in job["entrypoint"]


def test_kuberay_checks_fail_on_broken_manifests():
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob.yaml").read_text()))
    broken = copy.deepcopy(docs)
    spec = broken[0]["spec"]["rayClusterSpec"]
    spec["rayVersion"] = "2.59.0"
    spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"] = [{"name": "RAY_AUTH_MODE",
                                                                              "value": "token"}]
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.59.0-py311-gpu"
    problems = kuberay_problems(broken)
    assert any("rayVersion" in p for p in problems)
    assert any(p.startswith("gpu/ray-worker: RAY_AUTH_TOKEN") for p in problems)
    assert any("2.59.0-py311-gpu" in p for p in problems)


def test_kuberay_image_is_built_on_the_pinned_ray():
    dockerfile = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-", dockerfile, re.M)
    assert RAY_PIN in dockerfile and TORCH_PIN in dockerfile
    assert re.search(r"^RUN pip install .*\.\s*$", dockerfile, re.M)   # the project itself


@pytest.mark.parametrize("name, scheme", [("aws.yaml", "s3://"), ("gcp.yaml", "gs://")])
def test_cloud_clusters_keep_runs_in_the_bucket_they_name_once(name, scheme, tmp_path, monkeypatch):
    from bigmodel_ray.cluster import default_storage
    from bigmodel_ray.spec import load_job

    path = CLUSTER / name
    bucket = default_storage(str(path))
    assert bucket.startswith(scheme) and path.read_text().count(bucket.split("://")[1].split("/")[0]) == 1
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"data": {"source": "digits"}, "model": {"name": "mlp"}}))
    monkeypatch.setenv("BIGMODEL_RAY_STORAGE", bucket)        # as the cluster's nodes have it
    assert load_job(job).storage == bucket
    monkeypatch.delenv("BIGMODEL_RAY_STORAGE")
    assert load_job(job).storage == "runs" and default_storage(str(CLUSTER / "local.yaml")) is None
