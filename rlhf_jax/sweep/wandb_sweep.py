"""The W&B backend: the sweep as a W&B grid sweep, its runs made by `wandb agent` on any machine.

    config = sweep_config(sweep)           # method grid over the --grid keys and `seed`
    run = run_for(sweep, {"ppo.kl_coef": "0.05", "seed": 1})   # -> the Run of OUT/kl_coef=0.05/seed_1

The runner writes OUT/wandb/sweep.yaml. Its program is `python -m rlhf_jax.sweep.agent --out OUT
--KEY=VALUE...`: each agent run maps the values W&B hands it to the same run (workdir
OUT/<point>/seed_<s>, overrides, command) the local and SLURM backends make, and runs it unless
it has finished, so resume and the tables work as for them. Online (an API key, WANDB_MODE not
offline/disabled, no --no_wandb) the runner creates the sweep with `wandb.sweep` (once: its id
is kept in OUT/wandb/sweep_id) and prints the `wandb agent ENTITY/PROJECT/ID` command; otherwise
it prints the `wandb sweep` and `wandb agent` commands to run where W&B is reachable. Agents need
the same checkout, environment and OUT (a shared filesystem). Running the sweep command again
writes the tables from the finished runs; W&B grids cannot leave out points, so a new W&B
sweep (remove OUT/wandb/sweep_id) covers every point and its agents skip the finished runs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

from rlhf_jax.sweep.spec import SEED_KEY, Run, Sweep, SweepError, expand

DIRECTORY = "wandb"
CONFIG_NAME, ID_NAME = "sweep.yaml", "sweep_id"


def sweep_config(sweep: Sweep, project: str = "") -> dict[str, Any]:
    """The W&B sweep configuration: a grid over each --grid key's values (as strings) and the seeds."""
    parameters: dict[str, Any] = {key: {"values": list(values)} for key, values in sweep.grid.items()}
    parameters[SEED_KEY] = {"values": list(sweep.seeds)}
    config = {"name": sweep.label, "method": "grid", "program": "rlhf_jax/sweep/agent.py",
              "command": ["${env}", "python", "-m", "rlhf_jax.sweep.agent", "--out", str(sweep.out.resolve()),
                          "${args}"],
              "parameters": parameters}
    return {**config, "project": project} if project else config


def parse_args(argv: list[str]) -> dict[str, str]:
    """W&B's `${args}` (`--KEY=VALUE` each) -> {KEY: VALUE}."""
    params: dict[str, str] = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SweepError(f"agent argument {arg!r}: expected --KEY=VALUE (W&B's ${{args}})")
        key, value = arg[2:].split("=", 1)
        params[key] = value
    return params


def _same(given: Any, value: str) -> bool:
    """W&B may hand a value back as a number: 0.1 matches "0.1" and "1e-1"."""
    if str(given) == value:
        return True
    try:
        a, b = float(given), float(value)
    except (TypeError, ValueError):
        return False
    return a == b or math.isclose(a, b, rel_tol=1e-12)


def run_for(sweep: Sweep, params: dict[str, Any]) -> Run:
    """The run of `sweep` that W&B's parameters name: every --grid key and `seed`, with values of the sweep."""
    keys = [*sweep.grid, SEED_KEY]
    unknown = sorted(set(params) - set(keys))
    missing = [k for k in keys if k not in params]
    if unknown or missing:
        raise SweepError(f"W&B parameters {sorted(params)} do not match the sweep's keys {keys}"
                         + (f" (unknown: {unknown})" if unknown else "")
                         + (f" (missing: {missing})" if missing else ""))
    chosen = {}
    for key, values in sweep.grid.items():
        match = next((v for v in values if _same(params[key], v)), None)
        if match is None:
            raise SweepError(f"W&B parameter {key}={params[key]!r} is not one of the sweep's values {values}")
        chosen[key] = match
    seed = next((s for s in sweep.seeds if _same(params[SEED_KEY], str(s))), None)
    if seed is None:
        raise SweepError(f"W&B parameter seed={params[SEED_KEY]!r} is not one of the sweep's seeds {sweep.seeds}")
    return next(r for r in expand(sweep) if r.seed == seed and r.point.params == chosen)


