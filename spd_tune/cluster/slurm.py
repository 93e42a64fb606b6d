"""Offline checks of a spd-tune sbatch script (cluster/slurm/), before ``sbatch``.

The ``#SBATCH`` lines a search needs, the Ray command lines through Ray's own parsers (``ray symmetric-run`` and
``ray start``), the search command through the search's own parser, and the pitfalls of Ray on SLURM: a temp dir
short enough for Unix sockets, a cluster wait longer than Ray's 30 s, per-job ports on shared nodes, a signal
before the time limit, ``python -u``, and a check of the result (``ray symmetric-run`` exits 0 when a node's
``ray start`` failed).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..errors import first_line
from .kuberay import parse_search

MAX_TEMP_DIR = 43  # Ray's socket paths append about 64 bytes to the temp dir; Unix sockets allow 107
# what the checks substitute for the script's variables (a job id of 10 digits: the longest temp dir)
SAMPLES = {"SLURM_JOB_ID": "1234567890", "SLURM_CPUS_PER_TASK": "32", "SLURM_GPUS_PER_TASK": "4",
           "SLURM_JOB_NUM_NODES": "2", "head_ip": "10.0.0.1", "base": "20000"}
SIGNAL = re.compile(r"^(B:)?(TERM|INT|USR1|USR2)@(\d+)$")


def sbatch_options(text: str) -> dict[str, str]:
    """The ``#SBATCH`` options, as option -> value ('' for a flag)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            option = line.split(None, 1)[1].split("#")[0].strip()
            key, _, value = option.partition("=")
            out[key] = value
    return out


def logical_lines(text: str) -> list[str]:
    """The script's lines with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def assignments(text: str) -> dict[str, str]:
    """The script's simple assignments (``name=value``, the value unquoted and without spaces)."""
    out = {}
    for line in logical_lines(text):
        m = re.match(r"^\s*(?:export\s+)?(\w+)=([^\s(][^\s#]*)", line)
        if m:
            value = re.sub(r"\$\{(\w+):\?.*", r"${\1}", m.group(2).split("#")[0].strip('"'))  # ${X:?why}
            out.setdefault(m.group(1), value)
    return out


def expand(line: str, text: str, depth: int = 3) -> str:
    """The line with the script's arrays, arithmetic and variables replaced by what they hold, or sample values
    for what SLURM sets."""
    for name, body in re.findall(r"^(\w+)=\(([^)]*(?:\)[^)]*)*?)\)$", re.sub(r"\n\s+", " ", text), re.M):
        line = line.replace(f'"${{{name}[@]}}"', body)
    line = re.sub(r"\$\(\([^()]*(?:\([^()]*\)[^()]*)*\)\)", "20001", line)
    known = {**{k: (expand(v, text, depth - 1) if depth else v) for k, v in assignments(text).items()}, **SAMPLES}
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: known.get(m.group(1), m.group(2)), line)
    line = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: known.get(m.group(1), "x"), line)
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: known.get(m.group(1), "x"), line)
    return line.replace('"$@"', "")


