"""``ait2i tune``: search a method's declared space with Optuna, then confirm the winner on held-out seeds.

A **trial** is one config of the method (its declared space, :mod:`ait2i.methods.space`, narrowed or widened by
the user). It is scored through the one benchmark runner (:func:`ait2i.bench.runner.generate`: every image a PNG
with its parameters in ``<workdir>/trials/<n>/``, resumable, scored by the suite's scorers as it is made) on the
search seeds, chunk by chunk; after each chunk the mean reward so far is reported, so Optuna's median pruner stops
a poor trial early. The reward is a row key of a scorer (``clean_binding`` of the ShapesWorld checker, ``iou`` of
the layout scorer, ``blip_vqa`` or ``clip_full`` on a prompt file) or a function ``(config, row) -> float``;
time per image (CPU process time or wall time) is an optional second objective (NSGA-II then).

The study lives in Optuna's RDB storage (SQLite by default, any SQLAlchemy URL Optuna accepts, PostgreSQL for a
cluster): a killed study resumes (finished trials are kept; a trial killed mid-way is failed once its heartbeat
stops, and its config is run again, reusing the images it had made), and several processes share one study up
to a total trial count. Every study ends with the held-out check: the best trial, the default and vanilla
(``none``) on seeds the search never saw, with paired intervals (:mod:`ait2i.bench.stats`); the result goes into
the preset (:mod:`ait2i.methods.presets`) with the model's identity and the library versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench import rundir, runner, stats
from .bench.runner import resolve_protocol, versions
from .bench.scorers import KEYS, load_scorers
from .bench.suites import Item, Suite, load_suite
from .hosts import host_for
from .models import SHIPPED_MODEL, model_identity, shipped_folder, shipped_name
from .parsing import parse_seeds

#: Objectives a study can have: the reward (maximised) and the time per image (minimised).
OBJECTIVES = ("reward", "time")
CLOCKS = ("cpu", "wall")
#: Reward names per scorer: the scorer's row keys (the first is its headline, used for the scorer's own name).
INSTALL_HINT = 'ait2i tune needs Optuna: pip install -e ".[tune]" (or pip install "ait2i[tune]")'


def require_optuna():
    """Import Optuna, or refuse with the install command."""
    try:
        import optuna
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# -- evaluation ------------------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Rewards of one config on some seeds: ``values[(prompt key, seed)]``, ``categories[prompt key]``, and the
    time per image (seconds, by the evaluator's clock)."""

    values: dict[tuple[str, int], float]
    categories: dict[str, str] = field(default_factory=dict)
    seconds_per_image: float = float("nan")


def _clock(name: str) -> Callable[[], float]:
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {name!r}")
    return time.process_time if name == "cpu" else time.perf_counter


class RunnerEvaluator:
    """Scores a config through the benchmark runner: generate (resumable PNGs), score each batch, read the rows.

    Args:
        pipe: the loaded pipeline.
        suite (`Suite`): the prompts (:func:`ait2i.bench.suites.load_suite` or :func:`prompt_file_suite`).
        protocol (`dict`): :func:`ait2i.bench.runner.resolve_protocol`.
        model (`str`): the model's name as the runner's manifest records it.
        scorers (`dict`): the runner's scorers (name -> scorer).
        reward (`str` or `Callable`): a row key, or ``reward(config, row) -> float``.
        clock (`str`): ``"cpu"`` (process time) or ``"wall"``.
        generate_fn (`Callable`, *optional*): passed to the runner (tests).
    """

    def __init__(self, pipe, suite, protocol, model, scorers, reward, clock="cpu", batch_size=None, generate_fn=None):
        self.pipe, self.suite, self.protocol, self.model = pipe, suite, protocol, model
        self.scorers, self.reward, self.clock = scorers, reward, clock
        self.batch_size, self.generate_fn = batch_size, generate_fn

    def evaluate(self, label: str, cfg, seeds: Sequence[int], folder: Path) -> Evaluation:
        run = runner.Run(self.suite, [(label, cfg)], tuple(seeds), self.protocol, self.model, Path(folder))
        times = Path(folder) / "times.jsonl"
        key = {"label": label, "seeds": list(seeds), "clock": self.clock}
        known = [r for r in _read_jsonl(times) if {k: r.get(k) for k in key} == key]
        tick = _clock(self.clock)
        t0 = tick()
        rep = runner.generate(
            self.pipe, run, scorers=self.scorers, progress=False, batch_size=self.batch_size,
            generate_fn=self.generate_fn, force=not known and _has_images(folder, run),
        )  # fmt: skip
        if rep.generated:
            spi = (tick() - t0) / len(rep.generated)
            rundir.append_rows(times, [dict(key, seconds_per_image=spi, images=len(rep.generated))])
        else:
            spi = known[-1]["seconds_per_image"]
        latest = {}
        for r in rundir.load_rows(folder):
            if r.get("method") == label and r.get("seed") in seeds:
                latest[(f"{r['category']}/{r['index']}", r["seed"])] = r
        values, cats = {}, {}
        for it in self.suite.items:
            for s in seeds:
                k = (f"{it.category}/{it.index}", s)
                if k not in latest:
                    raise RuntimeError(f"{folder}: no scored row for {it.prompt!r} seed {s} after generation")
                values[k] = _reward_of(self.reward, cfg, latest[k])
                cats[k[0]] = it.category
        return Evaluation(values, cats, spi)


