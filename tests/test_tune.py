"""``ait2i tune``: declared search spaces, a study that finds a known optimum, kill and resume, two workers on one
SQLite study, presets (round trip, loading wherever a method name goes, refusals), the report, the runner path."""

import json
import math
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

import ait2i  # noqa: E402
from ait2i.methods.presets import read_preset, write_preset  # noqa: E402
from ait2i.methods.space import Choice, FloatRange, IntRange, customize, declare_space, declared_space  # noqa: E402
from ait2i.tuning import FunctionEvaluator, tune  # noqa: E402

REPO_SRC = str(Path(ait2i.__file__).resolve().parents[1])


def _optimum(cfg, seed):
    """Known optimum: scale_factor 12 (log scale), read layers down only, Euclidean aggregation."""
    if not cfg.guides:
        return -3.0
    return (
        -(math.log(cfg.scale_factor / 12.0) ** 2)
        - 0.5 * (cfg.from_where != ("down",))
        - 0.3 * (cfg.aggregation_metric != "euclidean")
        + 0.001 * seed
    )


def _study(storage, name):
    return optuna.load_study(study_name=name, storage=storage)


# -- search spaces -------------------------------------------------------------------------------------------------
def test_every_registered_method_declares_a_valid_space_and_the_cli_narrows_it():
    for name in ait2i.available_methods():
        cfg = ait2i.get_method(name)
        space = type(cfg).search_space()
        assert bool(space) == cfg.guides, name  # vanilla has nothing to tune, every guided method has a space
        for field, spec in space.items():
            for v in spec.ends():  # every end of every range is a setting the config accepts
                cfg.replace(**{field: v})
    ait2i_space = ait2i.AIT2IConfig.search_space()
    assert {"w_isolation", "scale_factor", "max_guided_steps", "from_where", "refinement", "isolation_metric"} <= set(
        ait2i_space
    )
    assert ("down",) in ait2i_space["from_where"].values and ait2i_space["scale_factor"].log
    layout = type(ait2i.get_method("ait2i-layout")).search_space()
    assert set(ait2i_space) < set(layout) and "w_box_aggregation" in layout  # inherits and extends

    cfg = ait2i.get_method("ait2i")
    space, fixed = customize(
        cfg,
        ait2i_space,
        ["scale_factor=5:30:log", "from_where=down|up+down", "num_regions=1:4", "refinement=none|{0:0.05,0.2:0.5}"],
        ["w_presence=0"],
        ["scale_factor", "w_isolation"],
    )
    assert space["scale_factor"] == FloatRange(5.0, 30.0, log=True)
    assert space["num_regions"] == IntRange(1, 4)  # an int field gets an int range
    assert space["from_where"] == Choice((("down",), ("up", "down")))
    assert space["refinement"].values == (None, {0: 0.05, 0.2: 0.5})
    assert set(space) == {"scale_factor", "w_isolation", "from_where", "num_regions", "refinement"}
    assert fixed == {"w_presence": 0.0}
    with pytest.raises(ValueError, match=r"no field 'bogus'; its fields are \[.*w_isolation"):
        customize(cfg, ait2i_space, ["bogus=1:2"])
    with pytest.raises(ValueError, match="no field 'nope'"):
        customize(cfg, ait2i_space, fixes=["nope=1"])
    with pytest.raises(ValueError, match="w_isolation=-1.0 is not a valid setting"):
        customize(cfg, ait2i_space, ["w_isolation=-1:2"])
    with pytest.raises(ValueError, match="from_where=sideways is not a valid setting"):
        customize(cfg, ait2i_space, ["from_where=down|sideways"])


def test_a_third_party_method_declares_its_own_space():
    from dataclasses import dataclass, field

    @dataclass
    class Centre(ait2i.AIT2IConfig):
        w_centre: float = 1.0
        name: str = field(default="centre-test", repr=False)

    assert declared_space(Centre) == ait2i.AIT2IConfig.search_space()  # nearest declared ancestor
    declare_space(Centre, {"w_centre": FloatRange(0.0, 3.0)})
    assert Centre.search_space() == {"w_centre": FloatRange(0.0, 3.0)}
    with pytest.raises(ValueError, match="no field"):
        declare_space(Centre, {"w_missing": FloatRange(0.0, 1.0)})


