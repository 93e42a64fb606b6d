"""Search spaces: shipped ones load; malformed ones fail before Ray starts, naming key, value and what is allowed."""

import math

import pytest
import yaml

from spd_tune.errors import ConfigError
from spd_tune.search.fit import describe_fit
from spd_tune.search.space import load_space
from spd_tune.train.config import SPACES_DIR


def write_space(tmp_path, search=None, train=None, **top):
    doc = {"train": {"data": {"name": "demo", "image_size": 16}, "model": {"preset": "micro"},
                     "process": {"steps": 200, "m": 2.0}, "batch": 32, "total_kimg": 4,
                     "eval": {"features": {"dims": 64, "weights": "random"}}, **(train or {})},
           "search": search if search is not None else {"params": {"m": {"path": "process.m", "low": 1.0, "high": 3.0}}},
           **top}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_demo_space_loads_with_rungs_and_default_point():
    space = load_space("demo")
    assert space.metric == "proxy_fd64" and space.search.trials >= 6
    assert space.rungs() == [1.0, 2.0, 4.0] and space.train.eval.at_kimg == (1.0, 2.0, 4.0)
    assert space.train.total_kimg == space.max_kimg == 4
    assert space.default_point() == {"m": 2.69, "T": 200, "lr": 0.002}
    trial = space.trial_config({"m": 3.1, "T": 77, "lr": 1e-3})
    assert (trial.process.m, trial.process.steps, trial.optim.lr) == (3.1, 77, 1e-3)


@pytest.mark.parametrize("search, message", [
    ({"params": {}}, "at least one parameter"),
    ({"params": {"m": {"path": "process.m", "low": 3.0, "high": 1.0}}}, r"range \[3.0, 1.0\] is empty or inverted"),
    ({"params": {"m": {"path": "process.m", "low": 2.0, "high": 2.0}}}, "empty or inverted"),
    ({"params": {"lr": {"path": "optim.lr", "low": 0.0, "high": 1e-3, "log": True}}}, "log range needs low > 0"),
    ({"params": {"m": {"path": "process.m", "type": "gaussian", "low": 1, "high": 2}}}, "type='gaussian' must be one of"),
    ({"params": {"m": {"path": "process.mm", "low": 1.0, "high": 3.0}}}, "is not a field of the training config"),
    ({"params": {"T": {"path": "process.steps", "type": "int", "low": 2, "high": 100}}}, "the value 2 gives an invalid config"),
    ({"params": {"T": {"path": "process.steps", "type": "int", "low": 10.5, "high": 100}}}, "integer bounds"),
    ({"params": {"m": {"path": "process.m", "low": 2.5, "high": 3.0}}}, "value 2.0 .* is outside the searched range"),
    ({"params": {"m": {"path": "process.m", "low": 1.0, "high": 3.0, "step": 1}}}, r"unknown key\(s\) \['search.params.m.step'\]"),
    ({"params": {"m": {"path": "process.m", "low": 1.0, "high": 3.0}}, "trials": 0}, "search.trials=0"),
    ({"params": {"m": {"path": "process.m", "low": 1.0, "high": 3.0}}, "trails": 5}, r"unknown key\(s\) \['search.trails'\]"),
    ({"params": {"m": {"path": "process.m", "low": 1.0, "high": 3.0}}, "asha": {"reduction_factor": 1}}, "reduction_factor > 1"),
    ({"params": {"m": {"path": "process.m", "low": 1.0, "high": 3.0}}, "asha": {"max_kimg": 10}}, "exceeds train.total_kimg"),
    ({"params": {"m": {"path": "process.m", "low": "one", "high": 3.0}}}, "search.params.m.low='one'"),
])
def test_malformed_search_sections_fail_fast(tmp_path, search, message):
    with pytest.raises(ConfigError, match=message):
        load_space(write_space(tmp_path, search=search))