def _read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file (a line cut by a kill is ignored)."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


def _has_images(folder: Path, run) -> bool:
    return any((Path(folder) / run.path(lab, it, s)).exists() for lab, _, it in run.units() for s in run.seeds)


def _reward_of(reward, cfg, row) -> float:
    v = reward(cfg, row) if callable(reward) else row.get(reward)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"the reward {getattr(reward, '__name__', reward)!r} gave {v!r} for {row.get('image')}")
    return float(v)


class FunctionEvaluator:
    """A reward computed from the config and the seed alone, ``fn(config, seed) -> float`` (no images): for tests
    of the study machinery and for tuning anything that is not an image score."""

    def __init__(self, fn: Callable, items: Sequence[str] = ("all",), clock: str = "cpu"):
        self.fn, self.items, self.clock = fn, tuple(items), clock

    def evaluate(self, label, cfg, seeds, folder) -> Evaluation:
        tick = _clock(self.clock)
        t0 = tick()
        values = {(it, s): float(self.fn(cfg, s)) for it in self.items for s in seeds}
        return Evaluation(values, {it: it for it in self.items}, (tick() - t0) / max(len(values), 1))


# -- what a study is -----------------------------------------------------------------------------------------------
@dataclass
class StudySpec:
    """Everything that makes two runs the same study (recorded in the study; a mismatch is refused on resume)."""

    method: str
    model: str
    suite: str
    seeds: tuple[int, ...]
    objectives: tuple[str, ...] = ("reward",)
    reward: str = "clean_binding"
    protocol: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    chunks: int = 4

    def record(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def open_storage(url: str, heartbeat: int = 10, grace: int | None = None):
    """Optuna's RDB storage at ``url`` (SQLite folders are created), with heartbeats so a killed trial is failed
    and its config retried after ``grace`` seconds (``3 * heartbeat`` by default)."""
    optuna = require_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs = {}
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    try:  # under the file lock: processes starting together would race to create the tables
        with _quiet_experimental(optuna), _file_lock(url):
            return RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=grace or 3 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3), **kwargs,
            )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a bad URL or an unreachable server: one message
        raise ValueError(f"cannot open the study storage {redact(url)!r} ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def _quiet_experimental(optuna):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def redact(url: str) -> str:
    """A storage URL without its password (what gets printed and recorded)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1] if "@" in url else url


def open_study(storage, name: str, spec: StudySpec, space: Mapping, base_cfg, sampler_seed: int = 0, worker: int = 0):
    """Create or resume the study ``name`` (refused if it was made for another model, method, suite, seeds,
    reward, objectives, protocol or fixed values); the method's defaults are enqueued as its first trial."""
    optuna = require_optuna()
    from .methods.space import encode_params

    multi = "time" in spec.objectives
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    if multi:
        sampler = optuna.samplers.NSGAIISampler(seed=sampler_seed + worker)
        pruner = optuna.pruners.NopPruner()
    else:
        with _quiet_experimental(optuna):
            sampler = optuna.samplers.TPESampler(seed=sampler_seed + worker, multivariate=True, constant_liar=True)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    mine = spec.record()
    with _file_lock(_url(storage)):  # processes starting together create the study and its first trial once
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, sampler=sampler, pruner=pruner,
            load_if_exists=True,
        )  # fmt: skip
        old = study.user_attrs.get("ait2i")
        if old is None:
            study.set_user_attr("ait2i", mine)
            default = encode_params(space, dataclasses.asdict(base_cfg))
            outside = sorted(set(space) - set(default))
            if outside:  # a trial with these sampled would not be the default: never label one so
                print(f"the default of {base_cfg.name} lies outside the searched space ({', '.join(outside)}): "
                      "no default trial; the held-out comparison still runs the default itself")  # fmt: skip
            else:
                study.enqueue_trial(default, {"default": True}, skip_if_exists=True)
    if old is not None and old != mine:
        diff = [f"{k}: study has {old.get(k)!r}, this run {mine[k]!r}" for k in mine if old.get(k) != mine[k]]
        raise ValueError(f"study {name!r} in {redact(_url(storage))} is another study ({'; '.join(diff)}); use "
                         "another --study name, or the same settings to resume it")  # fmt: skip
    return study