# -- studies -------------------------------------------------------------------------------------------------------
def test_study_finds_the_known_optimum_prunes_confirms_on_held_out_seeds_and_reports(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    res = tune(
        "ait2i",
        evaluator=FunctionEvaluator(_optimum, items=("a", "b")),
        trials=20,
        seeds="0-3",
        holdout_seeds="10-13",
        storage=storage,
        study="optimum",
        workdir=tmp_path / "work",
        only=["scale_factor", "from_where", "aggregation_metric"],
        space=["from_where=down|up+down|up"],
        out=tmp_path / "best.toml",
        progress=False,
    )
    assert res.config.from_where == ("down",) and res.config.aggregation_metric == "euclidean"
    assert abs(math.log(res.config.scale_factor / 12.0)) < math.log(1.6)  # sampler seeds 0-3 all land within
    study = _study(storage, "optimum")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1  # reported chunk by chunk, the median pruner acts
    assert study.trials[0].user_attrs["default"] and study.trials[0].params["from_where"] == "up+down"
    h = res.holdout
    assert h["seeds"] == "10-13" and h["methods"]["tuned"]["n_images"] == 8
    assert h["paired"]["tuned-default"]["low"] > 0 and h["paired"]["tuned-none"]["delta"] > 0
    preset = read_preset(tmp_path / "best.toml")
    assert preset.config == res.config and preset.provenance["trial"] == res.best.number
    assert preset.provenance["holdout"]["paired"]["tuned-default"]["delta"] == pytest.approx(
        h["paired"]["tuned-default"]["delta"]
    )
    assert preset.provenance["versions"]["optuna"] == optuna.__version__

    from ait2i.cli.tune import write_report

    paths = write_report(storage, "optimum", tmp_path / "report")
    rows = (tmp_path / "report" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 20 and rows[0].startswith("trial,state,reward")
    from PIL import Image

    with Image.open(paths[2]) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert "scale_factor" in (tmp_path / "report" / "importances.md").read_text()


def test_resuming_with_other_settings_is_refused(tmp_path):
    kw = dict(
        evaluator=FunctionEvaluator(_optimum), trials=2, holdout_seeds=None, storage=f"sqlite:///{tmp_path}/s.db",
        study="s", workdir=tmp_path, only=["scale_factor"], progress=False,
    )  # fmt: skip
    tune("ait2i", seeds="0-1", **kw)
    with pytest.raises(ValueError, match=r"study 's' .* is another study \(seeds: study has \[0, 1\]"):
        tune("ait2i", seeds="0-2", **kw)
    tune("ait2i", seeds="0-1", **dict(kw, trials=3))  # same settings: resumes, one more trial
    assert len(_study(kw["storage"], "s").trials) == 3


SCRIPT = """
import os, sys, time
sys.path.insert(0, {src!r})
from pathlib import Path
from ait2i.tuning import Evaluation, tune

LOG = Path({log!r})


class Slow:
    def evaluate(self, label, cfg, seeds, folder):
        with open(LOG, "a") as f:
            f.write(f"{{Path(folder).name}} {{cfg.scale_factor!r}} {{os.getpid()}}\\n")
        time.sleep({sleep})
        return Evaluation({{("p", s): -abs(cfg.scale_factor - 12.0) for s in seeds}}, {{"p": "p"}}, 0.01)


ready = Path({log!r} + ".ready-" + str(os.getpid()))
ready.touch()
while len(list(Path({log!r}).parent.glob("*.ready-*"))) < {barrier}:
    time.sleep(0.05)
tune("ait2i", evaluator=Slow(), trials={trials}, seeds="0", chunks=1, holdout_seeds=None, storage={storage!r},
     study="s", workdir={work!r}, only=["scale_factor"], heartbeat={heartbeat}, sampler_seed=int(sys.argv[1]),
     join=True, progress=False)
"""


def _script(tmp_path, trials, sleep, barrier=1, heartbeat=1):
    path = tmp_path / "run_study.py"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    log = str(tmp_path / "evals.log")
    text = SCRIPT.format(src=REPO_SRC, log=log, sleep=sleep, trials=trials, storage=storage,
                         work=str(tmp_path / "work"), barrier=barrier, heartbeat=heartbeat)  # fmt: skip
    path.write_text(textwrap.dedent(text))
    return path, storage, Path(log)


def _log(path: Path) -> list[tuple[str, float, int]]:
    if not path.exists():
        return []
    return [(a, float(b), int(c)) for a, b, c in (ln.split() for ln in path.read_text().splitlines())]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_SRC)


def test_killed_study_resumes_where_it_stopped_and_redoes_no_finished_trial(tmp_path, monkeypatch):
    script, storage, log = _script(tmp_path, trials=6, sleep=0.4, heartbeat=1)
    proc = subprocess.Popen([sys.executable, str(script), "0"], env=_env())
    deadline = time.time() + 120
    while len(_log(log)) < 5 and time.time() < deadline:  # four trials done, the fifth running
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t for t in _study(storage, "s").trials}
    done_before = {n for n, t in before.items() if t.state == optuna.trial.TrialState.COMPLETE}
    killed = [n for n, t in before.items() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(done_before) == 4 and len(killed) == 1

    # resumed at once (in this process: no start-up time), while the killed trial still looks alive (3 s grace)
    monkeypatch.setattr(sys, "argv", [str(script), "0"])
    runpy.run_path(str(script), run_name="__main__")
    study = _study(storage, "s")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the total is reached: one new trial, then the killed one is waited for (the cap counts it while it runs),
    # failed when its heartbeat stops and its config run again
    assert len(complete) == 6
    for n in done_before:  # finished trials are kept as they were, never evaluated again
        assert study.trials[n].params == before[n].params and study.trials[n].values == before[n].values
    folders = [f for f, _, _ in _log(log)]
    assert all(folders.count(f"{n:04d}") == 1 for n in done_before)
    (k,) = killed
    assert study.trials[k].state == optuna.trial.TrialState.FAIL  # failed once its heartbeat stopped
    retry = [t for t in complete if t.system_attrs.get("failed_trial") == k]
    assert len(retry) == 1 and retry[0].params == before[k].params  # its config ran again, in its own folder
    assert folders.count(f"{k:04d}") == 2


def test_two_workers_share_one_sqlite_study_up_to_the_total(tmp_path):
    script, storage, log = _script(tmp_path, trials=6, sleep=0.3, barrier=2)
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], env=_env()) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=180) == 0
    study = _study(storage, "s")
    counted = [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("over_cap")]
    assert len(counted) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    evals = _log(log)
    folders = [f for f, _, _ in evals]
    assert sorted(folders) == sorted(f"{t.number:04d}" for t in counted)  # each trial evaluated once, by one worker
    assert len({pid for *_, pid in evals}) == 2  # both processes ran trials
    assert len({t.params["scale_factor"] for t in counted}) == 6  # differently seeded samplers: no duplicate


