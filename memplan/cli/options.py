"""The options every planning command shares, and the one place they become an ``EstimateRequest``.

``estimate``, ``compare``, ``trace``, ``measure`` and ``plan`` all describe one run the same way. The
options are declared once, in ``SHARED`` (name → typed ``typer.Option``), and ``request_command`` adds
them to a command whose signature takes ``request: EstimateRequest``. Every option defaults to ``None``
("not given"), so the request model's own defaults apply and an explicit flag overrides a value read
from ``--deepspeed-config``. Bounds live in ``memplan.report`` only: pydantic checks them, and
``cli_errors`` turns its errors (and memplan's ``InputError``) into one line naming the option and its
allowed range, with exit code 2.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import annotated_types
import typer
from pydantic import ValidationError

from memplan import report as report_module
from memplan.errors import EnvironmentProblem, InputError
from memplan.report import EstimateRequest
from memplan.units import GiB


def _batch_semantics() -> str:
    """The 'Batch semantics' section of ``memplan.report``'s docstring, as help text (one source)."""
    doc = report_module.__doc__ or ""
    section = doc.split("Batch semantics", 1)[1].split("\n\n", 1)[1]
    bullets = [" ".join(b.split()) for b in section.replace("``", "'").split("* ") if b.strip()]
    return "Batch semantics: " + "\n\n".join(bullets)


BATCH_SEMANTICS = _batch_semantics()

_FIELDS = EstimateRequest.model_fields


def _help(field: str, extra: str = "") -> str:
    info = _FIELDS[field]
    text = ". ".join(t for t in (info.description, extra) if t) or field.replace("_", " ").capitalize()
    if not info.is_required() and info.default is not None:
        default = str(info.default).lower() if isinstance(info.default, bool) else info.default
        text += f" (default: {default})"  # not [default: …]: rich would read it as markup
    return text


def _cli_type(tp: Any) -> Any:
    """The option's type: the field's, without ``None``; ``str | ArchConfig`` becomes ``str`` (a name)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _option(field: str, panel: str, *, tp: Any = None, extra: str = "", decls: tuple[str, ...] = ()) -> Any:
    """``Annotated[<type> | None, typer.Option(...)]`` for one request field; the type is the field's own."""
    if tp is None:
        tp = _cli_type(_FIELDS[field].annotation)
    option = typer.Option(*decls, help=_help(field, extra), show_default=False, rich_help_panel=panel)
    return Annotated[tp | None, option]


def _file_option(help: str, panel: str) -> Any:
    """``Annotated[Path | None, typer.Option(...)]`` for a file the run is read from (a framework's launch file)."""
    return Annotated[Path | None, typer.Option(help=help, rich_help_panel=panel, show_default=False,
                                               dir_okay=False)]


_MODEL = "Model and cluster"
_SHARD = "Sharding and placement"
_TRAIN = "Training"
_BATCH = "Batch and lengths"
_ROLL = "Rollout"