def counted(t) -> bool:
    """Trials that count toward the total: finished (complete or pruned) or running."""
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _ask_lock(storage):
    """Serialise "count, then ask" between processes sharing a SQLite file (exact total); other databases rely
    on the check after asking (a rare surplus trial is failed as over the cap)."""
    return _file_lock(_url(storage))


@contextlib.contextmanager
def _file_lock(url: str):
    """An exclusive lock on ``<database>.lock`` next to a SQLite file (nothing for other databases)."""
    import fcntl

    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        yield
        return
    with open(Path(path).expanduser().with_suffix(".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _url(storage) -> str:
    return str(getattr(getattr(storage, "_backend", storage), "url", ""))


def _heartbeat(storage, trial_id: int, stop: threading.Event) -> None:
    while not stop.wait(storage.get_heartbeat_interval()):
        with contextlib.suppress(Exception):
            storage.record_heartbeat(trial_id)


def trial_folder(study, trial, workdir: Path) -> Path:
    """``<workdir>/trials/<n>``; a retried trial reuses the folder (and the images) of the trial it retries."""
    frozen = study._storage.get_trial(trial._trial_id)
    n = frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial", frozen.number))
    return Path(workdir) / "trials" / f"{int(n):04d}"


def optimize(
    study,
    evaluator,
    space: Mapping,
    base_cfg,
    *,
    fixed: Mapping | None = None,
    trials: int,
    seeds: Sequence[int],
    chunks: int = 4,
    objectives: Sequence[str] = ("reward",),
    workdir: str | os.PathLike = "runs/tune",
    progress: bool = True,
    poll: float | None = None,
) -> int:
    """Run trials of ``study`` until it holds ``trials`` finished ones (counting every process's); returns the
    number this process ran. A trial killed elsewhere is failed when its heartbeat stops and its config is run
    again; this process waits for running trials before it stops, so the total is reached.
    """
    optuna = require_optuna()
    import numpy as np
    from optuna.trial import TrialState

    from .methods.space import suggest

    storage, fixed = study._storage, dict(fixed or {})
    groups = [tuple(int(s) for s in g) for g in np.array_split(np.asarray(seeds), min(chunks, len(seeds)))]
    poll = poll or max(1.0, storage.get_heartbeat_interval() / 2)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=trials, unit="trial", desc=f"tune {study.study_name}")
    ran = 0
    try:
        while True:
            with _quiet_experimental(optuna):
                optuna.storages.fail_stale_trials(study)
            with _ask_lock(storage):
                all_trials = study.get_trials(deepcopy=False)
                n_counted = sum(counted(t) for t in all_trials)
                running = any(t.state == TrialState.RUNNING for t in all_trials)
                if bar is not None:
                    _show(bar, study, all_trials)
                trial = None
                if n_counted < trials:
                    with warnings.catch_warnings():  # we run the heartbeat ourselves (see _run_trial)
                        warnings.filterwarnings("ignore", message="Heartbeat of storage")
                        trial = study.ask()
                    storage.record_heartbeat(trial._trial_id)
            if trial is None:
                if not running:
                    break
                time.sleep(poll)  # wait for the others' trials: one may have been killed and come back
                continue
            exact = _url(storage).startswith("sqlite:///")  # the file lock made count-and-ask atomic
            ahead = [] if exact else [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
            if sum(counted(t) for t in ahead) >= trials:
                trial.set_user_attr("over_cap", True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            _run_trial(study, trial, evaluator, space, base_cfg, fixed, groups, objectives, Path(workdir), suggest)
            ran += 1
    finally:
        if bar is not None:
            _show(bar, study, study.get_trials(deepcopy=False))
            bar.close()
    return ran


def _record(trial, reward: float, spi: float, images: float) -> None:
    trial.set_user_attr("reward", reward)
    trial.set_user_attr("seconds_per_image", spi)
    trial.set_user_attr("n_images", int(images))


def _show(bar, study, all_trials) -> None:
    from optuna.trial import TrialState

    done = [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    bar.n = len(done)
    rewards = [t.user_attrs["reward"] for t in done if t.state == TrialState.COMPLETE and "reward" in t.user_attrs]
    bar.set_postfix(best=f"{max(rewards):.3f}" if rewards else "-", pruned=len(done) - len(rewards), refresh=True)


def _run_trial(study, trial, evaluator, space, base_cfg, fixed, groups, objectives, workdir, suggest) -> None:
    optuna = require_optuna()
    from optuna.trial import TrialState

    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(study._storage, trial._trial_id, stop), daemon=True)
    beat.start()
    try:
        params = suggest(trial, space)
        cfg = base_cfg.replace(**fixed, **params)
        folder = trial_folder(study, trial, workdir)
        values: dict = {}
        seconds = images = 0.0
        for k, chunk in enumerate(groups):
            ev = evaluator.evaluate(cfg.name, cfg, chunk, folder)
            values.update(ev.values)
            seconds, images = seconds + ev.seconds_per_image * len(ev.values), images + len(ev.values)
            reward = float(sum(values.values()) / len(values))
            if len(objectives) == 1 and k < len(groups) - 1:
                trial.report(reward, k)
                if trial.should_prune():
                    _record(trial, reward, seconds / images, images)
                    raise optuna.TrialPruned()
        spi = seconds / images
        _record(trial, reward, spi, images)
        study.tell(trial, [reward, spi] if "time" in objectives else reward)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException:
        frozen = study._storage.get_trial(trial._trial_id)
        origin = frozen.user_attrs.get("retry_of", frozen.number)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), {"retry_of": origin})  # run again on resume, reusing its images
        raise
    finally:
        stop.set()


# -- after the search ------------------------------------------------------------------------------------------------
def finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def pick_best(study, tolerance: float = 0.03):
    """The trial a preset is made of: the highest reward; with time as an objective, the fastest trial whose
    reward is within ``tolerance`` of the default's (the enqueued first trial) or, without it, of the best."""
    done = finished(study)
    if not done:
        raise ValueError(f"study {study.study_name!r} has no complete trial yet; run more trials")
    reward = lambda t: t.user_attrs.get("reward", t.values[0])  # noqa: E731
    if len(study.directions) == 1:
        return max(done, key=lambda t: (reward(t), -t.number))
    default = [t for t in done if t.user_attrs.get("default")]
    floor = (reward(default[0]) if default else max(map(reward, done))) - tolerance
    ok = [t for t in done if reward(t) >= floor] or done
    return min(ok, key=lambda t: (t.user_attrs["seconds_per_image"], -reward(t)))


def config_of(trial, space: Mapping, base_cfg, fixed: Mapping | None = None):
    """The config a finished trial ran."""
    from .methods.space import decode_params

    params = decode_params(space, trial.params) if space else dict(trial.params)
    return base_cfg.replace(**dict(fixed or {}), **params)


def holdout(evaluator, methods: Sequence[tuple[str, str, Any]], seeds: Sequence[int], folder: Path) -> dict:
    """Score ``methods`` (``(role, label, config)``, roles ``tuned``, ``default``, ``none``) on the held-out
    ``seeds``: each mean with its interval and time per image, the paired differences, and per category."""

    evs = {role: evaluator.evaluate(label, cfg, seeds, folder) for role, label, cfg in methods}
    labels = {role: label for role, label, _ in methods}
    none_t = evs["none"].seconds_per_image if "none" in evs else float("nan")
    out: dict[str, Any] = {"seeds": _seed_text(seeds), "methods": {}, "paired": {}, "categories": {}}
    for role, ev in evs.items():
        s = stats.summarize(ev.values)
        out["methods"][role] = {
            "label": labels[role], **{k: s[k] for k in ("mean", "low", "high", "n_images", "n_prompts")},
            "seconds_per_image": ev.seconds_per_image, "time_vs_none": ev.seconds_per_image / none_t,
        }  # fmt: skip
    pairs = [(a, b) for a, b in (("tuned", "default"), ("tuned", "none"), ("default", "none")) if a in evs and b in evs]
    for a, b in pairs:
        out["paired"][f"{a}-{b}"] = stats.paired(evs[a].values, evs[b].values)
    cats = evs[methods[0][0]].categories
    for cat in dict.fromkeys(cats.values()):
        sub = {role: {k: v for k, v in ev.values.items() if cats.get(k[0]) == cat} for role, ev in evs.items()}
        row = {role: stats.summarize(v)["mean"] for role, v in sub.items()}
        for a, b in pairs:
            p = stats.paired(sub[a], sub[b])
            row[f"{a}-{b}"] = {k: p[k] for k in ("delta", "low", "high")}
        out["categories"][cat] = row
    return out


def holdout_markdown(result: Mapping, reward: str) -> str:
    """The held-out table (means with 95% intervals, time per image and its ratio to vanilla, paired deltas)."""
    lines = [f"Held-out seeds {result['seeds']}, reward {reward} (95% two-level bootstrap intervals):", ""]
    lines += ["| role | method | mean | interval | images | s/image | time / none |", "|---|---|---|---|---|---|---|"]
    for role, m in result["methods"].items():
        lines.append(
            f"| {role} | {m['label']} | {m['mean']:.3f} | [{m['low']:.3f}, {m['high']:.3f}] | {m['n_images']} "
            f"| {m['seconds_per_image']:.3g} | {m['time_vs_none']:.2f}x |"
        )
    lines += ["", "| paired difference | delta | interval | better / worse |", "|---|---|---|---|"]
    for name, p in result["paired"].items():
        lines.append(
            f"| {name.replace('-', ' - ')} | {p['delta']:+.3f} | [{p['low']:+.3f}, {p['high']:+.3f}] "
            f"| {p['better']} / {p['worse']} |"
        )
    if len(result["categories"]) > 1:
        roles = list(result["methods"])
        lines += ["", "| category | " + " | ".join(roles) + " | tuned - default |", "|---" * (len(roles) + 2) + "|"]
        for cat, row in result["categories"].items():
            d = row.get("tuned-default")
            delta = f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "-"
            lines.append(f"| {cat} | " + " | ".join(f"{row[r]:.3f}" for r in roles) + f" | {delta} |")
    return "\n".join(lines)


def _seed_text(seeds: Sequence[int]) -> str:
    seeds = sorted(seeds)
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds))