def offline_reason(wandb: bool, environ=os.environ) -> str | None:
    """Why the sweep cannot be created on W&B from here (None: it can)."""
    if not wandb:
        return "--no_wandb"
    mode = environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    if not environ.get("WANDB_API_KEY"):
        try:
            import wandb as wb
            if wb.Api().api_key:
                return None
        except Exception:  # noqa: BLE001  (no key, no settings: offline)
            pass
        return "no W&B API key (WANDB_API_KEY or `wandb login`)"
    return None


class WandbBackend:
    """Writes the W&B sweep and, online, creates it (module docstring); runs nothing here."""

    name = "wandb"

    def __init__(self, sweep: Sweep, meta: dict, previous: dict, *, wandb: bool, echo: Callable[[str], None],
                 project: str = ""):
        self.sweep, self.meta, self.wandb, self.echo, self.project = sweep, meta, wandb, echo, project
        meta["wandb"] = dict(previous.get("wandb") or {}) if isinstance(previous.get("wandb"), dict) else {}

    def prepare(self, runs: list[Run], records: dict) -> None:
        pass

    def _project(self) -> str:
        if self.project:
            return self.project
        from rlhf_jax.sweep.spec import resolve_config
        return str(resolve_config(self.sweep.config, self.sweep.sets).log.project)

    def execute(self, runs: list[Run], records: dict, save: Callable[[], None],
                is_finished: Callable[[Run], bool]) -> None:
        """Write OUT/wandb/sweep.yaml; create the sweep online (or reuse it); say how to start agents."""
        import yaml
        pending = [r for r in runs if records[r.label]["status"] == "pending"]
        if not pending:
            self.echo("[sweep] every run has finished; no W&B sweep needed")
            return
        folder = self.sweep.out / DIRECTORY
        folder.mkdir(parents=True, exist_ok=True)
        project = self._project()
        config = sweep_config(self.sweep, project)
        (folder / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
        self.meta["wandb"].update(config=str(Path(DIRECTORY) / CONFIG_NAME), project=project)
        id_file = folder / ID_NAME
        sweep_path = id_file.read_text().strip() if id_file.exists() else ""
        reason = None if sweep_path else offline_reason(self.wandb)
        if reason:
            self.echo(f"[sweep] not creating the W&B sweep ({reason}); wrote {folder / CONFIG_NAME}. Where W&B is "
                      f"reachable, from this directory:\n  wandb sweep --project {project} {folder / CONFIG_NAME}\n"
                      f"then on each machine (same checkout and environment, OUT on a shared filesystem):\n"
                      f"  wandb agent ENTITY/{project}/SWEEP_ID\nand run this command again to write the tables")
            save()
            return
        if not sweep_path:
            import wandb as wb
            sweep_id = wb.sweep(sweep=config, project=project, entity=os.environ.get("WANDB_ENTITY") or None)
            entity = os.environ.get("WANDB_ENTITY") or wb.Api().default_entity
            sweep_path = f"{entity}/{project}/{sweep_id}"
            id_file.write_text(sweep_path + "\n")
            self.echo(f"[sweep] created W&B sweep {sweep_path}")
        else:
            self.echo(f"[sweep] W&B sweep {sweep_path} exists (remove {id_file} for a new one)")
        self.meta["wandb"]["sweep"] = sweep_path
        for run in pending:
            records[run.label].update(status="submitted", job=sweep_path)
        save()
        self.echo(f"[sweep] on each machine (same checkout and environment, OUT on a shared filesystem):\n"
                  f"  wandb agent {sweep_path}\nthen run this command again to write the tables")
