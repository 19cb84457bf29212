"""What a sweep is: a config, a grid of overrides, seeds and fixed overrides, expanded into runs.

    grid = parse_grid(["ppo.kl_coef=0.01,0.05", "rm.members=1,5"])   # {"ppo.kl_coef": [...], ...}
    seeds = parse_seeds("0-4")                                        # [0, 1, 2, 3, 4]
    sweep = Sweep("configs/instructgpt.py:micro", grid, seeds, {"ppo.iterations": "50"}, Path("sweeps/kl"))
    check(sweep)                 # every --set and --grid value resolves, or a SweepError naming the flag
    for run in expand(sweep): ...  # Run(point, seed, workdir, overrides), point-major, seeds inner

A grid point's directory is named after its values (`kl_coef=0.05__members=5`, the last part of
each key unless two keys share it); a name that is too long, unsafe as a path or ambiguous
falls back to `p_<hash of the values>`. Each run's workdir is `<point>/seed_<seed>`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,-]*")
MAX_NAME = 96
SEED_KEY, WORLD_SEED_KEY = "seed", "data.world.seed"


class SweepError(ValueError):
    """A sweep that cannot start as asked; the message names the flag at fault."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Everything that defines a sweep's runs (values are strings, as on a command line)."""

    config: str                        # "configs/FILE.py:variant,variant" as for rlhf_jax.main
    grid: dict[str, list[str]]         # key -> values; the runs are their Cartesian product
    seeds: list[int]
    sets: dict[str, str]               # fixed overrides of every run
    out: Path
    vary_world_seed: bool = False      # also set data.world.seed to the seed (a new task world)
    name: str = ""                     # W&B name prefix; "" = the output directory's name

    @property
    def label(self) -> str:
        """The sweep's name: `name`, else the output directory's name."""
        return self.name or self.out.resolve().name

    def cli(self, share: tuple[str, ...] = (), metrics: list[str] | None = None, jobs: int = 1,
            wandb: bool = False) -> list[str]:
        """The `experiments/sweep.py` command line that runs this sweep (the output directory
        relative to the working directory when it lies inside it), for results files."""
        out = self.out.resolve()
        try:
            out = out.relative_to(Path.cwd())
        except ValueError:
            pass
        argv = ["python", "experiments/sweep.py", "--config", self.config, "--out", str(out)]
        for key, values in self.grid.items():
            argv += ["--grid", f"{key}={(';' if any(',' in v for v in values) else ',').join(values)}"]
        seeds = self.seeds
        ranged = len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1))
        argv += ["--seeds", f"{seeds[0]}-{seeds[-1]}" if ranged else ",".join(map(str, seeds))]
        for key, value in self.sets.items():
            argv += ["--set", f"{key}={value}"]
        argv += ["--vary_world_seed"] if self.vary_world_seed else []
        argv += ["--share", ",".join(share)] if share else []
        argv += ["--metrics", ",".join(metrics)] if metrics else []
        argv += ["--jobs", str(jobs)] if jobs > 1 else []
        return argv + ([] if wandb else ["--no_wandb"])


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its values and its directory name."""

    name: str
    params: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Run:
    """One grid point at one seed: an ordinary run in its own workdir."""

    point: Point
    seed: int
    workdir: Path
    overrides: dict[str, str]          # every --config.KEY=VALUE of its command, in order

    @property
    def label(self) -> str:
        """`<point>/seed_<seed>`: the run's workdir relative to the sweep's directory."""
        return f"{self.point.name}/seed_{self.seed}"


def _split_assignment(spec: str, flag: str) -> tuple[str, str]:
    """KEY=VALUE -> (KEY, VALUE), with the flag named in any complaint."""
    if "=" not in spec:
        raise SweepError(f"{flag} {spec!r}: expected KEY=VALUE (e.g. {flag} ppo.kl_coef=0.05)")
    key, value = (part.strip() for part in spec.split("=", 1))
    if key.startswith("config."):
        raise SweepError(f"{flag} {spec!r}: write the field without 'config.' ({flag} {key[7:]}=...)")
    if not KEY.fullmatch(key):
        raise SweepError(f"{flag} {spec!r}: {key!r} is not a config field path like ppo.kl_coef")
    if key == SEED_KEY:
        raise SweepError(f"{flag} {spec!r}: the seed is set by --seeds, not {flag}")
    return key, value


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """["ppo.kl_coef=0.01,0.05", ...] -> {"ppo.kl_coef": ["0.01", "0.05"], ...} in the given order.

    Values are split on ';' when the list holds one (`--grid 'stages=sft;sft,rm'`), else on ','.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, text = _split_assignment(spec, "--grid")
        values = [v.strip() for v in text.split(";" if ";" in text else ",")]
        if not text or any(not v for v in values):
            raise SweepError(f"--grid {spec!r}: empty value in the list (expected KEY=V1,V2,...)")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid {spec!r}: a value is listed twice")
        if key in grid:
            raise SweepError(f"--grid {key}: given twice; list all its values in one --grid")
        grid[key] = values
    return grid