# -- model identity ------------------------------------------------------------------------------------------------
def model_fingerprint(model: str | None = None, pipe=None, loaded: bool = False) -> dict:
    """The model's identity for a preset: its name and the SHA-256 of its config files and weights (a local
    folder, the shipped ShapesWorld models, a hub id found in the local cache), else of the loaded components'
    configs and tensors (always with ``loaded=True``: a pipeline passed in, whatever its name)."""
    import hashlib

    folder = None
    if loaded:
        pass
    elif shipped_name(model) is not None:
        folder = Path(shipped_folder(shipped_name(model)))
    elif Path(model).expanduser().is_dir():
        folder = Path(model).expanduser()
    else:
        with contextlib.suppress(Exception):
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model, local_files_only=True))
    h = hashlib.sha256()
    if folder is not None:
        files = sorted(
            p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt", ".model")
        )
        if not any(p.suffix == ".safetensors" for p in files):
            folder = None
        for p in files if folder is not None else ():
            h.update(p.relative_to(folder).as_posix().encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
    if folder is None:
        if pipe is None:
            raise ValueError(f"cannot identify the model {model!r}: no local files and no loaded pipeline")
        for name, comp in sorted(getattr(pipe, "components", {}).items()):
            h.update(name.encode())
            cfg = getattr(comp, "config", None)
            cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg) if isinstance(cfg, Mapping) else None
            if hasattr(comp, "get_vocab"):  # a tokenizer: its vocabulary
                cfg = {"vocab": comp.get_vocab(), "class": type(comp).__name__}
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            if hasattr(comp, "state_dict"):
                for k, v in sorted(comp.state_dict().items()):
                    h.update(k.encode())
                    h.update(v.detach().float().cpu().numpy().tobytes())
    name = model or ("loaded pipeline" if loaded else SHIPPED_MODEL)
    return {"name": name, "sha256": h.hexdigest(), "hashed": "files" if folder else "loaded"}


