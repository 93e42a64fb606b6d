"""Offline checks of a KubeRay manifest (``ray.io/v1`` RayJob or RayCluster), before ``kubectl apply``.

With ``--crd``, the manifest is validated against the CRD's ``openAPIV3Schema`` the way the API server judges it
(a JSON-schema validator needs three adjustments for that: ``null`` values pruned, ``required`` keys that have a
default not required, unknown fields refused). With or without it, what the schema cannot say: the operator's
own rules used here, the ``rayStartParams`` through Ray's ``ray start`` parser, a search entrypoint through the
search's own parser, ``rayVersion`` against this machine's Ray, and storage that a retry's new cluster finds.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

from ..errors import ConfigError, first_line
from .storage import STORAGE_ENV

KINDS = ("RayJob", "RayCluster")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")  # ray-operator's validation.go


# --- the schema ------------------------------------------------------------------------------------------------

def load_crd_schema(path: str | Path) -> tuple[str, dict]:
    """(kind, openAPIV3Schema) of a schema file (JSON, as in ../shared/schemas) or of a CRD exported from a cluster
    (``kubectl get crd rayjobs.ray.io -o yaml``)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)  # JSON: much faster
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"--crd {path}: cannot be read ({first_line(err)})") from None
    if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
        versions = {v.get("name"): v for v in doc.get("spec", {}).get("versions", [])}
        if "v1" not in versions:
            raise ConfigError(f"--crd {path}: the CRD has no v1 version")
        return doc["spec"]["names"]["kind"], versions["v1"]["schema"]["openAPIV3Schema"]
    spec = (doc or {}).get("properties", {}).get("spec", {}).get("properties", {}) if isinstance(doc, dict) else {}
    if "entrypoint" in spec:
        return "RayJob", doc
    if "headGroupSpec" in spec:
        return "RayCluster", doc
    raise ConfigError(f"--crd {path}: neither a RayJob/RayCluster CRD nor its openAPIV3Schema")


def as_api_server_judges(schema):
    """The schema with the two adjustments a JSON-schema validator needs on the schema's side: a required key
    that has a default is filled in by the API server, and unknown fields are refused (strict decoding)."""
    if isinstance(schema, list):
        return [as_api_server_judges(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):  # names -> schemas, not a schema itself
            out[key] = {name: as_api_server_judges(sub) for name, sub in value.items()}
        else:
            out[key] = as_api_server_judges(value)
    props = out.get("properties")
    if isinstance(props, dict):
        if "required" in out:
            out["required"] = [k for k in out["required"] if "default" not in props.get(k, {})]
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def without_nulls(value):
    """Kubernetes prunes null values before defaulting and validation."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value if v is not None]
    return value


def schema_problem(manifest: dict, schema: dict) -> str | None:
    """The first schema violation as 'path: message', or None."""
    import jsonschema

    validator = jsonschema.Draft7Validator(as_api_server_judges(schema))
    errors = sorted(validator.iter_errors(without_nulls(manifest)), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    error = errors[0]
    return f"{_path(error.absolute_path) or '(document)'}: {error.message}"


def _path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- what the schema cannot say --------------------------------------------------------------------------------

def cluster_spec(manifest: dict) -> tuple[str, dict]:
    if manifest.get("kind") == "RayJob":
        return "spec.rayClusterSpec", manifest.get("spec", {}).get("rayClusterSpec") or {}
    return "spec", manifest.get("spec") or {}


def operator_problems(manifest: dict) -> list[str]:
    """ray-operator's own rules that these files rely on."""
    out = []
    spec = manifest.get("spec") or {}
    if manifest.get("kind") == "RayJob":
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            out.append(f"spec.submissionMode: {mode!r} is not one of {', '.join(SUBMISSION_MODES)}")
        if spec.get("ttlSecondsAfterFinished") is not None and not spec.get("shutdownAfterJobFinishes"):
            out.append("spec.ttlSecondsAfterFinished: takes effect only with shutdownAfterJobFinishes: true")
    where, cluster = cluster_spec(manifest)
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2147483647)
        if isinstance(low, int) and isinstance(high, int):
            if low > high:
                out.append(f"{where}.workerGroupSpecs[{i}]: minReplicas {low} > maxReplicas {high}")
            replicas = group.get("replicas")
            if isinstance(replicas, int) and not low <= replicas <= high:
                out.append(f"{where}.workerGroupSpecs[{i}].replicas: {replicas} is outside [{low}, {high}]")
    return out


def ray_start_problem(params: dict, head: bool, where: str) -> str | None:
    """``rayStartParams`` as KubeRay passes them (``--key=value`` on a shell line), through ``ray start``'s own
    parser; a ``resources`` value must also be JSON."""
    from ray.scripts.scripts import start

    args = ["--head"] if head else ["--address=127.0.0.1:6379"]
    for key, value in params.items():
        if not isinstance(value, str):
            return f"{where}.{key}: {value!r} must be a string"
        try:
            args += shlex.split(f"--{key}={value}")
        except ValueError as err:
            return f"{where}.{key}: {err}"
    try:
        context = start.make_context("ray start", args)
    except Exception as err:  # click's usage errors
        return f"{where}: ray start refuses it: {first_line(err)}"
    resources = context.params.get("resources")
    if resources and resources != "{}":
        try:
            json.loads(resources)
        except ValueError:
            return f"{where}.resources: {resources!r} is not JSON"
    return None