# name → (annotation, default). Order is the order --help lists them in.
SHARED: dict[str, tuple[Any, Any]] = {
    "model": (
        Annotated[str | None, typer.Option(
            help="Actor (policy) model: catalog name or alias, or a local config.json / model folder (required "
            "unless --verl, --trl or --openrlhf names it)", rich_help_panel=_MODEL, show_default=False)],
        None,
    ),
    "verl": (_file_option(
        "Read the run from a verl launch script (python3 -m verl.trainer.main_ppo key=value ...): model, algorithm, "
        "GPU count, batches, lengths, offloads, rollout; --gpus then names the GPU kind (H100-80GB); explicit "
        "flags override it", _MODEL), None),
    "openrlhf": (_file_option(
        "Read the run from an OpenRLHF launch command (python3 -m openrlhf.cli.train_ppo_ray --key value ...; "
        "0.11's dotted or earlier flat names): model, algorithm, placement, batches, lengths, offloads; --gpus "
        "then names the GPU kind; explicit flags override it", _MODEL), None),
    "trl": (_file_option(
        "Read a TRL run from its recipe YAML (--config) or launch command: model, batches, lengths, beta, PEFT, "
        "vLLM; --accelerate-config adds engine, sharding and GPU count; GRPO unless --algo says rloo, dpo or sft; "
        "explicit flags override it", _MODEL), None),
    "accelerate_config": (_file_option(
        "accelerate's config YAML for --trl (distributed_type, deepspeed_config / fsdp_config, num_processes); "
        "--gpus then names the GPU kind", _MODEL), None),
    "algo": (_option("algo", _MODEL), None),
    "gpus": (_option("gpus", _MODEL), None),
    "critic_model": (_option("critic_model", _MODEL), None),
    "reward_model": (_option("reward_model", _MODEL), None),
    "reward": (_option("reward", _MODEL), None),
    "ref": (_option("ref", _MODEL), None),
    "host_ram_gib": (
        Annotated[float | None, typer.Option(
            help="Host RAM per node in GiB, for CPU offload (default: 1024)",
            rich_help_panel=_MODEL, show_default=False)],
        None,
    ),
    "engine": (_option("engine", _SHARD), None),
    "zero_stage": (_option("zero_stage", _SHARD), None),
    "actor_zero_stage": (_option("actor_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "critic_zero_stage": (_option("critic_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "ref_zero_stage": (_option("ref_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "reward_zero_stage": (_option("reward_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "hybrid_shard": (_option("hybrid_shard", _SHARD), None),
    "offload": (_option("offload", _SHARD), None),
    "idle_offload": (_option("idle_offload", _SHARD), None),
    "offload_ref": (_option("offload_ref", _SHARD), None),
    "offload_reward": (_option("offload_reward", _SHARD), None),
    "tp": (_option("tp", _SHARD), None),
    "placement": (_option("placement", _SHARD), None),
    "processes_per_gpu": (_option("processes_per_gpu", _SHARD), None),
    "split_groups": (_option("split_groups", _SHARD, tp=str, extra="Comma-separated groups of '+'-joined roles: "
                             "actor+reference,critic+reward"), None),
    "deepspeed_config": (_file_option(
        "Read zero stage, offload, bf16/fp16, micro-batch and hybrid engine from a DeepSpeed JSON config; explicit "
        "flags override it", _SHARD), None),
    "dtype": (_option("dtype", _TRAIN), None),
    "master_weights": (_option("master_weights", _TRAIN), None),
    "optimizer": (_option("optimizer", _TRAIN, extra="Optimizer of the trained roles"), None),
    "optimizer_impl": (_option("optimizer_impl", _TRAIN), None),
    "gradient_checkpointing": (_option("gradient_checkpointing", _TRAIN, extra="Recompute activations in the backward (actor, critic)"), None),
    "attention": (_option("attention", _TRAIN), None),
    "logprob_kernel": (_option("logprob_kernel", _TRAIN), None),
    "lora_rank": (_option("lora_rank", _TRAIN), None),
    "lora_targets": (_option("lora_targets", _TRAIN, extra="Linear layers LoRA adapts"), None),
    "quantize_base": (_option("quantize_base", _TRAIN), None),
    "micro_batch_size": (_option("micro_batch_size", _BATCH), None),
    "rollout_batch_size": (_option("rollout_batch_size", _BATCH, extra="Each prompt yields --group-size "
                                   "completions"), None),
    "score_micro_batch_size": (_option("score_micro_batch_size", _BATCH, extra="verl's "
                                       "log_prob_micro_batch_size_per_gpu, OpenRLHF's micro_rollout_batch_size"), None),
    "prompt_len": (_option("prompt_len", _BATCH, extra="Prompt tokens; RL trains on prompt + generated tokens"), None),
    "gen_len": (_option("gen_len", _BATCH, extra="Generated tokens per completion"), None),
    "seq_len": (_option("seq_len", _BATCH, extra="The full sequence, prompt included"), None),
    "group_size": (_option("group_size", _BATCH), None),
    "rollout_engine": (_option("rollout_engine", _ROLL, extra="Generation: HF generate, DeepSpeed hybrid engine, or vLLM"), None),
    "vllm_gpu_memory_utilization": (_option("vllm_gpu_memory_utilization", _ROLL, extra="Fraction of GPU memory vLLM reserves for weights + KV cache (verl 0.5, TRL 0.3, OpenRLHF 0.95)"), None),
    "vllm_sleep_mode": (_option("vllm_sleep_mode", _ROLL), None),
    "vllm_tensor_parallel_size": (_option("vllm_tensor_parallel_size", _ROLL), None),
    "gather_for_generation": (_option("gather_for_generation", _ROLL), None),
    "weight_sync_bucket_mb": (_option("weight_sync_bucket_mb", _ROLL), None),
}

_NOT_FIELDS = {"host_ram_gib", "deepspeed_config", "verl", "trl", "accelerate_config", "openrlhf", "split_groups"}


def option_name(field: str) -> str:
    """The CLI option for a request field ('micro_batch_size' → '--micro-batch-size')."""
    head, _, rest = field.partition(".")
    if head == "host_ram_bytes_per_node":
        return "--host-ram-gib"
    if head.isidentifier():
        return "--" + head.replace("_", "-") + (f" ({rest})" if rest else "")
    return field


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


def build_request(options: dict[str, Any]) -> EstimateRequest:
    """The request from the shared options: TRL recipe, DeepSpeed file, verl script, then every flag given."""
    fields: dict[str, Any] = {}
    if options.get("accelerate_config") is not None and options.get("trl") is None:
        raise InputError("accelerate_config", "goes with --trl (the recipe it launches)",
                         str(options["accelerate_config"]))
    given_frameworks = [name for name in ("trl", "verl", "openrlhf") if options.get(name) is not None]
    if len(given_frameworks) > 1:
        raise InputError(given_frameworks[0], "give one framework's files: --trl, --verl or --openrlhf",
                         str(options[given_frameworks[0]]))
    if options.get("trl") is not None:
        given = frozenset(k for k, v in options.items() if v is not None)
        from_trl, notes = trl_fields(options["trl"], options.get("accelerate_config"), options.get("gpus"),
                                     options.get("algo"), given)
        fields.update(from_trl)
        _echo("trl", notes)
        options = {**options, "gpus": None}  # read with the count: the request's gpus
    if options.get("deepspeed_config") is not None:
        fields.update(deepspeed_overrides(options["deepspeed_config"]))
    for name in SCRIPT_COUNTS:
        if options.get(name) is None:
            continue
        from_script, notes = script_fields(name, options[name], options.get("gpus"))
        fields.update(from_script)
        _echo(name, notes)
        if "gpus" in from_script:
            options = {**options, "gpus": None}  # a GPU kind: the script's count with it
    fields.update({k: v for k, v in options.items() if v is not None and k not in _NOT_FIELDS})
    if options.get("host_ram_gib") is not None:
        fields["host_ram_bytes_per_node"] = _host_ram_bytes(options["host_ram_gib"])
    if options.get("split_groups") is not None:  # 'actor+reference,critic+reward'; the roles checked as the field's
        fields["split_groups"] = tuple(tuple(group.split("+")) for group in options["split_groups"].split(",")
                                       if group)
    return EstimateRequest(**fields)


def _echo(framework: str, notes: list[str]) -> None:
    """A reader's notes on stderr, one ``framework: note`` line each (stdout stays the report)."""
    for note in notes:
        print(f"{framework}: {note}", file=sys.stderr)


def _host_ram_bytes(gib: float) -> int:
    if not (gib > 0 and gib < 1 << 20):  # also rejects nan
        raise InputError("host_ram_gib", f"must be > 0 and < 1048576 GiB, got {gib}", gib)
    return max(1, int(gib * GiB))


def allowed(field: str) -> str:
    """The allowed values of a request field, from its pydantic bounds ('1 ≤ x ≤ 65536', 'ppo|grpo|…')."""
    info = _FIELDS.get(field)
    if info is None:
        return ""
    low = high = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            low = f"{m.ge} ≤ "
        elif isinstance(m, annotated_types.Gt):
            low = f"{m.gt} < "
        elif isinstance(m, annotated_types.Le):
            high = f" ≤ {m.le}"
        elif isinstance(m, annotated_types.Lt):
            high = f" < {m.lt}"
    if low or high:
        return f"{low or ''}x{high or ''}"
    choices = [a for a in _literal_args(info.annotation)]
    return " | ".join(map(str, choices))


def _literal_args(tp: Any) -> list[Any]:
    if get_origin(tp) is not None and str(get_origin(tp)).endswith("Literal"):
        return list(get_args(tp))
    return [x for a in get_args(tp) for x in _literal_args(a)]


def describe(exc: ValidationError | InputError) -> list[str]:
    """One line per problem: the option, what is wrong, the value and the allowed range."""
    if isinstance(exc, InputError):
        msg = str(exc)
        prefix = f"{exc.field}: "
        msg = msg[len(prefix):] if msg.startswith(prefix) else msg
        return [f"{option_name(exc.field)}: {msg}"]
    lines = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("str", "ArchConfig")))
        rng = allowed(field)
        value = err.get("input")
        got = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{option_name(field)}: {err['msg']}{got}" + (f"; allowed: {rng}" if rng else ""))
    return lines


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Bad input and missing extras → one line per problem on stderr and exit code 2, never a traceback."""
    try:
        yield
    except (ValidationError, InputError) as exc:
        for line in describe(exc):
            print(f"error: {line}", file=sys.stderr)
        raise typer.Exit(2) from None
    except EnvironmentProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


def request_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command taking ``request: EstimateRequest`` the shared options, and build the request.

    The command's own parameters (``--json``, ``--algos`` …) keep their annotations; the wrapper's
    signature is the shared options followed by them, which is what typer reads.
    """
    hints = get_type_hints(func, include_extras=True)
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(func).parameters.values()
        if p.name != "request"
    ]
    own_names = {p.name for p in own}
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
        for name, (ann, default) in SHARED.items()
    ]

    def command(**kwargs: Any) -> Any:
        mine = {k: kwargs.pop(k) for k in list(kwargs) if k in own_names}
        with cli_errors():
            request = build_request(kwargs)
            return func(request=request, **mine)

    command.__signature__ = inspect.Signature(shared + own)  # type: ignore[attr-defined]
    command.__name__ = func.__name__
    command.__qualname__ = func.__qualname__
    command.__doc__ = func.__doc__
    command.__module__ = func.__module__
    return command


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table")]