# -- rewards and suites ----------------------------------------------------------------------------------------------
def resolve_reward(spec: str | Callable | None, suite) -> tuple[str | Callable, str, list[str]]:
    """``(reward, its name, scorers to run)``: a scorer's row key (``clean_binding``, ``iou``, ``blip_vqa``, ...),
    a scorer name (its headline key), ``module:function`` (``fn(config, row) -> float``) or a callable."""

    if spec is None:
        spec = suite.scorers[0] if suite.scorers else None
        if spec is None:
            raise ValueError(f"suite {suite.name} has no default scorer; pass --reward")
    if callable(spec):
        return spec, getattr(spec, "__name__", "custom"), list(suite.scorers)
    if spec in KEYS:
        spec = KEYS[spec][0]
    if ":" in spec:
        mod, _, fn = spec.partition(":")
        try:
            func = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--reward {spec!r}: cannot import {fn} from {mod} ({e})") from None
        return func, spec, list(suite.scorers)
    owners = [name for name, keys in KEYS.items() if spec in keys]
    usable = [o for o in owners if o in suite.applicable]
    if not usable:
        known = sorted({k for n in suite.applicable for k in KEYS.get(n, ())})
        raise ValueError(
            f"reward {spec!r} is not a score of suite {suite.name}; use one of {known}, a scorer name, or "
            "module:function (fn(config, row) -> float)"
        )
    return spec, spec, [usable[0]]


