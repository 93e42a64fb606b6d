"""``python -m spd_tune.cluster check``: the shipped KubeRay manifests and sbatch scripts are valid, and each check
refuses the mistake it names. KubeRay's CRD schemas come from ../shared/schemas (skipped, with the reason, when the
folder is absent); Ray's and the search's own parsers judge the command lines; bash -n and shellcheck the scripts."""

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from spd_tune.cluster import check, kuberay, slurm

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"
RAYJOB, RAYCLUSTER, PVC = (ROOT / "cluster" / "k8s" / n for n in ("rayjob.yaml", "raycluster.yaml", "pvc.yaml"))
SBATCH, CLASSIC = ROOT / "cluster" / "slurm" / "search.sbatch", ROOT / "cluster" / "slurm" / "search-classic.sbatch"
needs_schemas = pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"KubeRay's CRD schemas are not at {SCHEMAS}")


def schemas() -> dict:
    return dict(kuberay.load_crd_schema(p) for p in sorted(SCHEMAS.glob("*.schema.json")))


def job() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def test_the_shipped_files_pass_without_a_schema_and_say_so(capsys):
    files = [RAYJOB, RAYCLUSTER, PVC, SBATCH, CLASSIC, ROOT / "cluster" / "gpu.yaml"]
    assert check.main([str(f) for f in files]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == len(files) and out.count("schema not checked (give --crd)") == 2


@needs_schemas
def test_the_shipped_manifests_pass_kuberays_schemas(capsys):
    crds = [arg for p in sorted(SCHEMAS.glob("*.schema.json")) for arg in ("--crd", str(p))]
    assert check.main([str(RAYJOB), str(RAYCLUSTER), *crds]) == 0
    out = capsys.readouterr().out
    assert "valid against the RayJob schema" in out and "valid against the RayCluster schema" in out


@needs_schemas
def test_a_crd_exported_from_a_cluster_is_read_like_the_schema_file(tmp_path):
    schema = kuberay.load_crd_schema(SCHEMAS / "ray.io_v1_rayjobs.schema.json")[1]
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "spec": {"names": {"kind": "RayJob"}, "versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}}
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
    assert kuberay.load_crd_schema(tmp_path / "crd.yaml") == ("RayJob", schema)


@needs_schemas
@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"]["rayClusterSpec"].update(enableInTreeAutoscalling=True), "'enableInTreeAutoscalling' was unexpected"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas="eight"), "is not of type 'integer'"),
    (lambda d: d["spec"].update(backoffLimit="2"), "spec.backoffLimit: '2' is not of type 'integer'"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "'groupName' is a required"),
])
def test_the_schema_refuses_typos_wrong_types_and_missing_keys(mutate, expected):
    doc = job()
    mutate(doc)
    assert expected in (kuberay.schema_problem(doc, schemas()["RayJob"]) or "")


@needs_schemas
def test_the_schema_is_judged_as_the_api_server_does():
    doc = job()
    doc["spec"]["activeDeadlineSeconds"] = None  # pruned by the API server before validation
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("rayStartParams")  # required upstream, defaulted
    assert kuberay.schema_problem(doc, schemas()["RayJob"]) is None


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"].update(submissionMode="BatchMode"), "spec.submissionMode: 'BatchMode' is not one of"),
    (lambda d: d["spec"].update(shutdownAfterJobFinishes=False), "ttlSecondsAfterFinished: takes effect only"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=9), "minReplicas 9 > maxReplicas 8"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpu": "0"}),
     "headGroupSpec.rayStartParams: ray start refuses it: No such option '--num-cpu'"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": "zero"}),
     "ray start refuses it"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(resources="'{train_driver: 8'"),
     "rayStartParams.resources: '{train_driver: 8' is not JSON"),
    (lambda d: d["spec"]["rayClusterSpec"].update(rayVersion="2.9.0"), "rayVersion: 2.9.0 is not this machine's Ray"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
        image="rayproject/ray:2.9.0-gpu"), "does not name Ray"),
    (lambda d: d["spec"].update(entrypoint="python -m spd_tune.search cifar10 --resume auto --trails 3"),
     "spec.entrypoint: python -m spd_tune.search refuses it: error: unrecognized arguments: --trails 3"),
    (lambda d: d["spec"].update(entrypoint=d["spec"]["entrypoint"].replace("--resume auto", "")),
     "give --resume auto"),
    (lambda d: d["spec"].update(entrypoint=d["spec"]["entrypoint"].replace("/mnt/spd-tune/runs", "/tmp/runs")),
     "--output /tmp/runs is on the head pod's own disk"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"][0].update(
        value="/data/ray"), "storage /data/ray: a bare local path"),
])
def test_what_the_schema_cannot_say_is_checked_too(mutate, expected):
    doc = job()
    mutate(doc)
    assert any(expected in p for p in kuberay.problems(doc, {})), kuberay.problems(doc, {})


