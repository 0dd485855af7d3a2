"""The deployment files under cluster/, checked offline against the schemas their consumers use.

- KubeRay manifests (RayCluster, RayJob, RayCronJob) against KubeRay v1.7.0's own CRD schemas,
  shipped in tests/data/kuberay-crds-v1.7.0/, with unknown fields rejected as `kubectl apply`
  (strict field validation) rejects them.
- The `ray up` config against ray/autoscaler/ray-schema.json from the installed Ray wheel.
- The batch/v1 CronJob by hand (no CRD exists for built-in kinds here).
- Every `finetune run|nightly|submit <job>` named anywhere under cluster/ against the job schema.

No Ray is started: everything here runs in a few seconds.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from finetune import _compat
from finetune.errors import JobError
from finetune.job import load_job

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds-v1.7.0"
SHARED_CRDS = REPO.parent / "shared" / "kuberay-crds-v1.7.0"  # the published copy, where a checkout has it
IMAGE_ROOT = "/app"  # where cluster/Dockerfile puts the repository; job paths may be given from it
IMAGE_REPOSITORY = "ghcr.io/example/finetune"

KUBERAY_FILES = ["raycluster.yaml", "rayjob.yaml", "raycronjob.yaml"]
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
# Files whose purpose is to run a job: each must name at least one `finetune run <job file>` (or
# `finetune nightly`, or `finetune submit`, which runs one on a cluster).
ENTRYPOINT_FILES = ["rayjob.yaml", "raycronjob.yaml", "nightly-cronjob.yaml"]
# Files that retrain nightly: each must run `finetune nightly`, or `finetune submit --nightly`.
NIGHTLY_FILES = ["raycronjob.yaml", "nightly-cronjob.yaml"]
# `finetune run jobs/x.yaml` or `python -m finetune run jobs/x.yaml`, options allowed in between.
FINETUNE_RUN = re.compile(
    r"(?:python(?:3(?:\.\d+)?)? -m )?finetune (?:run|nightly|submit) (?:--?\S+ (?:\S+ )?)*?(\S+\.ya?ml)(?!\S)")
FINETUNE_VALIDATE = re.compile(FINETUNE_RUN.pattern.replace("(?:run|nightly|submit)", "validate"))



# --- reading ------------------------------------------------------------------------------------


def load_documents(path: Path) -> list[Any]:
    """Every YAML document of a file (anchors and aliases resolved, as kubectl resolves them)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(name: str) -> dict:
    documents = load_documents(CLUSTER / name)
    assert len(documents) == 1, f"cluster/{name}: expected one YAML document, found {len(documents)}"
    return documents[0]


