"""Checks of where a search will write, made before Ray starts or anything is written: the MLflow tracking URI
and the Optuna database (the results storage: spd_tune.cluster.storage). Each failure is one ConfigError naming the
URI and the fix."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from ..cluster.storage import check_local_dir
from ..errors import ConfigError, first_line

TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")
PROBE_TIMEOUT_S = 5.0


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
            raise ConfigError(f"MLflow tracking server {uri} is not reachable ({first_line(err)}); start it, or "
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
        raise ConfigError(f"Optuna storage {url!r} is not a database URL ({first_line(err)}); e.g. "
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
                          f"({first_line(err)})") from None


def check_study_exists(url: str, study_name: str) -> None:
    """--resume: the Optuna study that the Tune experiment's searcher continues is there."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    missing = ConfigError(f"--resume: the Optuna study {study_name!r} is not in {parsed.render_as_string(True)}, so "
                          "the search's trials cannot be continued; pass the --optuna-storage it was started with, "
                          "or start a new search with another --output (nothing was changed)")
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).is_file():
        raise missing
    import optuna  # here: the cheap checks above must not pay for importing Optuna

    if study_name not in optuna.get_all_study_names(storage=url):
        raise missing
