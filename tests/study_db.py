"""Reading a search's SQLite databases from a test while the search writes them."""

import sqlite3
from pathlib import Path


def count(db: Path, sql: str) -> int:
    """One COUNT(*) of a study or MLflow database, read-only and without touching its schema (a second Optuna
    client would race the driver's own schema creation); 0 while the database is not there yet."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0
