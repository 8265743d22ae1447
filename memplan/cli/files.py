"""The files a run is read from: the checks every file option gets, a DeepSpeed JSON config, and the entry
points of the framework readers (``memplan.frameworks``: verl, OpenRLHF, TRL, DeepSpeed-Chat).

``check_file`` runs before any reader opens a file, so a directory, a device, a FIFO, a binary or an
oversized file is one ``error:`` line naming the option (``options.cli_errors``), never a hang or a traceback.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from memplan.errors import InputError


def deepspeed_overrides(path: Path) -> dict[str, Any]:
    """Request fields read from a DeepSpeed JSON config (the file users already pass to deepspeed).

    Read: ``zero_optimization.stage``, ``zero_optimization.offload_optimizer.device`` and
    ``offload_param.device`` (cpu/nvme), ``bf16.enabled`` / ``fp16.enabled``,
    ``train_micro_batch_size_per_gpu`` and DeepSpeed-Chat's ``hybrid_engine.enabled``. Values of
    ``"auto"`` (the HF Trainer integration) are skipped. Gradient checkpointing is not a DeepSpeed setting.
    """
    field = "deepspeed_config"
    try:
        config = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise InputError(field, f"cannot read {str(path)!r}: {exc.strerror}", str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(field, f"{str(path)!r} is not JSON: {exc}", str(path)) from None
    if not isinstance(config, dict):
        raise InputError(field, f"{str(path)!r} must hold a JSON object", str(path))

    out: dict[str, Any] = {}
    zero = config.get("zero_optimization") or {}
    if isinstance(zero, dict):
        if isinstance(zero.get("stage"), int):
            out["zero_stage"] = zero["stage"]
        opt_dev = (zero.get("offload_optimizer") or {}).get("device", "none")
        param_dev = (zero.get("offload_param") or {}).get("device", "none")
        if param_dev in ("cpu", "nvme"):
            if opt_dev not in ("cpu", "nvme"):
                raise InputError(field, "offload_param without offload_optimizer is not modelled; "
                                 "use --offload optimizer+params or --offload optimizer", str(path))
            out["offload"] = "optimizer+params"
        elif opt_dev in ("cpu", "nvme"):
            out["offload"] = "optimizer"
    if (config.get("bf16") or {}).get("enabled") is True:
        out["dtype"] = "bf16"
    elif (config.get("fp16") or {}).get("enabled") is True:
        out["dtype"] = "fp16"
    elif "bf16" in config or "fp16" in config:
        out["dtype"] = "fp32"
    micro = config.get("train_micro_batch_size_per_gpu")
    if isinstance(micro, int):
        out["micro_batch_size"] = micro
    if (config.get("hybrid_engine") or {}).get("enabled") is True:
        out["rollout_engine"] = "hybrid-engine"
    return out


SCRIPT_COUNTS = {"verl": "the script's trainer.nnodes × n_gpus_per_node",
                 "openrlhf": "its models' num_nodes × num_gpus_per_node"}


def script_fields(framework: str, path: Path, gpus: str | None) -> tuple[dict[str, Any], list[str]]:
    """Request fields of a verl or OpenRLHF launch script (``memplan.frameworks.<framework>``) and its notes;
    ``gpus`` names the GPU kind ('H100-80GB', the count is the script's) or, with a count, the whole cluster
    (it wins)."""
    import importlib

    if gpus is None:
        raise InputError("gpus", f"name the GPU kind for the {framework} script (the count is "
                         f"{SCRIPT_COUNTS[framework]}), e.g. --gpus H100-80GB", None)
    kind = None if gpus.strip()[:1].isdigit() else gpus
    run = importlib.import_module(f"memplan.frameworks.{framework}").load(path, kind)
    return run.fields, run.notes


def trl_fields(recipe: Path, accelerate: Path | None, gpus: str | None, algo: str | None,
               given: frozenset[str] = frozenset()) -> tuple[dict[str, Any], list[str]]:
    """Request fields of a TRL recipe and accelerate config (``memplan.frameworks.trl``) and its notes."""
    from memplan.frameworks import trl

    if gpus is None:
        raise InputError("gpus", "name the GPU kind for the TRL run (the count is the accelerate config's "
                         "num_processes), e.g. --gpus H100-80GB, or the cluster, e.g. --gpus 8xH100-80GB", None)
    run = trl.load(recipe, accelerate, gpus, algo, given)
    return run.fields, run.notes


def dschat_fields(path: Path, gpus: str | None, algo: str | None) -> tuple[dict[str, Any], list[str]]:
    """Request fields of a DeepSpeed-Chat step-3 launch command (``memplan.frameworks.dschat``) and its notes;
    ``gpus`` is the cluster as given (the ``deepspeed`` launcher runs one process per GPU: the command holds no
    count), ``algo`` 'ppo' (the default) or 'remax' (ReMax's fork of the trainer)."""
    from memplan.frameworks import dschat

    if gpus is None or not gpus.strip()[:1].isdigit():
        raise InputError("gpus", "name the cluster for the DeepSpeed-Chat command (the deepspeed launcher runs one "
                         "process per GPU; the command holds no count), e.g. --gpus 8xA100-80GB", gpus)
    run = dschat.load(path, gpus, algo or "ppo")
    return run.fields, run.notes


FILE_OPTIONS = ("verl", "openrlhf", "trl", "accelerate_config", "deepspeed_config", "deepspeed_chat")
MAX_FILE_BYTES = 1 << 20
"""Largest launch script, recipe or config read (1 MiB; real ones are a few kB)."""


def check_file(field: str, path: Path) -> None:
    """A file option names a regular, readable, non-empty UTF-8 text file of at most ``MAX_FILE_BYTES``.

    Checked before any reader opens it: a directory, a device (``/dev/zero`` would never end), a FIFO (would
    block), a binary or oversized file is one ``error:`` line naming the option, never a hang or a traceback.
    """
    shown = str(path)
    try:
        mode = path.expanduser().stat().st_mode
    except OSError as exc:
        raise InputError(field, f"cannot read {shown!r}: {exc.strerror}", shown) from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise InputError(field, f"{shown!r} is {kind}; allowed: a text file", shown)
    try:
        with path.expanduser().open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # /proc files report size 0: read, bounded
    except OSError as exc:
        raise InputError(field, f"cannot read {shown!r}: {exc.strerror}", shown) from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(field, f"{shown!r} is over {MAX_FILE_BYTES >> 20} MiB; allowed: a launch script or config "
                         f"of at most {MAX_FILE_BYTES >> 20} MiB", shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(field, f"{shown!r} is not UTF-8 text (byte {exc.start}); allowed: a UTF-8 text file",
                         shown) from None
    if not text.strip():
        raise InputError(field, f"{shown!r} is empty", shown)