# -- presets -------------------------------------------------------------------------------------------------------
def test_preset_round_trip_keeps_config_and_provenance_and_loads_wherever_a_method_name_does(tmp_path):
    cfg = ait2i.get_method("ait2i").replace(
        scale_factor=31.25, from_where=("down",), refinement={0: 0.05, 0.2: 0.5, 10: 0.8}, attn_res=None,
        max_guided_steps=12, isolation_metric="cosine",
    )  # fmt: skip
    prov = {
        "study": "s",
        "trial": 7,
        "model": {"name": "m", "sha256": "ab"},
        "holdout": {"paired": {"a-b": {"delta": 0.1}}},
    }
    path = write_preset(tmp_path / "tuned.toml", cfg, prov)
    text = path.read_text()
    assert 'method = "ait2i"' in text and "w_isolation" not in text  # only the fields that differ
    p = read_preset(path)
    assert p.config == cfg and p.provenance == prov
    assert type(p.config.max_guided_steps) is int and set(p.config.refinement) == {0, 0.2, 10}
    assert ait2i.get_method(str(path)) == cfg

    from ait2i.bench.specs import parse_methods
    from ait2i.cli import build_parser
    from ait2i.cli.generate import method_config

    assert parse_methods(str(path)) == [(str(path), cfg)]  # ait2i bench --methods tuned.toml
    assert parse_methods(f"{path}:w_presence=0")[0][1] == cfg.replace(w_presence=0.0)
    args = build_parser(["generate"]).parse_args(["generate", "a red circle", "--method", str(path)])
    assert method_config(args.method, {}) == cfg  # ait2i generate --method tuned.toml


