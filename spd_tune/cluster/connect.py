"""Joining a Ray cluster, or starting a local one that can clean up after Ray Train."""

from __future__ import annotations

import os
import socket

import ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS); otherwise start a local Ray whose dashboard binds
    127.0.0.1, which Train needs to clean up a stopped run's placement group."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    port = free_port()
    os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port)
