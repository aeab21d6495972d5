"""deploy/: every manifest parses, has the fields its kind needs, and runs a real command."""

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
IMAGE_ROOT = "/app/"  # WORKDIR of deploy/Dockerfile: the repository root inside the image


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            docs[f"{path.name}#{i}"] = doc
    return docs


def by_kind(kind: str) -> list[dict]:
    found = [d for d in manifests().values() if d.get("kind") == kind]
    assert found, f"no {kind} in deploy/"
    return found


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip()[0] == "#"]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def ray_version() -> str:
    args = [a for i, a in dockerfile() if i == "ARG" and a.startswith("RAY_VERSION=")]
    return args[0].split("=", 1)[1]


def check_pod(pod: dict, gpu: bool) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["image"].endswith("/synthset:0.1.0")
    limits = container["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == gpu
    if gpu:
        assert limits["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]


def check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray_version()
    assert spec["authOptions"]["mode"] == "token"  # Jobs API and GCS want the token
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    check_pod(head["template"]["spec"], gpu=False)
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        check_pod(group["template"]["spec"], gpu=True)


def check_cron(schedule: str) -> None:
    assert len(schedule.split()) == 5, schedule


def entrypoints() -> list[str]:
    commands = [d["spec"]["entrypoint"] for d in by_kind("RayJob")]
    commands += [d["spec"]["jobTemplate"]["entrypoint"] for d in by_kind("RayCronJob")]
    for d in by_kind("CronJob"):
        for c in d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
            commands.append(shlex.join(c.get("command", []) + c.get("args", [])))
    return commands


def test_every_manifest_parses_and_names_its_kind():
    docs = manifests()
    assert {d.get("kind", "cluster-launcher") for d in docs.values()} == {
        "RayCluster", "RayJob", "RayCronJob", "CronJob", "cluster-launcher"}
    for name, doc in docs.items():
        if "kind" in doc:
            assert doc["apiVersion"] and doc["metadata"]["name"], name
    for path in DEPLOY.glob("*.json"):
        json.loads(path.read_text())


def test_raycluster_has_an_autoscaling_gpu_group():
    for doc in by_kind("RayCluster"):
        assert doc["apiVersion"] == "ray.io/v1"
        check_ray_cluster_spec(doc["spec"])
        assert doc["spec"]["workerGroupSpecs"][0]["minReplicas"] == 0  # scales to zero


def test_rayjob_and_raycronjob():
    for doc in by_kind("RayJob"):
        spec = doc["spec"]
        assert doc["apiVersion"] == "ray.io/v1" and spec["entrypoint"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
        check_ray_cluster_spec(spec["rayClusterSpec"])
    for doc in by_kind("RayCronJob"):
        spec = doc["spec"]
        assert doc["apiVersion"] == "ray.io/v1"
        check_cron(spec["schedule"])
        assert spec["jobTemplate"]["entrypoint"]
        check_ray_cluster_spec(spec["jobTemplate"]["rayClusterSpec"])
    assert "RayCronJob=true" in (DEPLOY / "raycronjob.yaml").read_text()  # the alpha gate


def test_portable_cronjob_submits_to_the_standing_cluster():
    (doc,) = by_kind("CronJob")
    assert doc["apiVersion"] == "batch/v1"
    check_cron(doc["spec"]["schedule"])
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    check_pod(pod, gpu=False)
    args = pod["containers"][0]["args"]
    (cluster,) = by_kind("RayCluster")
    assert args[args.index("--address") + 1] == \
        f"http://{cluster['metadata']['name']}-head-svc:8265"
    # the token from the Secret KubeRay keeps for that cluster: authOptions.secretName if
    # set, else one named after the cluster; its key is auth_token
    auth = cluster["spec"]["authOptions"]
    secret = auth.get("secretName") or cluster["metadata"]["name"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == \
        {"name": secret, "key": "auth_token"}


def test_cluster_launcher_for_aws_gpus():
    (doc,) = [d for d in manifests().values() if "cluster_name" in d]
    assert doc["provider"]["type"] == "aws" and doc["provider"]["region"]
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    workers = [t for name, t in types.items() if name != doc["head_node_type"]]
    assert workers and doc["max_workers"] >= max(t["max_workers"] for t in workers)
    for t in workers:
        assert 0 <= t["min_workers"] <= t["max_workers"]
        assert re.match(r"(g|p)\d", t["node_config"]["InstanceType"])  # a GPU family
    for t in types.values():
        assert "IamInstanceProfile" in t["node_config"]  # credentials from a role
    assert doc["docker"]["image"].endswith("/synthset:0.1.0")


def test_dockerfile_cuda_base_project_installed_non_root():
    steps = dockerfile()
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvidia/cuda:")
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert "pip install ." in runs and "torch" in runs
    for instruction, args in steps:
        if instruction == "COPY":
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), source
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [a for i, a in steps if i == "WORKDIR"][-1] == IMAGE_ROOT.rstrip("/")


def test_no_credentials_in_deploy():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|secretAccessKey|password\s*:",
                         re.I)
    for path in DEPLOY.iterdir():
        assert not pattern.search(path.read_text()), path.name


@pytest.mark.parametrize("command", entrypoints())
def test_entrypoints_run_a_real_command_on_a_real_job(command):
    argv = shlex.split(command)
    assert argv[0] == "synthset", command
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on a bad command
    assert args.command in ("run", "submit", "plan")
    job = args.job.replace(IMAGE_ROOT, "", 1) if args.job.startswith(IMAGE_ROOT) else args.job
    assert job.startswith("jobs/") and (REPO / job).is_file(), job
    spec = load_spec(str(REPO / job), args.overrides, args.date)
    assert spec.output.path.startswith("s3://")  # cluster runs write to object storage
    assert "{" not in spec.output.path  # every placeholder filled
    assert os.path.basename(spec.output.path)