def test_the_rayjob_is_what_a_search_needs():
    doc = job()
    spec, cluster = doc["spec"], doc["spec"]["rayClusterSpec"]
    assert "--address auto --resume auto" in spec["entrypoint"] and spec["backoffLimit"] > 0
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and "train_driver" in head["rayStartParams"]["resources"]
    pod = head["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60  # with the hook below, the search stops as when interrupted
    assert "kill -TERM" in " ".join(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
    memory = pod["containers"][0]["resources"]["limits"]["memory"]
    assert memory.endswith("Gi") and int(memory[:-2]) >= 8
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["SPD_TUNE_STORAGE"].startswith("s3://") and env["MLFLOW_TRACKING_URI"].startswith("http")
    gpu = cluster["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    worker = gpu["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert yaml.safe_load(PVC.read_text())["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("script", [SBATCH, CLASSIC], ids=["symmetric-run", "classic"])
def test_the_sbatch_scripts_pass_bash_and_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    shellcheck = shutil.which("shellcheck") or str(Path(__import__("sys").executable).parent / "shellcheck")
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_the_sbatch_lines_are_what_slurm_needs():
    for script, symmetric in ((SBATCH, True), (CLASSIC, False)):
        options = slurm.sbatch_options(script.read_text())
        assert options["--ntasks-per-node"] == "1" and "--nodes" in options and "--time" in options
        assert slurm.SIGNAL.match(options["--signal"]).group(1) == "B:"  # to the batch shell, which forwards it
        assert ("--exclusive" in options) == symmetric and "--gpus-per-task" in options
    commands = dict(slurm.ray_commands(SBATCH.read_text()))
    assert "--temp-dir=/tmp/ray-1234567890" in commands["symmetric-run"]
    classic = slurm.ray_commands(CLASSIC.read_text())
    assert [name for name, _ in classic] == ["start", "start"] and "--head" in classic[0][1]


@pytest.mark.parametrize("edit, expected", [
    (("#SBATCH --signal=B:TERM@120\n", ""), "#SBATCH --signal: missing"),
    (("B:TERM@120", "B:TERM@10"), "10 s before the time limit is too short"),
    (("#SBATCH --exclusive\n", ""), "#SBATCH --exclusive: missing"),
    (("ray_tmp=/tmp/ray-$SLURM_JOB_ID", "ray_tmp=/scratch/projects/spd-tune/users/alice/ray-temp/$SLURM_JOB_ID"),
     "characters; Unix socket paths under it need it at most 43"),
    (("RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT=600", "RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT=30"), "above Ray's 30 s"),
    (("python -u -m", "python -m"), "run it with python -u"),
    (("search_finished.json", "report.html"), "no check of the result"),
    (("--address auto --resume auto", "--address auto --resume"), "give --resume auto"),
    (("--min-nodes", "--min-node"), "Ray refuses its arguments"),
    (("--disable-usage-stats \\\n", "--disable-usage-stats --port 7000 \\\n"), "Cannot use --port option"),
])
def test_each_sbatch_check_catches_its_mistake(edit, expected):
    text = SBATCH.read_text()
    assert edit[0] in text
    found = slurm.problems(text.replace(edit[0], edit[1], 1))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("edit, expected", [
    (('--port="$base"', '--port=6379'), "give the job its own --port"),
    (("ray start --block --address", "ray start --address"), "no --block"),
])
def test_the_classic_script_keeps_to_its_own_ports_and_blocks(edit, expected):
    text = CLASSIC.read_text()
    assert edit[0] in text
    assert any(expected in p for p in slurm.problems(text.replace(edit[0], edit[1], 1)))


def test_check_prints_one_line_per_file_with_the_first_problem(tmp_path, capsys):
    bad = copy.deepcopy(job())
    bad["spec"]["submissionMode"] = "BatchMode"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(bad))
    assert check.main([str(tmp_path / "job.yaml"), str(SBATCH), str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0].startswith(f"error {tmp_path / 'job.yaml'}: spec.submissionMode:")
    assert "no such file" in captured.err and captured.out.startswith(f"ok {SBATCH}")
    assert check.main([str(RAYJOB), "--crd", str(tmp_path / "job.yaml")]) == 2
    assert "neither a RayJob/RayCluster CRD" in capsys.readouterr().err


def test_the_image_is_built_on_the_pinned_ray_and_python():
    import sys

    dockerfile = (ROOT / "cluster" / "k8s" / "Dockerfile").read_text()
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert f"FROM rayproject/ray:{ray.__version__}-{python}-gpu" in dockerfile
    tag = f"spd-tune:{ray.__version__}-{python}-gpu"
    assert tag in dockerfile and tag in RAYJOB.read_text() and tag in RAYCLUSTER.read_text()


def test_every_entry_point_of_the_checks_still_runs():
    import sys

    for args in (["-m", "spd_tune.cluster", "check", str(SBATCH), str(RAYJOB)],  # the one command
                 ["-m", "spd_tune.cluster", str(ROOT / "cluster" / "gpu.yaml")],  # launcher YAMLs, as before
                 ["-m", "spd_tune.cluster_config", str(ROOT / "cluster" / "gcp.yaml")]):
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.startswith("ok "), (args, done.stdout, done.stderr)