def prompt_file_suite(path: str | os.PathLike, protocol: str = "ane"):
    """A suite from a prompt file: one prompt a line, ``prompt | subject; subject`` (``#`` comments), or a JSON
    list / JSON lines of ``{"prompt": ..., "subjects": [...]}``. Scored by VQA (and CLIP) as T2I-CompBench does."""

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    entries: list = []
    try:
        if p.suffix in (".json", ".jsonl"):
            data = json.loads(text) if p.suffix == ".json" else [json.loads(ln) for ln in text.splitlines() if ln]
            entries = [(d["prompt"], list(d.get("subjects", []))) for d in data]
        else:
            for ln in text.splitlines():
                if ln.strip() and not ln.lstrip().startswith("#"):
                    prompt, _, subj = ln.partition("|")
                    entries.append((prompt.strip(), [s.strip() for s in subj.split(";") if s.strip()]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"prompt file {path}: cannot read it ({type(e).__name__}: {e})") from None
    bad = [pr for pr, subj in entries if not pr or not subj]
    if not entries or bad:
        raise ValueError(f"prompt file {path}: every line needs 'prompt | subject; subject' (bad: {bad[:3]})")
    items = tuple(Item("prompts", i, pr, tuple(subj)) for i, (pr, subj) in enumerate(entries))
    return Suite(f"prompts:{p.name}", items, "slug", protocol, ("vqa",), ("vqa", "clip", "clipscore", "blip"))


def load_tune_suite(spec: str, limit: int | None = None):
    """``shapes[:cats]``, ``layout[:cats]``, any bench suite, or a prompt file (a path that exists)."""

    if Path(spec).expanduser().is_file():
        suite = prompt_file_suite(spec)
    else:
        try:
            suite = load_suite(spec)
        except OSError as e:
            raise ValueError(str(e)) from None
    return suite.head(limit)


# -- the entry point -------------------------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """What :func:`tune` returns: the study, the chosen trial and config, the held-out result, the preset path."""

    study: Any
    best: Any
    config: Any
    holdout: dict | None
    preset: Path | None


def tune(
    method: str = "ait2i",
    *,
    suite: str = "shapes",
    model: str | None = None,
    pipe=None,
    trials: int = 40,
    seeds: str = "0-7",
    holdout_seeds: str | None = "1000-1031",
    storage: str | None = None,
    study: str | None = None,
    workdir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    objectives: Sequence[str] = ("reward",),
    reward: str | Callable | None = None,
    space: Sequence[str] = (),
    fix: Sequence[str] = (),
    only: Sequence[str] | None = None,
    chunks: int = 4,
    limit: int | None = None,
    protocol: str | None = None,
    protocol_overrides: Mapping | None = None,
    device: str | None = None,
    clock: str | None = None,
    tolerance: float = 0.03,
    sampler_seed: int = 0,
    heartbeat: int = 10,
    join: bool = False,
    progress: bool = True,
    evaluator=None,
) -> TuneResult:
    """Tune ``method`` on a model and a suite; confirm the winner on held-out seeds; write a preset.

    Args:
        method (`str`): a registered method or a preset file (the search starts from its config).
        suite (`str`): ``shapes[:cats]``, ``layout[:cats]`` or a prompt file (:func:`prompt_file_suite`).
        model (`str`, *optional*): hub id or local folder; the shipped ShapesWorld model by default.
        pipe (*optional*): an already loaded pipeline (its scheduler and dtype are recorded as they are).
        trials (`int`): total finished trials of the study (all processes together).
        seeds, holdout_seeds (`str`): search and held-out seeds (``"0-7"``); they must not overlap.
            ``holdout_seeds=None`` skips the held-out check (and no preset is written).
        storage (`str`, *optional*): an Optuna storage URL; ``sqlite:///<workdir>/study.db`` by default.
        study (`str`, *optional*): study name; ``<method>-<suite>`` by default.
        workdir (*optional*): where trial images and the held-out images go (``runs/tune/<study>``).
        out (*optional*): the preset file to write (``.toml``).
        objectives (`Sequence[str]`): ``("reward",)`` (TPE, median pruning) or ``("reward", "time")`` (NSGA-II).
        reward: a scorer row key, a scorer name, ``module:function`` or a callable ``(config, row) -> float``.
        space, fix, only: command-line changes of the declared space (:func:`ait2i.methods.space.customize`).
        chunks (`int`): seed chunks per trial; the reward is reported after each (pruning).
        clock (`str`, *optional*): ``"cpu"`` (process time; default on CPU) or ``"wall"`` (default on a GPU).
        tolerance (`float`): with time as an objective, the preset is the fastest trial within this of the
            default's reward.
        join (`bool`): only run trials of the study (another process does the held-out check and the preset).
        evaluator (*optional*): replaces the runner (an object with ``evaluate(label, cfg, seeds, folder)``).
    """
    from .methods import get_method
    from .methods.presets import is_preset_path, write_preset
    from .methods.space import customize

    optuna = require_optuna()
    objectives = tuple(objectives)
    if (
        not objectives
        or objectives[0] != "reward"
        or any(o not in OBJECTIVES for o in objectives)
        or len(set(objectives)) != len(objectives)
    ):
        raise ValueError(f"objectives must be 'reward' or 'reward,time', got {','.join(objectives)!r}")
    if trials < 1 or chunks < 1:
        raise ValueError(f"trials and chunks must be >= 1, got {trials} and {chunks}")
    if out is not None and Path(out).suffix.lower() != ".toml":
        raise ValueError(f"--out is the preset file and must end in .toml, got {str(out)!r}")
    if out is not None and not Path(out).expanduser().resolve().parent.is_dir():
        raise ValueError(f"the folder of --out {str(out)!r} does not exist; create it first")
    base_cfg = get_method(method)
    if not base_cfg.guides:
        raise ValueError(f"method {base_cfg.name!r} does not guide; there is nothing to tune")
    space_, fixed = customize(base_cfg, type(base_cfg).search_space(), space, fix, only)
    if not space_:
        raise ValueError(f"the search space of {base_cfg.name} is empty; add fields with --space FIELD=LOW:HIGH")
    search = tuple(sorted(parse_seeds(seeds, option="--seeds")))
    held = tuple(sorted(parse_seeds(holdout_seeds, option="--holdout-seeds"))) if holdout_seeds else ()
    if set(search) & set(held):
        raise ValueError(f"search seeds {seeds} and held-out seeds {holdout_seeds} overlap; held-out must be fresh")
    suite_obj = load_tune_suite(suite, limit) if evaluator is None else None
    name = study or _slug(f"{Path(method).stem}-{suite_obj.name if suite_obj else suite}")
    workdir = Path(workdir or Path("runs") / "tune" / name)
    url = storage or f"sqlite:///{workdir / 'study.db'}"

    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    clock = clock or ("cpu" if str(device) == "cpu" else "wall")
    reward_name, model_id, proto = getattr(reward, "__name__", str(reward or "custom")), "custom", {}
    fingerprint = None
    if evaluator is None:
        rew, reward_name, scorer_names = resolve_reward(reward, suite_obj)
        over = dict(protocol_overrides or {})
        if pipe is not None:
            over.setdefault("scheduler", "default")
            over.setdefault("dtype", str(pipe.dtype).removeprefix("torch."))
        proto = resolve_protocol(protocol or suite_obj.protocol, device, **over)
        if pipe is None:
            model_id = model_identity(model)
        else:  # a pipeline passed in is known by what it holds, not by a name
            fingerprint = model_fingerprint(model, pipe, loaded=True)
            model_id = f"{model or 'pipeline'}:sha256:{fingerprint['sha256'][:16]}"
        if pipe is None:
            pipe = runner.load_pipeline(model, proto, device)
        scorers = load_scorers(scorer_names, device)
        evaluator = RunnerEvaluator(pipe, suite_obj, proto, model_id, scorers, rew, clock)
        host = host_for(pipe)  # read options this model's host ignores would be refused: not searched
        dropped = [k for k in host.ALL_READ_OPTIONS if k in space_ and k not in host.read_options]
        for k in dropped:
            del space_[k]
        if dropped:
            print(f"not searched: {', '.join(dropped)} ({host.__name__} does not read them)")
        if not space_:
            raise ValueError(f"the search space of {base_cfg.name} is empty on {type(pipe).__name__}")
    spec = StudySpec(str(method) if is_preset_path(method) else base_cfg.name, model_id,
                     suite_obj.name if suite_obj else suite, tuple(search), objectives, reward_name, proto,
                     {k: repr(v) for k, v in fixed.items()}, chunks)  # fmt: skip
    st = open_storage(url, heartbeat)
    the_study = open_study(st, name, spec, space_, base_cfg, sampler_seed)
    print(f"study {name!r} in {redact(url)}: {len(space_)} fields, {trials} trials, images in {workdir}")
    optimize(the_study, evaluator, space_, base_cfg, fixed=fixed, trials=trials, seeds=search, chunks=chunks,
             objectives=objectives, workdir=workdir, progress=progress)  # fmt: skip
    if join:
        return TuneResult(the_study, None, None, None, None)
    best = pick_best(the_study, tolerance)
    cfg = config_of(best, space_, base_cfg, fixed)
    print(f"best: trial {best.number}, reward {best.user_attrs.get('reward', float('nan')):.4f}")
    result = None
    if held:
        # the default under the same --fix constraints (e.g. an attn_res the model needs), as trial 0 ran it
        default = base_cfg.replace(**fixed)
        roles = [
            ("tuned", f"trial-{best.number}", cfg),
            ("default", base_cfg.name + ("+fixed" if fixed else ""), default),
        ]
        roles.append(("none", "none", get_method("none")))
        result = holdout(evaluator, roles, held, workdir / "holdout")
        print(holdout_markdown(result, reward_name))
        verdict = holdout_verdict(result)
        result["verdict"] = verdict
        print(f"held-out verdict: {verdict}")
        if verdict.startswith("worse"):
            warnings.warn(f"study {name!r}: the tuned config is {verdict}; its preset records this", stacklevel=2)
    path = None
    if out is not None:
        if result is None:
            raise ValueError("a preset records its held-out result; give --holdout-seeds to write --out")
        prov = {
            "model": fingerprint or (model_fingerprint(model, pipe) if pipe is not None else {"name": model_id}),
            "method": base_cfg.name, "study": name, "storage": redact(url), "trial": best.number,
            "trials": sum(t.state.is_finished() and counted(t) for t in the_study.get_trials(deepcopy=False)),
            "complete": len(finished(the_study)), "objectives": list(objectives), "reward": reward_name,
            "suite": spec.suite, "seeds": _seed_text(search), "holdout_seeds": _seed_text(held),
            "protocol": {k: v for k, v in proto.items() if v is not None and k != "overrides"}, "clock": clock,
            "fixed": dict(spec.fixed), "holdout": result,
            "versions": {**versions(), "optuna": optuna.__version__}, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }  # fmt: skip
        path = write_preset(Path(out), cfg, prov)
        print(f"wrote {path}")
    return TuneResult(the_study, best, cfg, result, path)


def holdout_verdict(result: dict) -> str:
    """One line on the tuned config against the default on the held-out seeds, from the paired 95% interval:
    "better than the default", "worse than the default: do not use it over the default" or "not distinguishable"."""
    p = result["paired"].get("tuned-default")
    if p is None:
        return "no default to compare with"
    span = f"{p['delta']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]"
    if p["low"] > 0:
        return f"better than the default ({span})"
    if p["high"] < 0:
        return f"worse than the default ({span}): do not use it over the default"
    return f"not distinguishable from the default ({span})"


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