@pytest.mark.parametrize(
    "text, message",
    [
        ('method = "ait2i"\n[config]\nw_bogus = 1.0\n', r"ait2i has no field\(s\) \['w_bogus'\]"),
        ('method = "dalle"\n', "for the method 'dalle', which is not registered"),
        ('method = "ait2i"\n[config]\nw_isolation = -1.0\n', "w_isolation must be"),
        ('method = "ait2i"\n[config\n', "is not valid TOML"),
        ('method = "ait2i"\nextra = 1\n', "unknown top-level key"),
        ("[config]\nscale_factor = 3.0\n", "'method' must name a registered method"),
    ],
)
def test_bad_preset_files_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        ait2i.get_method(str(path))
    assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        ait2i.get_method(str(tmp_path / "missing.toml"))


# -- refusals before anything runs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--space", "bogus=1:2"], "no field 'bogus'"),
        (["--seeds", "0-7", "--holdout-seeds", "5-9"], "overlap"),
        (["--objectives", "time"], "objectives must be"),
        (["--out", "x.json"], "must end in .toml"),
        (["--method", "none"], "nothing to tune"),
        (["--method", "dalle"], "unknown method 'dalle'"),
        (["--suite", "nosuch"], "unknown suite"),
        (["--reward", "iou"], "not a score of suite shapes"),
        (["report", "--study", "s"], "needs --storage, --study and --out"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2_before_loading(tmp_path, capsys, monkeypatch, argv, message):
    from ait2i import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ait2i.bench.runner.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["tune", "--trials", "2", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ait2i: error:") and message in err


def test_cli_without_optuna_says_how_to_install(monkeypatch, capsys):
    from ait2i import cli

    monkeypatch.setitem(sys.modules, "optuna", None)
    assert cli.main(["tune", "--trials", "2"]) == 2
    assert 'pip install -e ".[tune]"' in capsys.readouterr().err


# -- through the runner on a tiny pipeline ---------------------------------------------------------------------------
def _down_only(cfg, row):
    """A synthetic reward of the config (read layers down only is best), read per generated image row."""
    assert row["image"].endswith(".png") and "clean_binding" in row
    return 1.0 if cfg.from_where == ("down",) else 0.0


@pytest.mark.slow
def test_tune_runs_trials_through_the_runner_on_a_tiny_pipeline(tmp_path):
    from ait2i.io import read_png_params
    from ait2i.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    res = tune(
        "ait2i", pipe=pipe, model="tiny", suite="shapes:two", limit=1, trials=5, seeds="0-1", chunks=2,
        holdout_seeds="50", reward=_down_only, space=["from_where=down|up+down"], only=["from_where"],
        fix=["attn_res=8"], protocol_overrides={"num_inference_steps": 2, "height": 32, "width": 32},
        workdir=tmp_path / "w", out=tmp_path / "p.toml", progress=False,
    )  # fmt: skip
    assert res.config.from_where == ("down",)
    pngs = sorted((tmp_path / "w" / "trials").rglob("*.png"))
    assert len(pngs) >= 2 * 5 - 2  # every unpruned trial wrote its images through the runner
    params = read_png_params(pngs[0])
    assert params["method"] == "ait2i" and params["protocol"]["num_inference_steps"] == 2
    rows = [json.loads(ln) for ln in (tmp_path / "w" / "holdout" / "rows.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {f"trial-{res.best.number}", "ait2i+fixed", "none"}
    prov = read_preset(tmp_path / "p.toml").provenance
    assert prov["model"]["hashed"] == "loaded" and len(prov["model"]["sha256"]) == 64


def _layers_cost(cfg, seed):
    """Reward 1 unless only the up path is read; time grows with the number of parts read."""
    time.sleep(0.004 * len(cfg.from_where))
    return 0.0 if cfg.from_where == ("up",) else 1.0


def test_reward_against_time_uses_nsga2_and_the_preset_is_the_fastest_within_tolerance(tmp_path):
    res = tune(
        "ait2i", evaluator=FunctionEvaluator(_layers_cost, clock="wall"), trials=8, seeds="0-2", holdout_seeds="9",
        objectives=("reward", "time"), storage=f"sqlite:///{tmp_path}/s.db", study="fast", workdir=tmp_path,
        only=["from_where"], progress=False,
    )  # fmt: skip
    study = res.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and all(len(t.values) == 2 for t in done)
    ok = [t for t in done if t.values[0] >= 1.0 - 0.03]  # within the tolerance of the default's reward (1.0)
    assert res.best.number == min(ok, key=lambda t: t.values[1]).number
    assert res.holdout["methods"]["tuned"]["time_vs_none"] > 0


@pytest.mark.slow
def test_model_identity_hashes_config_files_and_weights(tmp_path):
    import shutil

    from ait2i.testing import tiny_sd_pipeline
    from ait2i.tuning import model_fingerprint

    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path / "a", safe_serialization=True)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = model_fingerprint(str(tmp_path / "a")), model_fingerprint(str(tmp_path / "b"))
    assert a["hashed"] == "files" and a["sha256"] == b["sha256"]  # two copies agree
    cfg = tmp_path / "b" / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    assert model_fingerprint(str(tmp_path / "b"))["sha256"] != a["sha256"]  # a config file counts
    loaded = model_fingerprint(None, pipe, loaded=True)
    assert loaded["hashed"] == "loaded" and loaded["name"] == "loaded pipeline"
    assert model_fingerprint(None, tiny_sd_pipeline(seed=1), loaded=True)["sha256"] != loaded["sha256"]


def test_every_method_default_lies_inside_its_own_space_so_the_default_trial_is_the_default():
    """The first trial is labelled 'default': every searched field of the default config must encode (an empty
    refinement dict once fell outside the space, and Optuna sampled it for the 'default' trial)."""
    import dataclasses

    from ait2i.methods.space import encode_params

    for name in ait2i.available_methods():
        cfg = ait2i.get_method(name)
        space = type(cfg).search_space()
        if not cfg.guides or not space:
            continue
        missing = set(space) - set(encode_params(space, dataclasses.asdict(cfg)))
        # only windows in absolute steps (ait2i-paper's and A&E's "25 of 50", A&E's refinement at steps 10 and 20)
        # cannot be fractions of the run: those methods get no default trial (held-out still runs their default)
        absolute = {"max_guided_steps": isinstance(cfg.max_guided_steps, int),
                    "refinement": any(isinstance(k, int) and k > 0 for k in cfg.refinement)}  # fmt: skip
        assert all(absolute.get(k, False) for k in missing), (name, missing)
    assert ait2i.get_method("ait2i").refinement == {}  # the case that fell outside the space


def test_holdout_verdict_says_when_tuning_lost():
    from ait2i.tuning import holdout_verdict

    def res(low, high):
        return {"paired": {"tuned-default": {"delta": (low + high) / 2, "low": low, "high": high}}}

    assert holdout_verdict(res(-0.48, -0.04)).startswith("worse than the default")
    assert holdout_verdict(res(0.02, 0.2)).startswith("better than the default")
    assert holdout_verdict(res(-0.1, 0.2)).startswith("not distinguishable")
