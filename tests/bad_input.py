"""The bad-input table: every user-facing entry point fed malformed input.

Each case runs a real CLI entry point in-process and records its exit code, its stderr, whether Ray was started
and whether anything changed on disk. ``python tests/bad_input.py OUT.json`` runs the whole table in one fresh
process (where Ray has never started, so "before Ray starts" is observable); test_reliability.py asserts on it.
docs/reliability.md lists the same cases (a test keeps the two in step).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@dataclass(frozen=True)
class Case:
    id: str
    cli: str  # search | train | fid | sample | cluster
    argv: Callable[[Path], list[str]]  # given the case's own folder
    expect: str  # words the one-line error must contain
    setup: Callable[[Path], None] | None = None
    env: dict = field(default_factory=dict)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _space_file(d: Path, **param) -> None:
    import yaml

    from spd_tune.train.config import SPACES_DIR

    doc = yaml.safe_load((SPACES_DIR / "demo.yaml").read_text())
    doc["search"]["params"] = {"m": {"path": "process.m", "type": "float", **param}}
    _write(d / "space.yaml", yaml.safe_dump(doc))


def _fake_cifar(d: Path) -> None:
    folder = d / "cifar" / "cifar-10-batches-py"
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        _write(folder / name, "not a pickle")


def _garbage_weights(d: Path) -> None:
    _write(d / "weights.pth", "garbage")


def _random_weights(d: Path) -> None:
    import torch

    from spd_tune.fid.inception import random_inception_state_dict

    torch.save(random_inception_state_dict(), d / "weights.pth")


def _existing_search(d: Path) -> None:
    _write(d / "out" / "demo" / "optuna.db", "")


def _checkpoint_of_another_model(d: Path) -> None:
    import torch

    from spd_tune.checkpoint import Checkpoint, save_checkpoint
    from spd_tune.train.config import load_train_config
    from spd_tune.unet import UNet

    cfg = load_train_config("demo", ["model.preset=tiny"])
    net = UNet(cfg.unet)
    state = Checkpoint(unet=cfg.unet, process=cfg.process, model=net.state_dict(), ema=net.state_dict(),
                       extra={"step": 10, "optimizer": torch.optim.AdamW(net.parameters()).state_dict()})
    save_checkpoint(d / "out" / "run" / "step_000000010" / "checkpoint.pt", state)


class Payload:
    """Any class: unpickling it would run code of the file's choosing."""


def _pickled_object(d: Path) -> None:
    import torch

    torch.save({"format": "spd-tune-checkpoint/1", "unet": Payload()}, d / "evil.pt")


def _float_samples(d: Path) -> None:
    import numpy as np

    np.savez(d / "samples.npz", images=np.zeros((4, 16, 16, 3), dtype=np.float32))


def _cluster_typo(d: Path) -> None:
    import yaml

    raw = yaml.safe_load((HERE.parent / "cluster" / "gpu.yaml").read_text())
    raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")
    _write(d / "typo.yaml", yaml.safe_dump(raw))


def _fake_experiment(root: Path) -> None:
    """What Tune leaves of a search (its tuner.pkl, all that Tuner.can_restore looks for), without the Optuna study."""
    _write(root / "ray" / "tune" / "demo" / "tuner.pkl", "")


def _search(*extra: str) -> Callable[[Path], list[str]]:
    return lambda d: ["demo", "--output", str(d / "out"), *[a.replace("{d}", str(d)) for a in extra]]


_train = _search  # the train CLI takes the same first argument and --output


