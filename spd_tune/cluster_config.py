"""``python -m spd_tune.cluster_config FILE``: the launcher-config check, kept under its first name."""

from .cluster.launcher import PLACEHOLDER, ClusterSpec, NodeType, load_cluster_config, main, max_resources

__all__ = ["PLACEHOLDER", "ClusterSpec", "NodeType", "load_cluster_config", "main", "max_resources"]

if __name__ == "__main__":
    raise SystemExit(main())
