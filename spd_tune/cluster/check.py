"""``python -m spd_tune.cluster check FILE... [--crd PATH]...``: one offline check for every way spd-tune runs on a
cluster. Each FILE is a Ray cluster-launcher YAML, a KubeRay manifest (RayJob, RayCluster; its volume claim) or a
sbatch script, whichever it is; one line per file says valid, or its first problem with its place in the file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..cli import Parser
from ..errors import ConfigError
from .kuberay import check_manifest, load_crd_schema
from .launcher import PLACEHOLDER, load_cluster_config
from .slurm import check_sbatch


def kind_of(path: Path) -> str:
    """sbatch, kuberay or launcher, from the file's own content."""
    text = path.read_text()
    if "#SBATCH" in text or path.suffix == ".sbatch":
        return "sbatch"
    if re.search(r"^apiVersion:", text, re.M) or re.search(r"^kind:", text, re.M):
        return "kuberay"
    return "launcher"


def check_file(path: Path, schemas: dict[str, dict]) -> tuple[bool, str]:
    """(valid, the line to print)."""
    if not path.is_file():
        return False, f"error {path}: no such file"
    kind = kind_of(path)
    if kind == "launcher":
        try:
            spec = load_cluster_config(path)
        except ConfigError as err:
            return False, f"error {err}"
        return True, f"ok {path}: Ray cluster launcher ({spec.provider}), checked with Ray's own schema"
    if kind == "sbatch":
        found, what = check_sbatch(path), "sbatch script, Ray's and the search's parsers"
    else:
        what, found = check_manifest(path, schemas)
        if "Ray" in what:
            checked = sorted(k for k in schemas if k in what)
            what += (f", valid against the {'/'.join(checked)} schema" if checked else
                     ", schema not checked (give --crd)")
    if found:
        return False, f"error {path}: {found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
    return True, f"ok {path}: {what}"


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m spd_tune.cluster check", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="launcher YAML, KubeRay manifest or sbatch script")
    p.add_argument("--crd", action="append", default=[], metavar="PATH",
                   help="a CRD schema (JSON, e.g. ../shared/schemas/kuberay-v1.7.0/ray.io_v1_rayjobs.schema.json) "
                        "or a CRD from your cluster (kubectl get crd rayjobs.ray.io -o yaml); may be repeated")
    args = p.parse_args(argv)
    try:
        schemas = dict(load_crd_schema(path) for path in args.crd)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        valid, line = check_file(path, schemas)
        print(line, file=sys.stdout if valid else sys.stderr)
        if valid and path.is_file():
            placeholders = sorted(set(PLACEHOLDER.findall(path.read_text())))
            if placeholders:
                print(f"  fill in before use: {', '.join(placeholders)}")
        status = status if valid else 2
    return status
