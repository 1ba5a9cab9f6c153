"""The deployment recipes in infra/: they parse, name only images and variables that
docs/deployment.md explains, and install the dependency set CI tests."""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
DOCS = ROOT / "docs" / "deployment.md"
K8S = sorted((INFRA / "k8s").glob("*.yaml"))
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")  # ${VAR}, ${VAR:-default}
# Variables of prefect-kubernetes, which is not installed here (it lives in the worker image):
# its settings module builds them from the prefix PREFECT_INTEGRATIONS_KUBERNETES_.
PREFECT_KUBERNETES = "PREFECT_INTEGRATIONS_KUBERNETES_"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def k8s_documents() -> list[dict]:
    return [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]


def base_job_template() -> dict:
    """The kubernetes pool's base job template, kept as JSON in a ConfigMap."""
    (cm,) = [
        d
        for d in k8s_documents()
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "salaudit-base-job-template"
    ]
    return json.loads(cm["data"]["base-job-template.json"])


def walk(node, key: str):
    """Every value stored under `key` anywhere in a parsed document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def compose_names() -> tuple[set[str], set[str]]:
    """(images, variable names) of the compose file: `environment:` keys and ${VAR} references."""
    compose = load(INFRA / "compose.yaml")
    # an image given as ${VAR:-default} is checked under its default (VAR as a variable)
    images = {re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", i) for i in walk(compose, "image")}
    names = {k for env in walk(compose, "environment") for k in env}
    names |= set(ENV_REF.findall((INFRA / "compose.yaml").read_text()))
    return images, names


def k8s_names() -> tuple[set[str], set[str]]:
    """(images, variable names) of the manifests, the base job template's included."""
    docs = [*k8s_documents(), base_job_template()]
    images = {i for i in walk(docs, "image") if isinstance(i, str) and "{{" not in i}
    images.add(base_job_template()["variables"]["properties"]["image"]["default"])
    names = {e["name"] for env in walk(docs, "env") if isinstance(env, list) for e in env}
    return images, names


def prefect_yaml_names() -> tuple[set[str], set[str]]:
    """(images, variable names) in the job variables of infra/prefect.yaml."""
    jvs = [
        d["work_pool"].get("job_variables", {}) for d in load(INFRA / "prefect.yaml")["deployments"]
    ]
    return {j["image"] for j in jvs if "image" in j}, {k for j in jvs for k in j.get("env", {})}


def documented_table() -> str:
    """The docs' section "Images and variables"."""
    text = DOCS.read_text()
    start = text.index("## Images and variables")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_every_image_and_variable_is_documented():
    table = documented_table()
    images, names = set(), set()
    for found in (compose_names(), k8s_names(), prefect_yaml_names()):
        images |= found[0]
        names |= found[1]
    assert len(images) >= 6 and len(names) >= 12  # the collectors found them
    missing = sorted(x for x in images | names if f"`{x}`" not in table)
    assert not missing, f"not in docs/deployment.md's table: {missing}"


def test_prefect_variables_exist():
    """Every PREFECT_* variable the recipes set is a setting of the installed Prefect."""
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_settings_fields

    valid = set(_get_settings_fields(Settings))
    used = compose_names()[1] | k8s_names()[1] | prefect_yaml_names()[1]
    prefect = {n for n in used if n.startswith("PREFECT_")}
    assert "PREFECT_API_URL" in prefect
    unknown = sorted(n for n in prefect if n not in valid and not n.startswith(PREFECT_KUBERNETES))
    assert not unknown, f"not Prefect settings: {unknown}"


