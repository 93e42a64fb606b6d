"""``python -m spd_tune.cluster FILE ...``: check cluster launcher configs offline (alias: spd_tune.cluster_config)."""

from .launcher import main

if __name__ == "__main__":
    raise SystemExit(main())
