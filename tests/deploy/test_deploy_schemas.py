"""deploy/ against the real schemas an API server would apply.

The ray.io kinds against KubeRay's own CustomResourceDefinitions (``../shared/data/
kuberay-crds`` beside the repository), the batch/v1 CronJob against Kubernetes' OpenAPI
schemas (the ``kubernetes-validate`` package, a dev extra). Types, enums, required fields,
and no unknown fields: an API server prunes those silently, so a typo simply vanishes.
"""

from __future__ import annotations

import copy
import functools

import pytest
import yaml
from jsonschema import Draft4Validator

from tests.deploy.test_deploy import DEPLOY, REPO, by_kind, manifests

CRDS = REPO.parent / "shared" / "data" / "kuberay-crds"
K8S_VERSION = "1.30"  # oldest Kubernetes the CronJob is checked against (timeZone is GA)
# The API server validates metadata as ObjectMeta, not with the CRD's schema: the fields
# the manifests use, strictly.
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {"type": "object", "additionalProperties": False, "required": ["name"],
               "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                              "labels": STRING_MAP, "annotations": STRING_MAP}}
CEL = "carries CEL rules (x-kubernetes-validations) this test cannot evaluate"


def strict(node: dict) -> dict:
    """An OpenAPI v3 (structural) schema node as a JSON Schema refusing unknown fields.

    ``x-kubernetes-preserve-unknown-fields`` keeps anything; a field with CEL rules is
    refused until someone checks its rules by hand and teaches this function about them.
    """
    if "x-kubernetes-validations" in node:
        return {"not": {}, "description": CEL}
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")
           and k not in ("nullable", "description")}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node:
        out["properties"] = {k: strict(v) for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = strict(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [strict(v) for v in node[key]]
    if node.get("type") == "object" and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict schema of every served version of every CRD."""
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay's CRDs are not at {CRDS} (shared/ beside the repository)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 3 MB of YAML
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = schema
    return schemas


def problems(doc: dict) -> list[str]:
    """Every way ``doc`` breaks its CRD's schema, one line each, sorted."""
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    assert schema, f"no CRD in {CRDS} for {doc['apiVersion']} {doc['kind']}"
    found = []
    for e in Draft4Validator(schema).iter_errors(doc):
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        found.append(f"{where}: {CEL if e.validator == 'not' else e.message}")
    return sorted(found)


KUBERAY = {name: doc for name, doc in manifests().items()
           if doc.get("apiVersion", "").startswith("ray.io/")}


def test_the_kuberay_manifests_are_all_there():
    assert {d["kind"] for d in KUBERAY.values()} == {"RayCluster", "RayJob", "RayCronJob"}


@pytest.mark.parametrize("name", sorted(KUBERAY))
def test_kuberay_manifest_matches_its_crd(name):
    assert problems(KUBERAY[name]) == []


def _cluster() -> dict:
    return copy.deepcopy(by_kind("RayCluster")[0])


def _typo_in_worker_group(d):
    d["spec"]["workerGroupSpecs"][0]["replica"] = 1


def _typo_in_the_pod(d):
    d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"


def _typo_in_metadata(d):
    d["metadata"]["lables"] = d["metadata"].pop("labels")


def _number_for_string(d):
    d["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # KubeRay wants "0"


def _string_for_number(d):
    d["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"


def _bad_enum(d):
    d["spec"]["authOptions"]["mode"] = "tokens"


def _missing_required(d):
    del d["spec"]["headGroupSpec"]


def _cel_guarded_field(d):
    d["spec"]["managedBy"] = "ray.io/kuberay-operator"


BROKEN = {  # what is done to the RayCluster -> the one problem it must cause
    _typo_in_worker_group: "spec.workerGroupSpecs.0: Additional properties are not allowed "
                           "('replica' was unexpected)",
    _typo_in_the_pod: "spec.headGroupSpec.template.spec.containers.0: Additional properties "
                      "are not allowed ('imagePullPolice' was unexpected)",
    _typo_in_metadata: "metadata: Additional properties are not allowed ('lables' was "
                       "unexpected)",
    _number_for_string: "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type "
                        "'string'",
    _string_for_number: "spec.workerGroupSpecs.0.maxReplicas: '8' is not of type 'integer'",
    _bad_enum: "spec.authOptions.mode: 'tokens' is not one of ['disabled', 'token']",
    _missing_required: "spec: 'headGroupSpec' is a required property",
    _cel_guarded_field: f"spec.managedBy: {CEL}",
}


@pytest.mark.parametrize("damage", BROKEN, ids=lambda f: f.__name__.strip("_"))
def test_a_broken_manifest_fails_naming_the_field(damage):
    doc = _cluster()
    damage(doc)
    assert problems(doc) == [BROKEN[damage]]


def test_preserve_unknown_fields_keeps_anything_and_only_there():
    schema = strict({"type": "object", "properties": {
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "typed": {"type": "object", "properties": {"a": {"type": "integer"}}}}})
    validator = Draft4Validator(schema)
    assert validator.is_valid({"free": {"anything": [1, {"goes": True}]}, "typed": {"a": 1}})
    assert not validator.is_valid({"typed": {"a": 1, "b": 2}})
    assert not validator.is_valid({"extra": 1})


def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate",
                               reason="kubernetes-validate is a dev extra: pip install -e .[dev]")


def test_cronjob_matches_the_kubernetes_schema():
    kv = kubernetes_validate()
    for doc in by_kind("CronJob"):
        assert kv.validate(doc, K8S_VERSION, strict=True)
        assert kv.validate(doc, kv.utils.latest_version(), strict=True)


@pytest.mark.parametrize("path, key, value", [
    (("spec", "jobTemplate", "spec", "template", "spec", "containers", 0), "evn", []),
    (("spec",), "concurencyPolicy", "Forbid"),  # a typo of a real field
    (("spec", "jobTemplate", "spec"), "backoffLimit", "2"),
])
def test_a_broken_cronjob_fails(path, key, value):
    kv = kubernetes_validate()
    doc = copy.deepcopy(by_kind("CronJob")[0])
    node = doc
    for step in path:
        node = node[step]
    node[key] = value
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_every_yaml_in_deploy_is_checked_against_a_schema():
    checked = set(KUBERAY) | {n for n, d in manifests().items() if d.get("kind") == "CronJob"}
    launcher = {n for n, d in manifests().items() if "cluster_name" in d}  # Ray's own format
    assert set(manifests()) == checked | launcher
    assert {n.split("#")[0] for n in launcher} == {"cluster-aws.yaml"}
    assert (DEPLOY / "cluster-aws.yaml").is_file()