def ray_commands(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its arguments) of every ``ray start`` / ``ray symmetric-run`` in the script."""
    out = []
    for line in logical_lines(text):
        if not re.search(r"\bray (start|symmetric-run)\b", line):
            continue
        words = shlex.split(expand(line, text))
        for i, word in enumerate(words[:-1]):
            if word == "ray" and words[i + 1] in ("start", "symmetric-run"):
                rest = words[i + 2:]
                end = next((j for j, w in enumerate(rest) if w in ("&", ";", "&&", "||", "|")), len(rest))
                out.append((words[i + 1], rest[:end]))
    return out


def search_commands(text: str) -> list[list[str]]:
    """Every ``python ... -m spd_tune.search ...`` command (or array of one), from ``python`` on."""
    out = []
    for line in logical_lines(text):
        if "spd_tune.search" not in line:
            continue
        array = re.match(r"^\s*\w+=\((.*)\)\s*$", line)
        words = shlex.split(expand(array.group(1) if array else line, text))
        if "python" in words:
            words = words[words.index("python"):]
            end = next((j for j, w in enumerate(words) if w in ("&", ";", "&&", "||", "|")), len(words))
            out.append(words[:end])
    return out


def sbatch_problems(options: dict[str, str], symmetric: bool) -> list[str]:
    out = []
    need = ["--nodes", "--ntasks-per-node", "--time", "--signal"] + (["--exclusive"] if symmetric else [])
    out += [f"#SBATCH {key}: missing" for key in need if key not in options]
    if options.get("--ntasks-per-node", "1") != "1":
        out.append("#SBATCH --ntasks-per-node: one task per node starts Ray there; give 1")
    if not ({"--gpus-per-task", "--gres", "--gpus-per-node", "--gpus"} & set(options)):
        out.append("#SBATCH: no GPUs asked for (--gpus-per-task, --gres=gpu:N)")
    signal = SIGNAL.match(options.get("--signal", "TERM@120"))
    if signal is None:
        out.append(f"#SBATCH --signal: {options['--signal']!r} is not [B:]TERM@seconds")
    elif int(signal.group(3)) < 60:
        out.append(f"#SBATCH --signal: {signal.group(3)} s before the time limit is too short for the search to stop "
                   "(give 60 or more)")
    return out


def ray_problems(text: str, commands: list[tuple[str, list[str]]], symmetric: bool) -> list[str]:
    """Each Ray command through Ray's own parser, and what Ray's parsers do not check."""
    from ray.scripts.scripts import start
    from ray.scripts.symmetric_run import curate_and_validate_ray_start_args, symmetric_run

    out = []
    for name, args in commands:
        try:
            if name == "symmetric-run":
                before = args[:args.index("--")] if "--" in args else args
                symmetric_run.make_context("ray symmetric-run", list(args))
                start.make_context("ray start", [*curate_and_validate_ray_start_args(before), "--head"])
                if "--" not in args:
                    out.append("ray symmetric-run: no '--' between its options and the search")
            else:
                start.make_context("ray start", list(args))
        except Exception as err:  # click's usage errors, symmetric-run's own refusals
            out.append(f"ray {name}: Ray refuses its arguments: {first_line(err)}")
            continue
        temp = next((a.split("=", 1)[1] for a in args if a.startswith("--temp-dir=")), None)
        if temp is None:
            out.append(f"ray {name}: no --temp-dir: give a short node-local one (Ray's default is shared by jobs)")
        elif len(temp) > MAX_TEMP_DIR:
            out.append(f"ray {name}: --temp-dir {temp} is {len(temp)} characters; Unix socket paths under it need "
                       f"it at most {MAX_TEMP_DIR}")
        if name == "start" and "--block" not in args:
            out.append("ray start: no --block: the srun step would end at once, and SLURM would stop its Ray")
        if not symmetric and name == "start" and "--head" in args and not any(
                a.startswith("--port=") and a != "--port=6379" for a in args):
            out.append("ray start --head: give the job its own --port (shared nodes run other jobs' Rays)")
    if symmetric:
        wait = re.search(r"RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT=(\d+)", text)
        if wait is None or int(wait.group(1)) <= 30:
            out.append("RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT: set it above Ray's 30 s; nodes take longer to start")
    return out


def problems(text: str) -> list[str]:
    """Every problem of one sbatch script."""
    commands = ray_commands(text)
    symmetric = any(name == "symmetric-run" for name, _ in commands)
    out = sbatch_problems(sbatch_options(text), symmetric)
    if not commands:
        out.append("no `ray start` or `ray symmetric-run` line")
    out += ray_problems(text, commands, symmetric)
    if not re.search(r"scontrol show hostnames", text):
        out.append("the head's address: take it from `scontrol show hostnames \"$SLURM_JOB_NODELIST\"`")
    if "search_finished.json" not in text:
        out.append("no check of the result: test for <output>/<space>/search_finished.json after the search")
    searches = search_commands(text)
    if not searches:
        out.append("no `python -u -m spd_tune.search` command")
    for words in searches:
        if "-u" not in words[1:words.index("-m") if "-m" in words else len(words)]:
            out.append("the search: run it with python -u, or its lines reach the log late")
        try:
            parsed = parse_search(words[words.index("spd_tune.search") + 1:])
        except ValueError as err:
            out.append(f"the search: {err}")
            continue
        if parsed.resume != "auto":
            out.append("the search: a requeued job runs the same command again: give --resume auto")
    return out


def check_sbatch(path: str | Path) -> list[str]:
    return problems(Path(path).read_text())