CASES = [
    # --- search CLI and search-space YAML
    Case("search: unknown search space", "search", lambda d: ["nosuchspace", "--output", str(d / "out")],
         "neither a config file nor a shipped search space"),
    Case("search: YAML syntax error", "search", lambda d: [str(d / "bad.yaml"), "--output", str(d / "out")],
         "cannot read", setup=lambda d: _write(d / "bad.yaml", "train: [unclosed\n")),
    Case("search: unknown key", "search", _search("--set", "train.optim.lrr=1e-3"), "did you mean 'lr'"),
    Case("search: unknown top-level key in an override", "search", _search("--set", "serach.trials=3"),
         "unknown key(s) ['serach'] (did you mean 'search'?)"),
    Case("search: unknown top-level key in the space file", "search",
         lambda d: [str(d / "space.yaml"), "--output", str(d / "out")], "did you mean 'search'",
         setup=lambda d: _space_file(d, low=1.0, high=3.0) or _write(
             d / "space.yaml", (d / "space.yaml").read_text() + "serach: {trials: 3}\n")),
    Case("search: unknown section key", "search", _search("--set", "train.data.demo_cont=64"),
         "did you mean 'demo_count'"),
    Case("search: unknown key in model.overrides", "search", _search("--set", "train.model.overrides.dropuot=0.1"),
         "model.overrides.dropuot"),
    Case("search: unknown key in a parameter", "search", _search("--set", "search.params.m.hihg=3"),
         "did you mean 'high'"),
    Case("search: unknown key in the ASHA section", "search", _search("--set", "search.asha.grace=1"),
         "did you mean 'grace_kimg'"),
    Case("search: unknown key in the search section", "search", _search("--set", "search.trails=4"),
         "did you mean 'trials'"),
    Case("search: wrong type", "search", _search("--set", "train.batch=many"), "must be an integer"),
    Case("search: empty range", "search", lambda d: [str(d / "space.yaml"), "--output", str(d / "out")],
         "empty or inverted", setup=lambda d: _space_file(d, low=2.0, high=2.0)),
    Case("search: inverted range", "search", lambda d: [str(d / "space.yaml"), "--output", str(d / "out")],
         "empty or inverted", setup=lambda d: _space_file(d, low=3.0, high=1.0)),
    Case("search: parameter path not in the config", "search",
         lambda d: [str(d / "space.yaml"), "--output", str(d / "out")], "is not a field of the training config",
         setup=lambda d: _space_file(d, low=1.0, high=3.0) or _write(
             d / "space.yaml", (d / "space.yaml").read_text().replace("path: process.m", "path: process.mm"))),
    Case("search: T < 3", "search", _search("--set", "train.process.steps=2"), "steps=2 must be an integer in [3"),
    Case("search: negative m", "search", _search("--set", "train.process.m=-1"), "m=-1"),
    Case("search: absurd m", "search", _search("--set", "train.process.m=40"), "m=40.0 is beyond"),
    Case("search: absurd learning rate", "search", _search("--set", "train.optim.lr=5"), "optim.lr=5.0"),
    Case("search: negative batch", "search", _search("--set", "train.batch=-32"), "batch=-32"),
    Case("search: absurd batch", "search", _search("--set", "train.batch=10000000"), "batch=10000000 is beyond"),
    Case("search: zero trials", "search", _search("--trials", "0"), "search.trials=0"),
    Case("search: gate threshold out of range", "search", _search("--set", "search.gate.threshold=1.5"),
         "search.gate.threshold=1.5 must be in [-1, 1)"),
    Case("search: gate with too few pairs", "search", _search("--set", "search.gate.min_pairs=2"),
         "search.gate.min_pairs=2 must be >= 4"),
    Case("search: --resume with the Optuna study gone", "search",
         lambda d: ["demo", "--output", str(d / "out"), "--resume"], "the Optuna study 'demo' is not in",
         setup=lambda d: _fake_experiment(d / "out" / "demo")),
    Case("search: custom resource named GPU", "search", _search("--set", "train.resources.custom={GPU: 1}"),
         "custom resources need a name other than"),
    Case("search: unknown tracking URI scheme", "search", _search("--tracking-uri", "ftp://host/mlflow"),
         "unknown scheme 'ftp'"),
    Case("search: unreachable tracking server", "search",
         lambda d: _search("--tracking-uri", f"http://127.0.0.1:{_closed_port()}")(d), "is not reachable"),
    Case("search: malformed Optuna storage URL", "search", _search("--optuna-storage", "not a database"),
         "is not a database URL"),
    Case("search: unreachable Optuna database", "search",
         _search("--optuna-storage", "postgresql://spd@127.0.0.1:1/optuna"), "is not reachable"),
    Case("search: unknown storage scheme", "search", _search("--storage-path", "foo://bucket/spd"),
         "storage foo://bucket/spd is not usable"),
    Case("search: unreachable storage bucket", "search",
         _search("--storage-path", "s3://bucket/spd?endpoint_override=127.0.0.1:1&scheme=http"), "is not usable"),
    Case("search: storage path under a file", "search", _search("--storage-path", "{d}/afile/ray"), "is a file",
         setup=lambda d: _write(d / "afile", "")),
    Case("search: --resume with nothing to resume", "search", _search("--resume"), "no search to resume"),
    Case("search: existing search without --resume", "search", _search(), "already holds a search",
         setup=_existing_search),
    Case("search: missing data folder", "search",
         _search("--set", "train.data.name=folder", "--set", "train.data.root={d}/missing"), "data folder not found"),
    Case("search: data folder without images", "search",
         _search("--set", "train.data.name=folder", "--set", "train.data.root={d}/empty"), "no images in",
         setup=lambda d: (d / "empty").mkdir()),
    Case("search: corrupt CIFAR-10 folder", "search",
         lambda d: ["cifar10", "--output", str(d / "out"), "--set", "train.eval.features.weights=random",
                    "--set", f"train.data.root={d / 'cifar'}"], "is missing or corrupted", setup=_fake_cifar),
    Case("search: FID weights file absent", "search", lambda d: ["cifar10", "--output", str(d / "out")],
         "FID Inception weights not found", env={"SPD_TUNE_FID_WEIGHTS": "{d}/absent.pth"}),
    Case("search: corrupt FID weights file", "search", lambda d: ["cifar10", "--output", str(d / "out")],
         "expected the prefix", setup=_garbage_weights, env={"SPD_TUNE_FID_WEIGHTS": "{d}/weights.pth"}),
    Case("search: FID weights of the wrong network", "search", lambda d: ["cifar10", "--output", str(d / "out")],
         "expected the prefix", setup=_random_weights, env={"SPD_TUNE_FID_WEIGHTS": "{d}/weights.pth"}),
    Case("search: argument of the wrong type", "search", _search("--trials", "many"), "invalid int value"),
    Case("search: around: fit with a negative width", "search",
         _search("--set", "search.params.m={path: process.m, type: float, around: fit, width: -1}"),
         "width=-1.0 must be a positive number"),
    Case("search: folder space without --data-dir", "search", lambda d: ["folder", "--output", str(d / "out")],
         "needs a data folder (--data-dir)"),
    Case("search: negative budget in hours", "search", _search("--budget-hours", "-1"),
         "search.budget_hours=-1.0 must be a number of hours > 0"),
    Case("search: no final seed sets", "search", _search("--set", "search.final.seeds=0"),
         "search.final.seeds=0 must be >= 1"),
    Case("search: post-hoc K_min above the lowest T", "search",
         _search("--set", "search.posthoc.k_min=60", "--set", "search.posthoc.k_max=null"),
         "above the lowest T the space allows (50)"),
    Case("search: unknown post-hoc sampler", "search", _search("--set", "search.posthoc.samplers=[euler]"),
         "must be one of"),
    Case("search: negative post-hoc budget", "search", _search("--set", "search.posthoc.evaluations=-2"),
         "evaluations >= 1"),
    Case("search: post-hoc EMA width without power EMA", "search", _search("--set", "train.ema.kind=rate"),
         "needs train.ema.kind: power"),
    # --- train CLI
    Case("train: zero workers", "train", _train("--workers", "0"), "resources.workers=0 must be >= 1"),
    Case("train: batch not divisible by the workers", "train", _train("--workers", "3"), "must be divisible"),
    Case("train: unknown model preset", "train", _train("--set", "model.preset=huge"), "is not one of"),
    Case("train: --set without a value", "train", _train("--set", "optim.lr"), "must look like key=value"),
    Case("train: unknown key", "train", _train("--set", "optim.warmup=1"), "did you mean 'warmup_kimg'"),
    Case("train: unknown top-level key in a space file", "train", lambda d: [str(d / "space.yaml")],
         "did you mean 'search'", setup=lambda d: _space_file(d, low=1.0, high=3.0) or _write(
             d / "space.yaml", (d / "space.yaml").read_text() + "serach: {trials: 3}\n")),
    Case("train: resuming a run of another model", "train", _train("--name", "run"),
         "holds checkpoints of another model", setup=_checkpoint_of_another_model),
    # --- fid and sample CLIs
    Case("fid: samples file missing", "fid", lambda d: ["score", str(d / "none.npz"), "--ref", "demo", "--proxy"],
         "samples file not found"),
    Case("fid: samples not uint8 images", "fid", lambda d: ["score", str(d / "samples.npz"), "--ref", "demo",
                                                            "--proxy"], "must be uint8", setup=_float_samples),
    Case("fid: corrupt weights file", "fid",
         lambda d: ["ref", "demo", "--n", "8", "--image-size", "16", "--fid-weights", str(d / "weights.pth")],
         "expected the prefix", setup=_garbage_weights),
    Case("sample: not a checkpoint", "sample", lambda d: [str(d / "notes.txt"), "--n", "1", "--out", str(d / "o")],
         "is not a readable checkpoint", setup=lambda d: _write(d / "notes.txt", "hello")),
    Case("sample: checkpoint holding pickled objects", "sample",
         lambda d: [str(d / "evil.pt"), "--n", "1", "--out", str(d / "o")], "is not a readable checkpoint",
         setup=_pickled_object),
    # --- cluster config
    Case("cluster: misspelt key", "cluster", lambda d: [str(d / "typo.yaml")], "idle_timeout_minute",
         setup=_cluster_typo),
    Case("cluster: config file missing", "cluster", lambda d: [str(d / "none.yaml")], "cannot read cluster config"),
]


