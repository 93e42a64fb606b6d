"""Checks of where a run will write, made before Ray starts or anything is written: the results storage, the
MLflow tracking URI and the Optuna database. Each failure is one ConfigError naming the URI and the fix."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from .config import ConfigError

TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")
PROBE_TIMEOUT_S = 5.0


def check_local_dir(path: str | Path, what: str) -> None:
    """``path`` exists as a writable folder, or can be created: its nearest existing ancestor is one."""
    path = Path(path).expanduser().resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable ({probe} does not allow it)")


def check_storage_path(path: str) -> None:
    """A local folder we can write, or a bucket URI whose file system answers."""
    if "://" not in path or path.startswith("file://"):
        check_local_dir(path.removeprefix("file://"), "storage path")
        return
    import pyarrow.fs

    try:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        fs.get_file_info(inner)  # one metadata request: bad credentials or no route fail here, not at a checkpoint
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        raise ConfigError(f"storage {path} is not usable: {_first_line(err)}") from None


def check_tracking_uri(uri: str) -> None:
    """The MLflow tracking URI has a known scheme, and a tracking server behind it answers."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"MLflow tracking URI {uri}: unknown scheme {scheme!r}; use one of {list(TRACKING_SCHEMES)}"
                          " or a local path")
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S) as response:
                response.read(64)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ConfigError(f"MLflow tracking server {uri} is not reachable ({_first_line(err)}); start it, or "
                              "pass another --tracking-uri (default: a SQLite store under --output)") from None
    elif scheme == "sqlite":
        check_local_dir(Path(uri.split(":///", 1)[-1]).parent, "MLflow database folder")
    elif scheme in ("", "file"):
        check_local_dir(uri.removeprefix("file://"), "MLflow store")


def check_optuna_url(url: str) -> None:
    """The Optuna storage URL parses, and its database answers (SQLite: its folder can be written)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise ConfigError(f"Optuna storage {url!r} is not a database URL ({_first_line(err)}); e.g. "
                          "sqlite:///path/optuna.db or postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            check_local_dir(Path(parsed.database).parent, "Optuna database folder")
        return
    try:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - drivers raise their own types (import errors, timeouts, auth)
        raise ConfigError(f"Optuna storage {parsed.render_as_string(hide_password=True)} is not reachable "
                          f"({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
