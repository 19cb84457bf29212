"""One CLI for the pipeline.

    python -m rlhf_jax.main --config configs/instructgpt.py:tiny --workdir runs/tiny
    python -m rlhf_jax.main --config configs/instructgpt.py --workdir runs/x --config.stages=sft,rm
    python -m rlhf_jax.main --config configs/instructgpt.py --workdir runs/x --config.ppo.kl_coef=0.02

Runs the stages the config lists, each resuming from its own checkpoint; SIGTERM (exit 143)
and Ctrl-C (exit 130) save a checkpoint at the next step and stop; a second Ctrl-C stops at
once. Writes WORKDIR/summary.json, WORKDIR/report.md and WORKDIR/*_curves.png, and prints
where they are. A mistake in the config, a file or the environment ends with a short message
and a non-zero exit (2; 3 for a NaN stop or a full disk); `--debug` shows the traceback.

Several processes (hosts): the same command on each, with `--coordinator HOST:PORT
--num_processes N --process_id I`, under SLURM (detected), or `--distributed=on` on a TPU VM
slice; process 0 writes the workdir's files (rlhf_jax/distributed.py, docs/clusters.md).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/instructgpt.py", "pipeline config (file:variant)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory", required=True)
_NO_WANDB = flags.DEFINE_bool("no_wandb", False, "disable W&B logging (JSONL and console stay on)")
_FRESH = flags.DEFINE_bool("fresh", False, "start over: delete what an earlier run left in --workdir")
_DEBUG = flags.DEFINE_bool("debug", False, "show tracebacks of user errors too")
# several processes (hosts): rlhf_jax/distributed.py; SLURM and TPU VMs are detected from the environment
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "start jax.distributed: auto (when the flags or SLURM name several processes), "
                                 "on (e.g. a TPU VM slice), off")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0 (with --num_processes, --process_id)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "how many processes run this run")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's index in [0, --num_processes)")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100, "seconds after which a silent process is taken as lost "
                                                             "and the others end")


# a hook for other CLIs (rlhf_jax.evaluate): (config, workdir) -> the config to run
PREPARE_CONFIG = None


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _end_all(error: BaseException) -> None:
    """On several processes: show this process's traceback and end every process with its
    message (`distributed.fail` does not return); on one, nothing (the traceback follows)."""
    from rlhf_jax import distributed
    if distributed.active():
        traceback.print_exc()
        distributed.fail(f"{type(error).__name__}: {str(error)[:2000]}", 1)


def main(argv) -> int:
    del argv
    from rlhf_jax import checkpoint, distributed, signals
    from rlhf_jax.errors import UserError, user_message
    from rlhf_jax.eval.report import plot_curves, write_report
    from rlhf_jax.stages import run

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
    config = _CONFIG.value
    workdir = Path(_WORKDIR.value)
    if PREPARE_CONFIG is not None:
        config = PREPARE_CONFIG(config, workdir)
    signals.install()
    t0 = time.perf_counter()
    try:
        summary = run(config, workdir, use_wandb=not _NO_WANDB.value and config.log.wandb != "disabled",
                      fresh=_FRESH.value)
        summary_path = workdir / "summary.json"
        if not distributed.primary():  # process 0 writes the run's files and prints its summary
            distributed.finish()
            return 0
        checkpoint.write_json_atomic(summary_path, summary)
        plots = plot_curves(workdir)
        report = write_report(workdir, summary, " ".join(sys.argv))
    except signals.StopRequested as e:
        where = f"checkpoint saved at step {e.step}" if e.step is not None else f"stopped during {e.stage}"
        print(f"[{e.stage}] {e.signal}: {where}; run the same command to resume", file=sys.stderr)
        distributed.finish()
        return e.code
    except (UserError, OSError, MemoryError) as e:
        known = user_message(e, workdir)
        if known is None or _DEBUG.value:
            _end_all(e)
            raise
        _fail(*known)
        distributed.fail(*known)
        return known[1]
    except BaseException as e:  # noqa: BLE001  (a bug: on several processes all end, naming it)
        _end_all(e)
        raise
    distributed.finish()
    print(json.dumps(summary, indent=2))
    print(f"\nfinished in {time.perf_counter() - t0:.0f}s")
    print(f"summary: {summary_path}\nreport:  {report}\nplots:   {', '.join(str(p) for p in plots)}")
    if "eval" in summary:
        print(f"evaluation: {workdir / 'eval' / 'report.md'}")
    return 0


def _flag_error(error: Exception) -> str:
    """A flag-parsing failure as one line: the innermost cause (ml_collections folds the
    config file's own traceback into its message; keep only its last line)."""
    while error.__cause__ is not None or (error.__context__ is not None and not str(error).strip()):
        error = error.__cause__ or error.__context__
    text = str(error).replace("\\n", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        lines = [lines[-1]]
    text = " ".join(lines).replace("\\'", "'")
    half = len(text) // 2  # some messages arrive twice, joined by ": "
    if text[:half] == text[half + 2:]:
        text = text[:half]
    if isinstance(error, AttributeError):  # an unknown field: name the flag that set it
        hint = text[text.find("Did you mean"):] if "Did you mean" in text else ""
        for arg in sys.argv:
            name = arg.split("=")[0]
            if name.startswith("--config.") and name.rsplit(".", 1)[-1] in text:
                return f"{name}: no such field. {hint}".strip().rstrip("'")
    return text


def run() -> None:
    from rlhf_jax.hostenv import prepare_process
    prepare_process()  # XLA's flags and glibc's tunables, before XLA starts
    sys.path.insert(0, os.getcwd())  # configs/ importable from the repository root
    try:
        from rlhf_jax.stages.validate import check_renamed  # an old field name fails naming the new one
        check_renamed(a[len("--config."):].split("=")[0] for a in sys.argv[1:] if a.startswith("--config."))
        argv = flags.FLAGS(sys.argv)
        _CONFIG.value.to_dict()  # a config file that failed to load raises here, not at parse time
    except Exception as e:  # noqa: BLE001  (any failure to read the flags or the config is the user's)
        if "--debug" in sys.argv:
            raise
        print(f"config error: {_flag_error(e)}", file=sys.stderr)
        sys.exit(2)
    from rlhf_jax import distributed
    try:
        launch = distributed.resolve(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                     _DISTRIBUTED.value, _HEARTBEAT.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    distributed.initialize(launch)
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