def parse_seeds(spec: str) -> list[int]:
    """"0-4" -> [0, 1, 2, 3, 4]; "0,2,7" -> [0, 2, 7]; ranges and lists mix ("0-2,7")."""
    seeds: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise SweepError(f"--seeds {spec!r}: {part!r} is not a seed (>= 0) or a range like 0-4")
        low, high = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if high < low:
            raise SweepError(f"--seeds {spec!r}: range {part} runs backwards")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {spec!r}: a seed is listed twice")
    return seeds


def parse_sets(specs: list[str]) -> dict[str, str]:
    """["ppo.iterations=50", "stages=sft,rm"] -> {"ppo.iterations": "50", "stages": "sft,rm"}."""
    sets: dict[str, str] = {}
    for spec in specs:
        key, value = _split_assignment(spec, "--set")
        if key in sets:
            raise SweepError(f"--set {key}: given twice")
        sets[key] = value
    return sets


def resolve_config(config: str, overrides: dict[str, str]):
    """The ConfigDict that `python -m rlhf_jax.main --config CONFIG --config.K=V...` would run
    (the same ml_collections parsing; the working directory is importable, as in main)."""
    from absl import flags
    from ml_collections import config_flags

    from rlhf_jax.stages.validate import check_renamed
    check_renamed(overrides)  # an old field name fails naming the new one
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # configs/ importable from the repository root, as main does
    argv = ["sweep", f"--config={config}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "config", flag_values=values, sys_argv=argv)
    values(argv)
    holder.value.to_dict()  # a config file that failed to load raises here
    return holder.value


def _reason(error: Exception) -> str:
    """One line from a config-parsing failure (ml_collections folds tracebacks into messages)."""
    lines = [line.strip() for line in str(error).replace("\\n", "\n").splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    if isinstance(error, AttributeError):
        return f"no such field ({text.strip(chr(39))})"
    return text.replace("\\'", "'")


def _resolve_or_fail(config: str, overrides: dict[str, str], flag: str) -> Any:
    try:
        return resolve_config(config, overrides)
    except Exception as e:  # noqa: BLE001  (any failure to read the config is the user's)
        raise SweepError(f"{flag}: {_reason(e)}") from None


def check(sweep: Sweep) -> None:
    """Fail before any run starts if a flag cannot work: the config itself, each --set in turn,
    each --grid value on top of the --set values, and keys given twice."""
    if not sweep.seeds:
        raise SweepError("--seeds: no seeds")
    both = set(sweep.grid) & set(sweep.sets)
    if both:
        raise SweepError(f"--grid {sorted(both)[0]}: also fixed by --set; keep one")
    if sweep.vary_world_seed and WORLD_SEED_KEY in {**sweep.grid, **sweep.sets}:
        raise SweepError(f"--vary_world_seed: {WORLD_SEED_KEY} is also given by --grid/--set; keep one")
    _resolve_or_fail(sweep.config, {}, f"--config {sweep.config}")
    for i, key in enumerate(sweep.sets):
        _resolve_or_fail(sweep.config, dict(list(sweep.sets.items())[:i + 1]), f"--set {key}={sweep.sets[key]}")
    for key, values in sweep.grid.items():
        for value in values:
            _resolve_or_fail(sweep.config, {**sweep.sets, key: value}, f"--grid {key}={value}")


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each key's last part, or the whole key where two keys share a last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def digest(params: dict[str, str]) -> str:
    """A short stable hash of a point's values."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def point_name(params: dict[str, str], short: dict[str, str]) -> str:
    """`kl_coef=0.05__members=5`; `p_<hash>` when too long, unsafe as a directory or ambiguous."""
    if not params:
        return "base"
    name = "__".join(f"{short[k]}={v}" for k, v in params.items())
    unsafe = any("__" in v for v in params.values()) or not SAFE_NAME.fullmatch(name)
    return f"p_{digest(params)}" if unsafe or len(name) > MAX_NAME else name


def points(grid: dict[str, list[str]]) -> list[Point]:
    """The grid's Cartesian product in order (the last key varies fastest)."""
    short = _short_keys(list(grid))
    combos = itertools.product(*grid.values()) if grid else [()]
    return [Point(point_name(p, short), p) for p in (dict(zip(grid, combo)) for combo in combos)]


def expand(sweep: Sweep) -> list[Run]:
    """Every grid point at every seed, each with its workdir and overrides (--set, grid, seed)."""
    runs = []
    for point in points(sweep.grid):
        for seed in sweep.seeds:
            # the name labels W&B runs with the sweep and the point (a --set name= wins)
            overrides = {"name": f"{sweep.label}/{point.name}", "log.group": sweep.label, **sweep.sets,
                         **point.params, SEED_KEY: str(seed)}
            if sweep.vary_world_seed:
                overrides[WORLD_SEED_KEY] = str(seed)
            runs.append(Run(point, seed, sweep.out / point.name / f"seed_{seed}", overrides))
    return runs