def walk_strings(node: Any) -> Iterator[str]:
    """Every string value (and mapping key) inside parsed YAML, at any depth."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def finetune_run_jobs(text: str) -> list[str]:
    """The job files that `finetune run` commands in `text` name."""
    return FINETUNE_RUN.findall(text)


def repo_path(job: str) -> Path:
    """A job path as the cluster sees it (relative to the working dir, or under /app in the image)
    mapped to the checkout."""
    if job.startswith(IMAGE_ROOT + "/"):
        job = job[len(IMAGE_ROOT) + 1:]
    assert not job.startswith("/"), f"{job}: expected a path relative to the repository or under {IMAGE_ROOT}/"
    return REPO / job


# --- KubeRay CRD schemas as JSON Schema -----------------------------------------------------------

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

# Kubernetes validates metadata separately from the CRD schema (where it is just `type: object`);
# this is the part of ObjectMeta a manifest may set, with the name rules of a DNS-1123 label.
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def kubernetes_to_jsonschema(schema: Any) -> Any:
    """A Kubernetes structural (OpenAPI v3) schema as plain JSON Schema, with the semantics the API
    server gives its `x-kubernetes-*` extensions and conventions:

    - `x-kubernetes-int-or-string: true`: an integer or a string (a quantity such as 4 or "500m").
    - an object with `properties` and no `additionalProperties` rejects unknown fields, unless
      `x-kubernetes-preserve-unknown-fields: true` keeps them (kubectl's strict field validation);
    - `x-kubernetes-embedded-resource: true`: apiVersion, kind and metadata are allowed;
    - `nullable: true`: null is allowed;
    - `format: int32|int64`: the integer's range.
    The list extensions (`x-kubernetes-list-type: map|set`) are checked by the validator below.
    """
    if isinstance(schema, list):
        return [kubernetes_to_jsonschema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            result[key] = {name: kubernetes_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            result[key] = kubernetes_to_jsonschema(value)
        else:
            result[key] = copy.deepcopy(value)

    if result.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if result.get("x-kubernetes-embedded-resource"):
        properties = result.setdefault("properties", {})
        properties.setdefault("apiVersion", {"type": "string"})
        properties.setdefault("kind", {"type": "string"})
        properties.setdefault("metadata", {"type": "object"})
    if (
        result.get("type") == "object"
        and "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    if result.get("type") == "integer" and result.get("format") in ("int32", "int64"):
        low, high = INT32 if result["format"] == "int32" else INT64
        result.setdefault("minimum", low)
        result.setdefault("maximum", high)
    if result.pop("nullable", False):
        return {"anyOf": [result, {"type": "null"}]}
    return result


def _list_map_keys(validator, keys, instance, schema):
    """`x-kubernetes-list-type: map`: no two items share the same values of the key fields (two
    containers named alike, two env entries with one name...)."""
    if schema.get("x-kubernetes-list-type") != "map" or not validator.is_type(instance, "array"):
        return
    seen = {}
    for index, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            shown = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
            yield jsonschema.ValidationError(f"items {seen[key]} and {index} share the map key {shown}")
        seen[key] = index


def _list_type(validator, list_type, instance, schema):
    """`x-kubernetes-list-type: set`: the items are unique."""
    if list_type == "set" and validator.is_type(instance, "array"):
        yield from validator.descend(instance, {"uniqueItems": True})


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,  # OpenAPI v3.0 schemas are JSON Schema draft 4 with extensions
    {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-list-type": _list_type},
)


def crd_text(kind: str) -> str:
    return gzip.decompress((CRDS / f"{CRD_FILES[kind]}.gz").read_bytes()).decode()


@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason=f"no published copy at {SHARED_CRDS} to compare with")
@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_the_shipped_crds_are_the_published_ones(kind):
    assert crd_text(kind) == (SHARED_CRDS / CRD_FILES[kind]).read_text()


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, api_version: str) -> jsonschema.Validator:
    """A validator for one kind and version from KubeRay's CRD."""
    # The CRDs are large (up to 1.4 MB); libyaml's loader reads them about 7 times faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(crd_text(kind), Loader=loader)
    group, _, version = api_version.partition("/")
    assert crd["spec"]["group"] == group, f"{kind}: expected group {crd['spec']['group']}, got {group}"
    assert crd["spec"]["names"]["kind"] == kind
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions, f"{kind}: version {version} not in the CRD ({', '.join(versions)})"
    assert versions[version].get("served"), f"{kind} {version} is not served"
    schema = kubernetes_to_jsonschema(versions[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    KubernetesValidator.check_schema(schema)
    return KubernetesValidator(schema)


def kuberay_errors(document: dict) -> list[str]:
    """Every schema violation of a KubeRay manifest, one line each with its field path."""
    kind, api_version = document.get("kind"), document.get("apiVersion")
    if kind not in CRD_FILES:
        return [f"kind: expected one of {', '.join(CRD_FILES)}, got {kind!r}"]
    if not isinstance(api_version, str) or "/" not in api_version:
        return [f"apiVersion: expected group/version, got {api_version!r}"]
    errors = crd_validator(kind, api_version).iter_errors(document)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors)


# --- KubeRay manifests ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_manifest_matches_its_crd(name):
    document = load_one(name)
    assert document["apiVersion"] == "ray.io/v1"
    assert document["kind"] == {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob",
                                "raycronjob.yaml": "RayCronJob"}[name]
    assert kuberay_errors(document) == []


def _set(document: dict, path: str, value: Any) -> dict:
    """A copy of `document` with the value at a dotted path (list indices as numbers) replaced."""
    result = copy.deepcopy(document)
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = result
    for key in parents:
        node = node[key]
    node[last] = value
    return result


# Broken variants of the real manifests, each of which the API server would refuse: the file, the
# field changed, its new value, and the start of the error expected (field path, then message).
BROKEN = [
    pytest.param("raycluster.yaml", "spec.headGroupSpec.rayStartParams.num-cpus", 0,
                 "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
                 id="rayStartParams-value-not-a-string"),
    pytest.param("raycluster.yaml", "spec.workerGroupSpecs.0.maxReplica", 8,
                 "spec.workerGroupSpecs.0: Additional properties are not allowed ('maxReplica'",
                 id="unknown-field-typo"),
    pytest.param("raycluster.yaml", "spec.workerGroupSpecs.0.minReplicas", "1",
                 "spec.workerGroupSpecs.0.minReplicas: '1' is not of type 'integer'",
                 id="replicas-as-string"),
    pytest.param("raycluster.yaml",
                 "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.memory", 1.5,
                 "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.memory: 1.5 is not valid",
                 id="quantity-neither-int-nor-string"),
    pytest.param("raycluster.yaml",
                 "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.cpu", "four",
                 "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.cpu: 'four' does not match",
                 id="quantity-not-a-quantity"),
    pytest.param("raycluster.yaml", "spec.headGroupSpec.template.spec.containers.0.env.2.name",
                 "AWS_ACCESS_KEY_ID",
                 "spec.headGroupSpec.template.spec.containers.0.env: items 1 and 2 share the map key",
                 id="duplicate-env-name"),
    pytest.param("raycluster.yaml", "spec.autoscalerOptions.upscalingMode", "Fast",
                 "spec.autoscalerOptions.upscalingMode: 'Fast' is not one of", id="enum"),
    pytest.param("rayjob.yaml", "spec.shutdownAfterJobFinishes", "yes",
                 "spec.shutdownAfterJobFinishes: 'yes' is not of type 'boolean'", id="boolean-as-string"),
    pytest.param("rayjob.yaml", "spec.ttlSecondsAfterFinished", 2**40,
                 "spec.ttlSecondsAfterFinished: 1099511627776 is greater than the maximum",
                 id="int32-overflow"),
    pytest.param("rayjob.yaml", "spec.runtimeEnv", "e30=",
                 "spec: Additional properties are not allowed ('runtimeEnv'", id="v1alpha1-only-field"),
    pytest.param("raycronjob.yaml", "spec.concurrencyPolicy", "Forbid",
                 "spec: Additional properties are not allowed ('concurrencyPolicy'",
                 id="raycronjob-has-no-concurrency-policy"),
    pytest.param("raycronjob.yaml", "spec.jobTemplate.rayClusterSpec.workerGroupSpecs.0.template", "cpu",
                 "spec.jobTemplate.rayClusterSpec.workerGroupSpecs.0.template: 'cpu' is not of type 'object'",
                 id="template-not-an-object"),
    pytest.param("raycronjob.yaml", "metadata.name", "Finetune_Nightly",
                 "metadata.name: 'Finetune_Nightly' does not match", id="metadata-name-not-dns-label"),
]


@pytest.mark.parametrize("name, path, value, expected", BROKEN)
def test_kuberay_validation_rejects_a_broken_manifest(name, path, value, expected):
    """The check cannot pass vacuously: each broken variant fails, at the field that is wrong."""
    broken = _set(load_one(name), path, value)
    errors = kuberay_errors(broken)
    assert errors, f"{name} with {path}={value!r} should not validate"
    assert any(error.startswith(expected) for error in errors), errors


@pytest.mark.parametrize("name, path", [
    ("raycluster.yaml", "headGroupSpec"),
    ("raycronjob.yaml", "jobTemplate"),
    ("raycronjob.yaml", "schedule"),
])
def test_kuberay_validation_rejects_a_missing_required_field(name, path):
    broken = load_one(name)
    del broken["spec"][path]
    assert any(f"'{path}' is a required property" in e for e in kuberay_errors(broken))


def test_kubernetes_extensions_become_json_schema():
    """The helper on its own: int-or-string, strict objects, preserved unknown fields, nullable."""
    quantity = KubernetesValidator(kubernetes_to_jsonschema({"x-kubernetes-int-or-string": True}))
    assert quantity.is_valid(4) and quantity.is_valid("500m")
    assert not quantity.is_valid(1.5) and not quantity.is_valid(True) and not quantity.is_valid([1])

    strict = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert not KubernetesValidator(kubernetes_to_jsonschema(strict)).is_valid({"a": "x", "b": 1})
    kept = {**strict, "x-kubernetes-preserve-unknown-fields": True}
    assert KubernetesValidator(kubernetes_to_jsonschema(kept)).is_valid({"a": "x", "b": 1})

    nullable = KubernetesValidator(kubernetes_to_jsonschema({"type": "string", "nullable": True}))
    assert nullable.is_valid(None) and nullable.is_valid("x") and not nullable.is_valid(1)

    listed = {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}},
              "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    validator = KubernetesValidator(kubernetes_to_jsonschema(listed))
    assert validator.is_valid([{"name": "a"}, {"name": "b"}])
    assert not validator.is_valid([{"name": "a"}, {"name": "a"}])


def _cluster_spec(document: dict) -> dict:
    spec = document["spec"]
    return spec.get("rayClusterSpec") or spec.get("jobTemplate", {}).get("rayClusterSpec") or spec


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_cluster_layout(name):
    """What the brief of these files promises: a CPU-less head, a CPU and a GPU worker group that
    autoscale, the project's image, and S3 credentials from a Secret on every Ray pod."""
    import ray

    cluster = _cluster_spec(load_one(name))
    assert cluster["rayVersion"] == ray.__version__, "rayVersion must match the Ray in the image"
    assert cluster.get("enableInTreeAutoscaling") is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"

    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # `finetune run` refuses to start when no trial fits in the cluster as it is at start.
    assert groups["cpu"]["minReplicas"] >= 1

    gpu_pod = groups["gpu"]["template"]["spec"]
    limits = gpu_pod["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert any(t.get("key") == "nvidia.com/gpu" for t in gpu_pod.get("tolerations", []))

    for group in [cluster["headGroupSpec"], *groups.values()]:
        for container in group["template"]["spec"]["containers"]:
            assert container["image"].startswith(IMAGE_REPOSITORY + ":"), container["image"]
            env = {e["name"]: e for e in container.get("env", [])}
            # The clusters that nightly jobs run on also get the registry's signing key.
            signing = ("FINETUNE_SIGNING_KEY",) if name != "rayjob.yaml" else ()
            for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", *signing):
                assert "secretKeyRef" in env[variable].get("valueFrom", {}), (
                    f"{name}: {variable} must come from a Secret, not a literal value")
                assert "value" not in env[variable]


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml"])
def test_rayjob_settings(name):
    document = load_one(name)
    spec = document["spec"] if name == "rayjob.yaml" else document["spec"]["jobTemplate"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0
    assert spec["backoffLimit"] >= 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    check_runtime_env(runtime_env, f"{name} runtimeEnvYAML")
    assert runtime_env["env_vars"] == load_one("runtime_env.yaml")["env_vars"], (
        "runtimeEnvYAML's env_vars should match cluster/runtime_env.yaml")


def test_raycronjob_schedule():
    spec = load_one("raycronjob.yaml")["spec"]
    assert len(spec["schedule"].split()) == 5
    assert isinstance(spec["suspend"], bool)
    assert spec["timeZone"]


# --- runtime_env.yaml -----------------------------------------------------------------------------

def check_runtime_env(runtime_env: Any, source: str) -> None:
    """Ray's own validation (RuntimeEnv's constructor checks each field's type), plus this project's
    rules: fields Ray knows (it accepts unknown ones as plugin names, so a typo would pass), string
    env vars, and no package installs (the image has them)."""
    from ray.runtime_env import RuntimeEnv

    assert isinstance(runtime_env, dict), f"{source}: expected a mapping"
    unknown = set(runtime_env) - set(RuntimeEnv.known_fields)
    assert not unknown, f"{source}: unknown runtime_env fields {sorted(unknown)}"
    RuntimeEnv(**runtime_env)
    env_vars = runtime_env.get("env_vars", {})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()), env_vars
    installs = {"pip", "conda", "uv"} & set(runtime_env)
    assert not installs, f"{source}: {sorted(installs)} would reinstall what the image already carries"


def test_runtime_env_file():
    runtime_env = load_one("runtime_env.yaml")
    check_runtime_env(runtime_env, "cluster/runtime_env.yaml")
    assert runtime_env["env_vars"]["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert float(runtime_env["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) > 0
    excludes = runtime_env["excludes"]
    assert all(isinstance(e, str) for e in excludes)
    assert "runs/" in excludes
    assert any(e.strip("/") == ".venv" for e in excludes)
    assert any(e.strip("/") == ".git" for e in excludes)


@pytest.mark.parametrize("broken", [
    {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": 2}},   # Ray wants strings
    {"excludes": "runs/"},                       # a list, not one pattern
    {"env_var": {"A": "1"}},                     # a typo Ray itself would accept as a plugin name
    {"pip": ["tensorflow==2.21.0"]},             # the image carries it
])
def test_runtime_env_check_rejects(broken):
    with pytest.raises((TypeError, AssertionError)):
        check_runtime_env(broken, "broken")


def test_working_dir_upload_fits(tmp_path):
    """Package the checkout the way `ray job submit --working-dir .` does, with the excludes alone
    (no .gitignore help): under Ray's 512 MiB limit, without runs/ or .venv/, with the job files."""
    packaging = _compat.working_dir_packaging()
    import zipfile

    excludes = load_one("runtime_env.yaml")["excludes"]
    package = tmp_path / "working_dir.zip"
    packaging.create_package(str(REPO), package, include_gitignore=False, excludes=excludes)
    assert package.stat().st_size < packaging.GCS_STORAGE_MAX_SIZE
    names = zipfile.ZipFile(package).namelist()
    assert not [n for n in names if n.split("/")[0] in ("runs", ".venv", ".git")]
    assert "jobs/digits-cluster.yaml" in names and "finetune/__init__.py" in names


# --- entrypoints -----------------------------------------------------------------------------------


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.iterdir() if p.is_file())


def entrypoint_jobs(path: Path) -> list[str]:
    """The job files a cluster file runs: `finetune run <job>` in every string of a YAML file
    (comments are not commands); in any other file (the Dockerfile), `finetune run` or
    `finetune validate` anywhere in its text."""
    if path.suffix in (".yaml", ".yml"):
        return [job for text in walk_strings(load_documents(path)) for job in finetune_run_jobs(text)]
    text = path.read_text()
    return finetune_run_jobs(text) + FINETUNE_VALIDATE.findall(text)


def test_entrypoint_pattern():
    assert finetune_run_jobs("finetune run jobs/a.yaml") == ["jobs/a.yaml"]
    assert finetune_run_jobs("python -m finetune run --verbose /app/jobs/b.yaml --set x=1") == ["/app/jobs/b.yaml"]
    assert finetune_run_jobs("ray job submit -- finetune run --address auto jobs/c.yml") == ["jobs/c.yml"]
    assert finetune_run_jobs("finetune validate jobs/a.yaml") == []
    assert finetune_run_jobs("finetune run jobs/a.yaml.bak") == []
    assert finetune_run_jobs("finetune nightly --date 2026-01-01 jobs/n.yaml") == ["jobs/n.yaml"]
    assert finetune_run_jobs("exec finetune submit jobs/n.yaml --nightly --address x") == ["jobs/n.yaml"]


@pytest.mark.parametrize("name", ENTRYPOINT_FILES)
def test_files_that_run_a_job_name_one(name):
    assert entrypoint_jobs(CLUSTER / name), f"cluster/{name}: no `finetune run <job>.yaml` found"


@pytest.mark.parametrize("path", cluster_files(), ids=lambda p: p.name)
def test_every_entrypoint_names_a_valid_cluster_job(path):
    """Each job a cluster file runs exists in the repository, validates, and stores its runs where
    every node can reach them (a URI, not a local folder)."""
    for job in entrypoint_jobs(path):
        job_file = repo_path(job)
        assert job_file.is_file(), f"{path.name}: {job} does not exist in the repository"
        try:
            loaded = load_job(job_file)
        except JobError as error:
            pytest.fail(f"{path.name}: {job} does not validate:\n{error}")
        assert "://" in loaded.storage_path and not loaded.storage_path.startswith("file://"), (
            f"{job}: storage_path {loaded.storage_path!r} is local; a multi-node run needs object storage")
        if loaded.registers or loaded.model.base.startswith("registry:"):
            path = loaded.registry.path if loaded.registry else None
            assert path and "://" in path and not path.startswith("file://"), (
                f"{job}: registry {path!r} is not object storage; every node reads the registry")


@pytest.mark.parametrize("name", NIGHTLY_FILES)
def test_nightly_files_run_finetune_nightly(name):
    """The nightly schedules call `finetune nightly` (directly, or through `finetune submit
    --nightly`), whose run ids make a repeated night do nothing."""
    texts = list(walk_strings(load_documents(CLUSTER / name)))
    assert any(re.search(r"finetune nightly \S+\.yaml", t) or re.search(r"finetune submit \S+\.yaml --nightly", t)
               for t in texts), f"cluster/{name}: no `finetune nightly` entrypoint"


def test_cluster_yaml_files_hold_one_document_each():
    names = sorted(p.name for p in CLUSTER.glob("*.yaml"))
    assert set(KUBERAY_FILES + ENTRYPOINT_FILES + ["runtime_env.yaml", "ray-up-aws.yaml"]) <= set(names)
    for name in names:
        assert isinstance(load_one(name), dict), name


# --- the nightly CronJob (batch/v1) ----------------------------------------------------------------


def test_nightly_cronjob():
    cronjob = load_one("nightly-cronjob.yaml")
    assert cronjob["apiVersion"] == "batch/v1"
    assert cronjob["kind"] == "CronJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cronjob["metadata"]["name"])
    # A CronJob name longer than 52 characters cannot create its Jobs.
    assert len(cronjob["metadata"]["name"]) <= 52

    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5, spec["schedule"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    [container] = pod["containers"]
    assert container["image"].startswith(IMAGE_REPOSITORY + ":")

    script = " ".join(container.get("command", []) + container.get("args", []))
    words = shlex.split(script.replace(";", " "))
    assert words[words.index("finetune") + 1] == "submit" and "--nightly" in words
    options = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--") and w != "--nightly"}
    # One submission per day: `finetune submit --nightly` names it nightly-<job>-<UTC date>, and the
    # job server refuses a second one; no fixed --submission-id here.
    assert "--submission-id" not in options
    # The standing RayCluster's head service: <RayCluster name>-head-svc, dashboard port 8265.
    head = load_one("raycluster.yaml")["metadata"]["name"] + "-head-svc"
    assert options["--address"] == f"http://{head}:8265"
    assert repo_path(options["--runtime-env"]).is_file(), options["--runtime-env"]


# --- ray up ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def ray_up_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def ray_up_errors(config: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(ray_up_schema())(ray_up_schema())
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(config))


def test_ray_up_config_matches_rays_schema():
    assert ray_up_errors(load_one("ray-up-aws.yaml")) == []


@pytest.mark.parametrize("path, value, expected", [
    ("available_node_types.cpu_worker.resources.CPU", "four",
     "available_node_types.cpu_worker.resources.CPU: 'four' is not of type 'integer'"),
    ("available_node_types.gpu_worker.resources.GPU", 0.5,
     "available_node_types.gpu_worker.resources.GPU: 0.5 is not of type 'integer'"),
    ("max_worker", 10, "<root>: Additional properties are not allowed ('max_worker'"),
    ("docker.image_name", "x", "docker: Additional properties are not allowed ('image_name'"),
    ("available_node_types.head.min_worker", 0,
     "available_node_types.head: Additional properties are not allowed ('min_worker'"),
    ("provider", {"region": "us-west-2"}, "provider: 'type' is a required property"),
])
def test_ray_up_validation_rejects_a_broken_config(path, value, expected):
    broken = _set(load_one("ray-up-aws.yaml"), path, value)
    errors = ray_up_errors(broken)
    assert errors, f"ray-up-aws.yaml with {path}={value!r} should not validate"
    assert any(e.startswith(expected) for e in errors), errors


def test_ray_up_cluster_layout():
    """The checks `ray up` adds to the schema, and the node types these files promise."""
    config = load_one("ray-up-aws.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= config["max_workers"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials' workers belong on worker nodes"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    # EC2's GPU instance families are g* and p* (g5.xlarge, p4d.24xlarge...).
    gpu = [t for t in workers.values() if re.match(r"[gp]\d", t["node_config"]["InstanceType"])]
    cpu = [t for t in workers.values() if t not in gpu]
    assert gpu and cpu, "expected a CPU and a GPU worker node type"
    assert any(t.get("min_workers", 0) >= 1 for t in cpu), "`finetune run` needs a CPU worker at start"
    assert config["docker"]["image"].startswith(IMAGE_REPOSITORY + ":")
    for node_type in gpu:
        assert node_type.get("docker", {}).get("worker_image", "").startswith(IMAGE_REPOSITORY + ":")


def test_ray_up_config_prepares_like_ray_up():
    """Ray's own preparation (defaults merged, docker and worker counts checked) and validation,
    as `ray up` runs them before it contacts AWS."""
    util = _compat.ray_up_config_util()
    config = load_one("ray-up-aws.yaml")
    prepared = util.prepare_config(copy.deepcopy(config))
    util.validate_config(prepared)
    assert set(prepared["available_node_types"]) == set(config["available_node_types"])


# --- the image --------------------------------------------------------------------------------------


def test_dockerfile_matches_the_installed_stack():
    """The Dockerfile builds on the Ray release and Python the project pins, installs the pinned
    TensorFlow, and installs this package."""
    import ray

    text = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    assert args["RAY_VERSION"] == ray.__version__
    assert args["RAY_PLATFORM"] == "cpu"
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{RAY_PLATFORM\}$", text, flags=re.M)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"tensorflow=={args["TENSORFLOW_VERSION"]}"' in pyproject
    assert 'tensorflow[and-cuda]==${TENSORFLOW_VERSION}' in text
    assert re.search(r"^COPY .*\. /app$", text, flags=re.M) and "pip install --no-cache-dir /app" in text
    # The build validates the cluster job, so a broken job file fails the build, not the first run.
    assert entrypoint_jobs(CLUSTER / "Dockerfile") == ["jobs/digits-cluster.yaml"]
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv/", "runs/", ".git/"} <= set(ignore)