def ray_start_problems(manifest: dict) -> list[str]:
    where, cluster = cluster_spec(manifest)
    out = [ray_start_problem((cluster.get("headGroupSpec") or {}).get("rayStartParams") or {}, True,
                             f"{where}.headGroupSpec.rayStartParams")]
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        out.append(ray_start_problem(group.get("rayStartParams") or {}, False,
                                     f"{where}.workerGroupSpecs[{i}].rayStartParams"))
    return [p for p in out if p]


def version_problems(manifest: dict) -> list[str]:
    """rayVersion is this machine's Ray (the search's client and the cluster must match), and every image's tag
    names that version."""
    import ray

    where, cluster = cluster_spec(manifest)
    version = str(cluster.get("rayVersion", ""))
    out = []
    if version != ray.__version__:
        out.append(f"{where}.rayVersion: {version or '(missing)'} is not this machine's Ray {ray.__version__}")
    for pod_where, pod in _pods(manifest):
        for j, container in enumerate(pod.get("containers") or []):
            image = str(container.get("image", ""))
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if version and version not in tag:
                out.append(f"{pod_where}.containers[{j}].image: {image} does not name Ray {version} in its tag")
    return out


def _pods(manifest: dict) -> list[tuple[str, dict]]:
    where, cluster = cluster_spec(manifest)
    pods = [(f"{where}.headGroupSpec.template.spec",
             ((cluster.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {})]
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        pods.append((f"{where}.workerGroupSpecs[{i}].template.spec", (group.get("template") or {}).get("spec") or {}))
    return pods


def _mounts(pod: dict) -> set[str]:
    """The mount paths of the pod's persistent volumes (a PVC or NFS: what outlives the pod)."""
    lasting = {v.get("name") for v in pod.get("volumes") or [] if "persistentVolumeClaim" in v or "nfs" in v}
    return {m["mountPath"].rstrip("/") for c in pod.get("containers") or [] for m in c.get("volumeMounts") or []
            if m.get("name") in lasting and m.get("mountPath")}


def _under(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m + "/") for m in mounts)


def _env(pod: dict) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for c in pod.get("containers") or [] for e in c.get("env") or []
            if "name" in e}


def entrypoint_problems(manifest: dict) -> list[str]:
    """A search entrypoint parses with the search's own parser, and everything the search keeps is where a
    retry's new cluster finds it: Tune's storage a bucket or a volume every pod mounts, --output a volume."""
    if manifest.get("kind") != "RayJob":
        return []
    entry = str((manifest.get("spec") or {}).get("entrypoint", ""))
    words = shlex.split(entry)
    if "spd_tune.search" not in words:
        return []
    args = words[words.index("spd_tune.search") + 1:]
    try:
        parsed = parse_search(args)
    except ValueError as err:
        return [f"spec.entrypoint: {err}"]
    out = []
    if parsed.resume != "auto":
        out.append("spec.entrypoint: a RayJob retry runs the entrypoint again on a new cluster: give --resume auto")
    pods = _pods(manifest)
    head_env, head_mounts = _env(pods[0][1]), _mounts(pods[0][1])
    every = set.intersection(*(_mounts(p) for _, p in pods))
    storage = parsed.storage_path or head_env.get(STORAGE_ENV, "")
    if not storage:
        out.append(f"spec.entrypoint: no --storage-path and no {STORAGE_ENV} on the head: Tune would write under "
                   "--output, on one pod")
    elif "://" not in storage and not _under(storage, every):
        out.append(f"storage {storage}: a bare local path; give a bucket URI (s3://, gs://) or a path on a volume "
                   "every pod mounts at the same place")
    output = parsed.output or "./spd_runs"
    if not _under(output, head_mounts):
        out.append(f"spec.entrypoint: --output {output} is on the head pod's own disk: the Optuna study, best/ and "
                   "the report would go with the pod; put it on a persistent volume the head mounts")
    return out


def parse_search(args: list[str]):
    """The search's own parser on a command's arguments; ValueError with its message when it refuses them."""
    from ..search.cli import parse  # the search's own parser: no torch, no Ray

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return parse(args)
    except SystemExit:
        raise ValueError(f"python -m spd_tune.search refuses it: {said.getvalue().strip()}") from None


def problems(manifest: dict, schemas: dict[str, dict]) -> list[str]:
    """Every problem of one RayJob/RayCluster document, the schema's first."""
    out = []
    kind = manifest.get("kind")
    if kind in schemas:
        found = schema_problem(manifest, schemas[kind])
        if found:
            out.append(found)
    return out + operator_problems(manifest) + ray_start_problems(manifest) + version_problems(manifest) \
        + entrypoint_problems(manifest)


def check_manifest(path: str | Path, schemas: dict[str, dict]) -> tuple[str, list[str]]:
    """(what the file holds, its problems) for a YAML file of Kubernetes documents."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except yaml.YAMLError as err:
        return "YAML", [f"not YAML: {first_line(err)}"]
    kinds, found = [], []
    for i, doc in enumerate(docs):
        label = f"document {i}: " if len(docs) > 1 else ""
        if not isinstance(doc, dict) or "kind" not in doc:
            found.append(f"{label}not a Kubernetes object (no kind)")
            continue
        name = f"{doc['kind']} {(doc.get('metadata') or {}).get('name', '?')}"
        kinds.append(name)
        if doc["kind"] in KINDS and str(doc.get("apiVersion", "")).startswith("ray.io/"):
            found += [label + p for p in problems(doc, schemas)]
        elif doc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" not in (doc.get("spec") or {}).get(
                "accessModes", []):
            found.append(f"{label}spec.accessModes: every pod mounts the results volume: give ReadWriteMany")
    return ", ".join(kinds) or "nothing", found