def test_compose_services():
    services = load(INFRA / "compose.yaml")["services"]
    assert {"postgres", "prefect-server", "minio", "dask-scheduler", "dask-cuda-worker"} <= set(
        services
    )
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/minio:")

    server = services["prefect-server"]
    assert server["entrypoint"][:3] == ["prefect", "server", "start"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url

    scheduler = services["dask-scheduler"]["entrypoint"]
    assert scheduler[:2] == ["dask", "scheduler"] and "8786" in scheduler

    worker = services["dask-cuda-worker"]
    args = worker["entrypoint"]
    assert args[:4] == ["dask", "cuda", "worker", "tcp://dask-scheduler:8786"]
    assert args[args.index("--nthreads") + 1] == "1"
    assert args[args.index("--resources") + 1] == "GPU=1"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]

    prefect_worker = services["prefect-worker"]
    args = prefect_worker["entrypoint"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert args[args.index("--pool") + 1] == "salaudit-gpu"
    assert args[args.index("--type") + 1] == "process"
    for name in ("prefect-worker", "dask-cuda-worker"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["PREFECT_SERVER_EPHEMERAL_ENABLED"] == "false"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        # the flow and the workers share the model cache
        assert f"salaudit-cache:{env['SALAUDIT_CACHE']}" in services[name]["volumes"]


def test_compose_commits_no_secret():
    """Credentials are ${VAR:-default} references, never literal values."""
    compose = load(INFRA / "compose.yaml")
    for env in walk(compose, "environment"):
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert str(value).startswith("${"), f"{key} has a literal value"


def k8s_by_name(kind: str, name: str) -> dict:
    (doc,) = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_k8s_dask_cluster():
    docs = k8s_documents()
    assert all(d["metadata"].get("namespace", "salaudit") == "salaudit" for d in docs)
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by hand"

    service = k8s_by_name("Service", "dask-scheduler")
    assert {p["port"] for p in service["spec"]["ports"]} == {8786, 8787}

    (worker,) = containers(k8s_by_name("Deployment", "dask-cuda-worker"))
    command = worker["command"] + worker["args"]
    assert command[:3] == ["dask", "cuda", "worker"]
    assert command[3] == "tcp://dask-scheduler.salaudit.svc.cluster.local:8786"
    assert command[command.index("--nthreads") + 1] == "1"
    assert command[command.index("--resources") + 1] == "GPU=1"
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1


def test_k8s_prefect_worker_and_pool_template():
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    (worker,) = containers(k8s_by_name("Deployment", "prefect-worker"))
    assert worker["image"].startswith("prefecthq/prefect:") and worker["image"].endswith(
        "-python3.11-kubernetes"
    )
    args = worker["command"] + worker["args"]
    assert args[args.index("--type") + 1] == "kubernetes"
    assert args[args.index("--pool") + 1] == "salaudit-k8s"
    mount = worker["volumeMounts"][0]["mountPath"]
    assert args[args.index("--base-job-template") + 1].startswith(mount + "/")
    rules = k8s_by_name("Role", "prefect-worker")["rules"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in rules)

    template = base_job_template()
    validate_base_job_template(template)  # what the Prefect server checks
    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    pools = {
        d["name"]: d["work_pool"]
        for d in load(INFRA / "prefect.yaml")["deployments"]
        if d["work_pool"]["name"] == "salaudit-k8s"
    }
    assert {"nightly-k8s-gpu", "nightly-k8s-dask"} <= set(pools)
    for name, pool in pools.items():
        assert set(pool["job_variables"]) <= set(props), f"{name}: unknown job variables"
        job = apply_values(template["job_configuration"], {**defaults, **pool["job_variables"]})
        (pod,) = job["job_manifest"]["spec"]["template"]["spec"]["containers"]
        gpus = pod["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == pool["job_variables"].get("gpus"), name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {e["name"] for e in pod["env"]}


def prefect_yaml() -> dict:
    from prefect.cli.deploy._models import PrefectYamlModel

    data = load(INFRA / "prefect.yaml")
    PrefectYamlModel.model_validate(data)
    return data


def test_prefect_yaml_deployments():
    from prefect.cli.deploy._models import RawScheduleConfig
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    deployments = {d["name"]: d for d in prefect_yaml()["deployments"]}
    pools = {d["work_pool"]["name"] for d in deployments.values()}
    assert {"salaudit-gpu", "salaudit-docker", "salaudit-k8s"} <= pools
    for name, d in deployments.items():
        assert d["concurrency_limit"]["limit"] == 1, name
        strategy = d["concurrency_limit"]["collision_strategy"]
        assert strategy == ("CANCEL_NEW" if name == "watch-checkpoints" else "ENQUEUE"), name
        for schedule in d.get("schedules", []):
            RawScheduleConfig.model_validate(schedule)
    assert deployments["nightly-gpu-box"]["schedules"][0]["cron"] == "0 2 * * *"
    assert deployments["nightly-compose"]["parameters"]["spec"]["cluster"] == (
        "tcp://dask-scheduler:8786"
    )

    docker = deployments["nightly-docker"]["work_pool"]["job_variables"]
    (request,) = docker["container_create_kwargs"]["device_requests"]
    assert request["driver"] == "nvidia" and request["capabilities"] == [["gpu"]]

    (trigger,) = _initialize_deployment_triggers(
        "checkpoint-audit", copy.deepcopy(deployments["checkpoint-audit"]["triggers"])
    )
    assert trigger.expect == {"salaudit.checkpoint.created"}
    assert trigger.parameters == {"checkpoint": "{{ event.payload.checkpoint }}"}
    watcher = deployments["watch-checkpoints"]
    assert watcher["entrypoint"] == "salaudit.flows.deploy:watch_checkpoints"
    # the watcher's events (resource salaudit.checkpoint.<file url>) match the trigger
    from prefect.events.schemas.events import Resource

    def announced(url: str) -> Resource:
        return Resource({"prefect.resource.id": f"salaudit.checkpoint.{url}"})

    prefix = watcher["parameters"]["prefix"].rstrip("/")
    assert trigger.match.includes([announced(f"{prefix}/epoch-7.pt")])
    assert not trigger.match.includes([announced("s3://elsewhere/epoch-7.pt")])
    assert watcher["schedules"][0]["interval"] > 0


def test_prefect_yaml_entrypoints_and_specs():
    """Each entrypoint is a Prefect flow taking the deployment's parameters, and each spec is a
    valid audit spec once {checkpoint} and {checkpoint_name} are filled in."""
    pytest.importorskip("salaudit.flows.deploy")
    from prefect import Flow

    from salaudit.pipeline.spec import parse_spec

    for d in prefect_yaml()["deployments"]:
        module, attr = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module), attr)
        assert isinstance(flow, Flow), d["entrypoint"]
        assert set(d["parameters"]) <= set(flow.parameters.properties), d["name"]
        if "spec" in d["parameters"]:
            text = json.dumps(d["parameters"]["spec"])
            text = text.replace("{checkpoint_name}", "epoch-7")
            text = text.replace("{checkpoint}", "s3://salaudit/checkpoints/epoch-7.pt")
            parse_spec(json.loads(text), where=d["name"])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of infra/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    return [tuple(ln.split(None, 1)) for ln in lines if ln and not ln.startswith("#")]


def test_dockerfile():
    steps = dockerfile_instructions()
    get = lambda kind: [arg for k, arg in steps if k == kind]  # noqa: E731
    assert get("FROM")[0].startswith("nvidia/cuda:") and "runtime" in get("FROM")[0]
    # each shell command of each RUN, as words
    commands = [shlex.split(c) for r in get("RUN") for c in r.split("&&")]
    apt = [w for c in commands if c[:2] == ["apt-get", "install"] for w in c]
    assert {"python3.11", "python3.11-venv"} <= set(apt)
    assert ["python3.11", "-m", "venv"] in [c[:3] for c in commands]
    installs = [c for c in commands if c[:2] == ["pip", "install"]]
    packages = [c for c in installs if c[2:] != ["--upgrade", "pip"]]
    assert [c for c in packages if c[-1] == "."], "salaudit itself is not installed"
    for c in packages:  # everything but pip itself installs against the pins
        assert "-c" in c and c[c.index("-c") + 1] == "constraints.txt", shlex.join(c)
    copied = [a.split() for a in get("COPY")]
    # the pins are copied (once, from the repository root) before any install
    assert [w for c in copied for w in c if w == "constraints.txt"] == ["constraints.txt"]
    assert any(c[-1] == "/etc/dask/salaudit.yaml" for c in copied)
    assert get("USER") and get("USER")[-1] not in ("root", "0")
    assert json.loads(get("ENTRYPOINT")[-1]) == ["salaudit"]
    assert any("SALAUDIT_CACHE=" in e for e in get("ENV"))


def test_image_dask_config_keeps_the_allocator():
    """The nanny of `dask cuda worker` must not set MALLOC_TRIM_THRESHOLD_ (torch 1.4x slower)."""
    import dask.config
    import distributed  # noqa: F401  (registers the defaults the file overrides)

    config = dask.config.collect(paths=[str(INFRA / "dask.yaml")], env={})
    merged = dask.config.merge(*dask.config.defaults, config)
    environ = merged["distributed"]["nanny"]["pre-spawn-environ"]
    assert "MALLOC_TRIM_THRESHOLD_" in environ and environ["MALLOC_TRIM_THRESHOLD_"] is None


def test_constraints_are_the_installed_set():
    """CI tests the environment it installed with `-c constraints.txt`; the image installs with
    the same file, so every pin must be what is installed here."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, pinned = line.split("==")
            pins[name.strip()] = pinned.strip()
    assert len(pins) > 100
    wrong = {}
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, f"constraints.txt pin, installed: {wrong}"
