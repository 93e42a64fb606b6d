"""``python -m spd_tune.cluster check FILE... [--crd PATH]...``: check launcher YAMLs, KubeRay manifests and sbatch
scripts offline. ``python -m spd_tune.cluster FILE ...`` (alias: spd_tune.cluster_config) checks launcher YAMLs."""

import sys

from . import check, launcher

if __name__ == "__main__":
    argv = sys.argv[1:]
    raise SystemExit(check.main(argv[1:]) if argv[:1] == ["check"] else launcher.main(argv))
