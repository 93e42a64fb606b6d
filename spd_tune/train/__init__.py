"""One training run: its config, the per-worker loop, the sessions it runs in (Ray Train or in-process), the
in-training evaluation, the Ray Train driver and the ``python -m spd_tune.train`` command."""