def test_malformed_train_sections_and_files_fail_fast(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['train.optim.learning_rate'\]"):
        load_space(write_space(tmp_path, train={"optim": {"learning_rate": 1e-3}}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \[.extra.\]; allowed under the top level"):
        load_space(write_space(tmp_path, extra=1))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="cannot read"):
        load_space(str(bad))
    only_train = tmp_path / "train_only.yaml"
    only_train.write_text("train: {batch: 8}\n")
    with pytest.raises(ConfigError, match="no search section"):
        load_space(str(only_train))


def test_search_cli_dry_run_and_errors(tmp_path, capsys):
    from spd_tune.search.__main__ import main

    assert main(["demo", "--dry-run", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ASHA rungs at kimg [1.0, 2.0, 4.0]" in out and "first trial" in out and "proxy_fd64" in out
    assert "wall clock on 1 GPU(s) (the space asks for no GPU: one GPU assumed): about " in out
    assert not any(tmp_path.iterdir())  # nothing written
    assert main(["cifar10", "--dry-run", "--gpus", "8", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wall clock on 8 GPU(s) (--gpus): about " in out
    assert "FID weights: not on this machine" in out  # the tests' caches hold no real weights
    assert ("this machine has no GPU" in out) != ("this machine: " in out)
    assert main([write_space(tmp_path, search={"params": {}}), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("name", ["cifar10", "imagenet64"])
def test_shipped_gpu_spaces_are_valid_and_score_fid(name):
    space = load_space(name)
    assert space.metric == "fid"
    assert {"m", "T", "lr"} <= set(space.search.params)
    point = space.default_point()
    assert point["m"] == 2.0 and space.train.process.c2 == 0.0086
    if name == "imagenet64":
        assert space.train.process.c1 != 1.59  # CIFAR's c1 is not valid at 64 px
    assert space.rungs()[-1] == space.max_kimg


def test_cifar10_search_needs_real_fid_weights_before_starting(tmp_path, capsys, monkeypatch):
    import torch

    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    from spd_tune.search.__main__ import main

    assert main(["cifar10", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "FID Inception weights" in err and "--fid-weights" in err
    assert not (tmp_path / "cifar10").exists()


def test_a_new_search_never_writes_over_a_previous_one(tmp_path, capsys):
    from spd_tune.search.__main__ import main

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "optuna.db").write_bytes(b"previous study")
    assert main(["demo", "--output", str(tmp_path)]) == 2
    assert "already holds a search" in capsys.readouterr().err
    assert (tmp_path / "demo" / "optuna.db").read_bytes() == b"previous study"


def test_every_depth_rejects_unknown_keys_with_a_suggestion(tmp_path):
    from spd_tune.train.config import load_train_config

    cases = {
        "serach.trials=3": "unknown key(s) ['serach'] (did you mean 'search'?)",  # a new top-level key
        "train.optim.lrr=1e-3": "did you mean 'lr'",
        "train.model.overrides.dropuot=0.1": "['model.overrides.dropuot'] (did you mean 'dropout'?)",
        "search.params.m.hihg=3": "['search.params.m.hihg'] (did you mean 'high'?)",
        "search.asha.grace=1": "did you mean 'grace_kimg'",
        "search.final.top=2": "did you mean 'top_k'",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as err:
            load_space("demo", [override], output=str(tmp_path))
        assert message in str(err.value), (override, str(err.value))
    with pytest.raises(ConfigError, match=r"did you mean 'warmup_kimg'"):
        load_train_config("demo", ["optim.warmup=1"])
    space = tmp_path / "space.yaml"
    space.write_text((SPACES_DIR / "demo.yaml").read_text() + "serach: {trials: 3}\n")
    with pytest.raises(ConfigError, match=r"did you mean 'search'"):
        load_train_config(str(space))  # the train CLI reads a space file too


def test_custom_resources_are_checked_against_the_clusters_names():
    from spd_tune.cluster import check_resource_names

    have = {"CPU": 8.0, "GPU": 4.0, "memory": 1e9, "accelerator_type:A10G": 1.0, "node:127.0.0.1": 1.0}
    check_resource_names({"CPU": 1, "GPU": 1, "accelerator_type:A10G": 1}, have)
    with pytest.raises(ConfigError, match=r"'accelerator_type:A10', which this cluster does not have.*did you mean "
                                          r"'accelerator_type:A10G'\?"):
        check_resource_names({"CPU": 1, "accelerator_type:A10": 1}, have)
    with pytest.raises(ConfigError, match=r"its custom resources: \['accelerator_type:A10G'\]"):
        check_resource_names({"CPU": 1, "scratch": 1}, have)


@pytest.mark.parametrize("sets, message", [
    (["search.posthoc.k_min=300", "search.posthoc.k_max=null"], "k_min=300 is above the lowest T the space allows"),
    (["search.posthoc.samplers=[euler]"], "must be one of"),
    (["search.posthoc.evaluations=-1"], "evaluations >= 1"),
    (["search.posthoc.batch=0"], "batch >= 1"),
    (["search.posthoc.eta=[0.5, 0.2]"], "eta"),
    (["search.posthoc.sigma_rel=[0.2, 0.03]"], "sigma_rel"),
    (["search.posthoc.enabled=true", "train.ema.kind=rate"], "needs train.ema.kind: power"),
    (["search.posthoc.enabled=true", "search.final.top_k=0"], "needs search.final.top_k >= 1"),
    (["search.posthoc.enabled=true", "search.final.seed=1000100"], "reuses seeds of train.eval"),
    (["search.posthoc.enabled=true", "search.posthoc.seed=5000", "search.final.seed=4900"],
     "reuses seeds of search.posthoc"),
])
def test_bad_posthoc_sections_are_refused_before_ray_starts(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_space("demo", sets)


def test_posthoc_k_min_is_checked_against_the_lowest_searched_t():
    # cifar10 searches T from 250
    space = load_space("cifar10", ["search.posthoc.enabled=true", "search.posthoc.k_min=250"])
    assert space.search.posthoc.k_min == 250
    with pytest.raises(ConfigError, match="lowest T the space allows \\(250\\)"):
        load_space("cifar10", ["search.posthoc.enabled=true", "search.posthoc.k_min=251"])


def test_an_around_fit_space_is_centred_on_the_datas_spectrum_fit(tmp_path):
    from spd_tune.data import load_images
    from spd_tune.data.spectrum import fit_data

    sets = [f"train.data.cache_dir={tmp_path}", "train.data.demo_count=512",
            "search.params.m={path: process.m, type: float, around: fit, width: 0.5, widen: false}",
            "search.params.c1={path: process.c1, type: float, around: fit, width: 0.7, log: true}"]
    space = load_space("demo", sets)
    expected = fit_data(load_images(space.train.data), c2=1.0, bootstrap=0)  # the demo's c2; whittle, low band
    assert space.fit["fit"]["estimator"] == "whittle" and space.fit["fit"]["band"] == [0.0, 16 / 6]
    m, c1 = space.search.params["m"], space.search.params["c1"]
    assert (m.low + m.high) / 2 == pytest.approx(expected.m) and m.high - m.low == pytest.approx(1.0)
    assert math.sqrt(c1.low * c1.high) == pytest.approx(expected.c1)
    assert c1.high / c1.low == pytest.approx(math.exp(1.4))
    assert space.default_point()["m"] == pytest.approx(expected.m)  # the first trial uses the fitted values
    assert space.train.process.c1 == pytest.approx(expected.c1)
    assert space.fit["ranges"]["m"] == [m.low, m.high] and space.fit["fit"]["ci"]["m"][0] < expected.m
    assert space.fit["widened"] == {}


def test_around_fit_names_its_estimator_and_band_and_widens_to_every_estimators_m(tmp_path):
    from spd_tune.data import load_images
    from spd_tune.data.spectrum import fit_data

    common = [f"train.data.cache_dir={tmp_path}", "train.data.demo_count=512"]
    space = load_space("demo", [*common, "search.params.m={path: process.m, type: float, around: fit, width: 0.1, "
                                         "estimator: ls, band: [1, 5]}"])
    expected = fit_data(load_images(space.train.data), c2=1.0, bootstrap=0, estimator="ls", band=(1.0, 5.0))
    m = space.search.params["m"]
    others = [e["m"] for e in expected.estimators.values()] + [2.0]
    assert space.default_point()["m"] == pytest.approx(expected.m)
    assert m.low == pytest.approx(min(expected.m - 0.1, *others)) and m.high == pytest.approx(max(expected.m + 0.1,
                                                                                                  *others))
    assert m.high - m.low > 0.2 and space.fit["widened"]["m"]["from"] == pytest.approx([expected.m - 0.1,
                                                                                        expected.m + 0.1])
    assert any("widened to every estimator's m" in line for line in describe_fit(space.fit))
    with pytest.raises(ConfigError, match="different estimators or bands"):
        load_space("demo", [*common, "search.params.m={path: process.m, type: float, around: fit, width: 0.5}",
                            "search.params.c1={path: process.c1, type: float, around: fit, width: 0.5, log: true, "
                            "band: mid}"])


@pytest.mark.parametrize("spec, message", [
    ("{path: process.m, type: float, around: fit, width: -1}", "width=-1.0 must be a positive number"),
    ("{path: process.m, type: float, around: fit, width: 0}", "width=0.0 must be a positive number"),
    ("{path: process.m, type: float, around: fit}", "width=None must be a positive number"),
    ("{path: process.m, type: float, around: mean, width: 1}", "the only centre is 'fit'"),
    ("{path: process.steps, type: int, around: fit, width: 1}", "around: fit centres process.m or process.c1"),
    ("{path: process.m, type: float, around: fit, width: 1, low: 1, high: 3}", "either around: fit"),
    ("{path: process.m, type: float, around: fit, width: 1, estimator: median}", "estimator='median' must be one of"),
    ("{path: process.m, type: float, around: fit, width: 1, band: nyquist}", "band='nyquist' must be one of"),
    ("{path: process.m, type: float, around: fit, width: 1, band: [5, 2]}", "with 0 <= lo < hi"),
    ("{path: process.m, type: float, around: fit, width: 1, widen: maybe}", "widen='maybe' must be true or false"),
    ("{path: process.m, type: float, low: 1, high: 3, band: low}", "belong to around: fit"),
])
def test_a_bad_around_fit_is_refused_before_the_data_is_read(tmp_path, spec, message):
    # the data folder does not exist: these errors come before any image is read
    sets = ["train.data.name=folder", f"train.data.root={tmp_path / 'nowhere'}", f"search.params.m={spec}"]
    with pytest.raises(ConfigError, match=message):
        load_space("demo", sets)


@pytest.mark.parametrize("argv, space, resume", [
    (["demo", "--resume"], "demo", "yes"),
    (["--resume", "demo"], "demo", "yes"),  # a bare --resume never takes the space's name as its value
    (["demo", "--resume", "auto"], "demo", "auto"),
    (["--resume", "auto", "demo"], "demo", "auto"),
    (["demo", "--resume=auto"], "demo", "auto"),
    (["demo"], "demo", None),
])
def test_resume_takes_an_optional_auto(argv, space, resume, capsys):
    from spd_tune.search.__main__ import parse

    args = parse(argv)
    assert (args.space, args.resume) == (space, resume)
    with pytest.raises(SystemExit) as exited:
        parse(["demo", "--resume=sometimes"])
    assert exited.value.code == 2
    assert "--resume takes nothing or 'auto', not 'sometimes'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["spd_tune.search.__main__", "spd_tune.train.__main__", "spd_tune.sample"])
def test_help_describes_every_argument(command, monkeypatch):
    import importlib

    from spd_tune.cli import Parser

    seen = {}

    def grab(self, *args, **kwargs):
        seen["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(Parser, "parse_args", grab)
    with pytest.raises(SystemExit):
        importlib.import_module(command).main(["x"])
    bare = [a.option_strings or [a.dest] for a in seen["parser"]._actions if not a.help]
    assert bare == []


def test_flags_and_files_get_one_line_errors(tmp_path, capsys):
    from spd_tune.search.__main__ import main as search
    from spd_tune.train.__main__ import main as train

    for main in (search, train):
        assert main(["demo", "--fid-weights", str(tmp_path / "none.pth"), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: FID Inception weights not found at {tmp_path / 'none.pth'} (from --fid-weights)")
    (tmp_path / "bad.yaml").write_text("search:\n  trials: 3\n   extra: 2\n")
    assert search([str(tmp_path / "bad.yaml"), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"error: cannot read {tmp_path / 'bad.yaml'}: line 3, column 9: mapping values "
                                       "are not allowed here\n")
    with pytest.raises(SystemExit):
        search(["demo", "--trails", "3"])
    assert "--trails: did you mean --trials?" in capsys.readouterr().err


def test_a_training_run_writes_to_its_own_folder_by_default(tmp_path, capsys, monkeypatch):
    from spd_tune.train.__main__ import main as train

    monkeypatch.chdir(tmp_path)
    assert train(["demo", "--dry-run"]) == 0
    assert f'"output": "{tmp_path / "spd_train"}"' in capsys.readouterr().out  # not a search's spd_runs/<space>
    assert train(["demo", "--dry-run", "--output", str(tmp_path / "mine")]) == 0
    assert f'"output": "{tmp_path / "mine"}"' in capsys.readouterr().out