# Need a running Ray cluster (what it can hold is the question); test_reliability.py gives them one.
RAY_CASES = [
    Case("search: a trial the cluster can never hold", "search", _search("--set", "train.resources.gpus_per_worker=1"),
         "GPU 1 (cluster at most 0)"),
    Case("search: more concurrent trials than the cluster holds", "search", _search("--max-concurrent", "64"),
         "do not fit"),
    Case("search: a custom resource the cluster does not have", "search",
         _search("--set", "train.resources.custom={accelerator_type:A10G: 1}"), "which this cluster does not have"),
    Case("train: a custom resource the cluster does not have", "train",
         _train("--set", "resources.custom={trainer_slot: 1}"), "which this cluster does not have"),
]


def _entry_point(cli: str):
    if cli == "search":
        from spd_tune.search.__main__ import main
    elif cli == "train":
        from spd_tune.train.__main__ import main
    elif cli == "fid":
        from spd_tune.fid.__main__ import main
    elif cli == "sample":
        from spd_tune.sample import main
    else:
        from spd_tune.cluster.launcher import main
    return main


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run_case(case: Case, folder: Path) -> dict:
    """Run one case in this process; report what a user would see and what it touched."""
    import ray

    folder.mkdir(parents=True, exist_ok=True)
    if case.setup:
        case.setup(folder)
    before = _snapshot(folder)
    saved = {k: os.environ.get(k) for k in case.env}
    os.environ.update({k: v.replace("{d}", str(folder)) for k, v in case.env.items()})
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = _entry_point(case.cli)(case.argv(folder))
            except SystemExit as exc:  # argparse
                code = exc.code
    except Exception:  # noqa: BLE001 - an escaped exception is exactly what this table must catch
        code, err = "exception", io.StringIO(err.getvalue() + traceback.format_exc())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {"code": code, "stderr": err.getvalue(), "ray_started": ray.is_initialized(),
            "changed": sorted(set(_snapshot(folder).items()) ^ set(before.items()))}


def run_all(root: Path) -> dict[str, dict]:
    return {case.id: run_case(case, root / f"case{i:02d}") for i, case in enumerate(CASES)}


if __name__ == "__main__":
    from ray_cluster import TEST_ENV

    os.environ.update(TEST_ENV)
    out_file = Path(sys.argv[1])
    results = run_all(out_file.parent / "cases")
    out_file.write_text(json.dumps(results, indent=1, default=str))
