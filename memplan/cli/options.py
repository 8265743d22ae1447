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
import shlex
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import annotated_types
import typer
from pydantic import ValidationError

from memplan import report as report_module
from memplan.cli.files import (FILE_OPTIONS, SCRIPT_COUNTS, check_file, deepspeed_overrides, dschat_fields,
                               script_fields, trl_fields)
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


def _help(field: str, extra: str = "", choices: tuple[Any, ...] = ()) -> str:
    info = _FIELDS[field]
    text = ". ".join(t for t in (info.description, extra) if t) or field.replace("_", " ").capitalize()
    if choices:
        text += f" (one of: {', '.join(map(str, choices))})"
    if not info.is_required() and info.default not in (None, (), ""):
        default = str(info.default).lower() if isinstance(info.default, bool) else info.default
        text += f" (default: {default})"
    return escape(text)


def escape(text: str) -> str:
    """Help text as typer's rich markup shows it literally: '[x]' would be read as a style tag and vanish."""
    return text.replace("[", "\\[")


def _cli_type(tp: Any) -> Any:
    """The option's type: the field's, without ``None`` or its constraints (``StrictInt`` → ``int``: the command
    line is text, typer converts it); ``str | ArchConfig`` becomes ``str`` (a name)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _cli_type(args[0]) if len(args) == 1 else str
    if get_origin(tp) is Annotated:
        return _cli_type(get_args(tp)[0])
    return tp


def _option(field: str, panel: str, *, tp: Any = None, extra: str = "", decls: tuple[str, ...] = ()) -> Any:
    """``Annotated[<type> | None, typer.Option(...)]`` for one request field; the type is the field's own."""
    if tp is None:
        tp = _cli_type(_FIELDS[field].annotation)
    choices = get_args(tp) if get_origin(tp) is Literal else ()
    long = len("|".join(map(str, choices))) > 16  # a long <a|b|c> squeezes the help column: list them in the help
    option = typer.Option(*decls, help=_help(field, extra, choices if long else ()), show_default=False,
                          rich_help_panel=panel, metavar="<choice>" if long else None)
    return Annotated[tp | None, option]


def _file_option(help: str, panel: str) -> Any:
    """``Annotated[Path | None, typer.Option(...)]`` for a file the run is read from (a framework's launch file)."""
    return Annotated[Path | None, typer.Option(help=help, rich_help_panel=panel, show_default=False,
                                               dir_okay=False)]


# --help panels, in this order (typer's rich_help_panel)
_MODEL = "Model"
_FILES = "Read the run from a framework's files"
_CLUSTER = "Cluster"
_ALGO = "Algorithm"
_TRAIN = "Training"
_SHARD = "Sharding and placement"
_BATCH = "Batch and lengths"
_ROLL = "Rollout"
OUTPUT = "Output"

# name → (annotation, default). Order is the order --help lists them in.
SHARED: dict[str, tuple[Any, Any]] = {
    "model": (
        Annotated[str | None, typer.Option(
            help="Actor (policy) model: catalog name or alias, or a local config.json / model folder (required "
            "unless --verl, --trl, --openrlhf or --deepspeed-chat names it)", rich_help_panel=_MODEL,
            show_default=False)],
        None,
    ),
    "critic_model": (_option("critic_model", _MODEL), None),
    "reward_model": (_option("reward_model", _MODEL), None),
    "verl": (_file_option(
        "Read the run from a verl launch script (python3 -m verl.trainer.main_ppo key=value ...): model, algorithm, "
        "GPU count, batches, lengths, offloads, rollout; --gpus then names the GPU kind (H100-80GB); explicit "
        "flags override it", _FILES), None),
    "openrlhf": (_file_option(
        "Read the run from an OpenRLHF launch command (python3 -m openrlhf.cli.train_ppo_ray --key value ...; "
        "0.11's dotted or earlier flat names): model, algorithm, placement, batches, lengths, offloads; --gpus "
        "then names the GPU kind; explicit flags override it", _FILES), None),
    "trl": (_file_option(
        "Read a TRL run from its recipe YAML (--config) or launch command: model, batches, lengths, beta, PEFT, "
        "vLLM; --accelerate-config adds engine, sharding and GPU count; GRPO unless --algo says rloo, dpo or sft; "
        "explicit flags override it", _FILES), None),
    "deepspeed_chat": (_file_option(
        "Read the run from a DeepSpeed-Chat step-3 launch command (deepspeed main.py --actor_model_name_or_path "
        "... --actor_zero_stage 3 ...): models, ZeRO stages, offloads, hybrid engine, batches, lengths; PPO unless "
        "--algo remax (ReMax's fork); --gpus names the cluster (8xA100-80GB); explicit flags override it",
        _FILES), None),
    "accelerate_config": (_file_option(
        "accelerate's config YAML for --trl (distributed_type, deepspeed_config / fsdp_config, num_processes); "
        "--gpus then names the GPU kind", _FILES), None),
    "framework": (_option("framework", _FILES, extra=(
        "verl: FSDP full shard, colocated vLLM (gpu_memory_utilization 0.5, tensor parallel 2, sleeping outside "
        "rollout), gradient checkpointing, flash-attn's fused log-probs, 2 processes per GPU, train_batch_size "
        "1024 prompts over the GPUs, 512 + 512 tokens; trl: accelerate's default DDP (engine torch), HF "
        "generate, TRL's chunked LM head, 8 completions per GPU; openrlhf: DeepSpeed ZeRO-2, each model on GPUs "
        "of its own, HF generate, fp32 log-probs; deepspeed-chat: ZeRO-0, fp16, hybrid engine, batches of 16. "
        "docs/presets.md lists every field. Without it: memplan's own defaults (engine deepspeed, --zero-stage "
        "as its help says, HF generate, one process per GPU, batch 1, 256 + 256 tokens)")), None),
    "deepspeed_config": (_file_option(
        "Read zero stage, offload, bf16/fp16, micro-batch and hybrid engine from a DeepSpeed JSON config; explicit "
        "flags override it", _FILES), None),
    "gpus": (_option("gpus", _CLUSTER), None),
    "host_ram_gib": (
        Annotated[float | None, typer.Option(
            help="Host RAM per node in GiB, for CPU offload (default: 1024)",
            rich_help_panel=_CLUSTER, show_default=False)],
        None,
    ),
    "algo": (_option("algo", _ALGO), None),
    "reward": (_option("reward", _ALGO), None),
    "ref": (_option("ref", _ALGO), None),
    "group_size": (_option("group_size", _ALGO), None),
    "dtype": (_option("dtype", _TRAIN), None),
    "master_weights": (_option("master_weights", _TRAIN), None),
    "optimizer": (_option("optimizer", _TRAIN, extra="Optimizer of the trained roles"), None),
    "optimizer_impl": (_option("optimizer_impl", _TRAIN), None),
    "gradient_checkpointing": (_option("gradient_checkpointing", _TRAIN, extra="Recompute activations in the backward (actor, critic)"), None),
    "attention": (_option("attention", _TRAIN), None),
    "logprob_kernel": (_option("logprob_kernel", _TRAIN), None),
    "logprob_chunk_rows": (_option("logprob_chunk_rows", _TRAIN), None),
    "lora_rank": (_option("lora_rank", _TRAIN), None),
    "lora_targets": (_option("lora_targets", _TRAIN, extra="Linear layers LoRA adapts"), None),
    "quantize_base": (_option("quantize_base", _TRAIN), None),
    "engine": (_option("engine", _SHARD), None),
    "zero_stage": (_option("zero_stage", _SHARD), None),
    "actor_zero_stage": (_option("actor_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "critic_zero_stage": (_option("critic_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "ref_zero_stage": (_option("ref_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "reward_zero_stage": (_option("reward_zero_stage", _SHARD, extra="Overrides --zero-stage"), None),
    "hybrid_shard": (_option("hybrid_shard", _SHARD), None),
    "fsdp_version": (_option("fsdp_version", _SHARD, tp=int, extra="1 or 2"), None),
    "offload": (_option("offload", _SHARD), None),
    "idle_offload": (_option("idle_offload", _SHARD), None),
    "offload_ref": (_option("offload_ref", _SHARD), None),
    "offload_reward": (_option("offload_reward", _SHARD), None),
    "tp": (_option("tp", _SHARD), None),
    "placement": (_option("placement", _SHARD), None),
    "processes_per_gpu": (_option("processes_per_gpu", _SHARD), None),
    "split_groups": (_option("split_groups", _SHARD, tp=str, extra="Comma-separated groups of '+'-joined roles: "
                             "actor+reference,critic+reward"), None),
    "micro_batch_size": (_option("micro_batch_size", _BATCH), None),
    "rollout_batch_size": (_option("rollout_batch_size", _BATCH, extra="Each prompt yields --group-size "
                                   "completions"), None),
    "score_micro_batch_size": (_option("score_micro_batch_size", _BATCH, extra="verl's "
                                       "log_prob_micro_batch_size_per_gpu, OpenRLHF's micro_rollout_batch_size"), None),
    "prompt_len": (_option("prompt_len", _BATCH, extra="Prompt tokens; RL trains on prompt + generated tokens"), None),
    "gen_len": (_option("gen_len", _BATCH, extra="Generated tokens per completion"), None),
    "seq_len": (_option("seq_len", _BATCH, extra="The full sequence, prompt included"), None),
    "gen_len_mean": (_option("gen_len_mean", _BATCH), None),
    "packing": (_option("packing", _BATCH), None),
    "max_tokens_per_gpu": (_option("max_tokens_per_gpu", _BATCH), None),
    "score_max_tokens_per_gpu": (_option("score_max_tokens_per_gpu", _BATCH), None),
    "sequence_parallel": (_option("sequence_parallel", _SHARD), None),
    "sequence_parallel_mode": (_option("sequence_parallel_mode", _SHARD), None),
    "ring_head_stride": (_option("ring_head_stride", _SHARD), None),
    "entropy": (_option("entropy", _TRAIN), None),
    "entropy_kernel": (_option("entropy_kernel", _TRAIN), None),
    "rollout_engine": (_option("rollout_engine", _ROLL, extra="Generation: HF generate, DeepSpeed hybrid engine, or vLLM"), None),
    "vllm_gpu_memory_utilization": (_option("vllm_gpu_memory_utilization", _ROLL, extra="Fraction of GPU memory vLLM reserves for weights + KV cache (verl 0.5, TRL 0.3, OpenRLHF 0.95)"), None),
    "vllm_sleep_mode": (_option("vllm_sleep_mode", _ROLL), None),
    "vllm_tensor_parallel_size": (_option("vllm_tensor_parallel_size", _ROLL), None),
    "vllm_sleep_level": (_option("vllm_sleep_level", _ROLL, tp=int), None),
    "vllm_max_num_batched_tokens": (_option("vllm_max_num_batched_tokens", _ROLL), None),
    "vllm_max_num_batched_tokens": (_option("vllm_max_num_batched_tokens", _ROLL), None),
    "gather_for_generation": (_option("gather_for_generation", _ROLL), None),
    "inference_tp_size": (_option("inference_tp_size", _ROLL), None),
    "tp_gather_partition_size": (_option("tp_gather_partition_size", _ROLL), None),
    "weight_sync_bucket_mb": (_option("weight_sync_bucket_mb", _ROLL), None),
}

_NOT_FIELDS = {"host_ram_gib", "deepspeed_config", "verl", "trl", "accelerate_config", "openrlhf", "split_groups",
               "deepspeed_chat"}


def option_name(field: str) -> str:
    """The CLI option for a request field ('micro_batch_size' → '--micro-batch-size')."""
    head, _, rest = field.partition(".")
    if head == "host_ram_bytes_per_node":
        return "--host-ram-gib"
    if head.isidentifier():
        return "--" + head.replace("_", "-") + (f" ({rest})" if rest else "")
    return field


def build_request(options: dict[str, Any]) -> EstimateRequest:
    """The request from the shared options: TRL recipe, DeepSpeed file, verl script, then every flag given."""
    fields: dict[str, Any] = {}
    for name in FILE_OPTIONS:
        if options.get(name) is not None:
            check_file(name, Path(options[name]))
    if options.get("accelerate_config") is not None and options.get("trl") is None:
        raise InputError("accelerate_config", "goes with --trl (the recipe it launches)",
                         str(options["accelerate_config"]))
    given_frameworks = [name for name in ("trl", "verl", "openrlhf", "deepspeed_chat") if options.get(name) is not None]
    if len(given_frameworks) > 1:
        raise InputError(given_frameworks[0], "give one framework's files: --trl, --verl, --openrlhf or "
                         "--deepspeed-chat", str(options[given_frameworks[0]]))
    if options.get("deepspeed_chat") is not None:
        from_dschat, notes = dschat_fields(options["deepspeed_chat"], options.get("gpus"), options.get("algo"))
        fields.update(from_dschat)
        _echo("deepspeed-chat", notes)
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
        if err["type"] == "missing":
            lines.append(f"{option_name(field)}: missing" + (f"; allowed: {rng}" if rng else MISSING.get(field, "")))
            continue
        value = err.get("input")
        got = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{option_name(field)}: {err['msg']}{got}" + (f"; allowed: {rng}" if rng else ""))
    return lines


MISSING = {"model": "; allowed: a catalog name (memplan models) or a config.json path, or name the run's file with "
                    "--verl, --trl, --openrlhf or --deepspeed-chat"}


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
    signature is the shared options followed by them, which is what typer reads. A ``given`` parameter
    receives the shared options the user gave (name → value), for ``command_line``.
    """
    hints = get_type_hints(func, include_extras=True)
    params = inspect.signature(func).parameters
    wants_given = "given" in params  # the shared options as typed, e.g. to print the same question for `plan`
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
        for p in params.values()
        if p.name not in ("request", "given")
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
            if wants_given:
                mine["given"] = {k: v for k, v in kwargs.items() if v is not None}
            return func(request=request, **mine)

    command.__signature__ = inspect.Signature(shared + own)  # type: ignore[attr-defined]
    command.__name__ = func.__name__
    command.__qualname__ = func.__qualname__
    command.__doc__ = func.__doc__
    command.__module__ = func.__module__
    return command


def command_line(command: str, given: dict[str, Any], **changes: Any) -> str:
    """The ``memplan <command> …`` line that asks the same question: the shared options ``given`` (as typed),
    with ``changes`` applied; options in ``--help`` order, values shell-quoted."""
    values = {**given, **changes}
    parts = ["memplan", command]
    for name in SHARED:
        value = values.get(name)
        if value is None:
            continue
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            parts += [f"--{flag}", shlex.quote(str(value))]
    return " ".join(parts)


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table",
                                          rich_help_panel=OUTPUT)]
PlotOption = Annotated[Path | None, typer.Option(
    "--plot", help=escape("Also draw the result to this file, .svg or .png: the phases' stacked bars against the "
    "GPU's capacity (plan --max-batch: the peak against the batch size). Needs matplotlib: pip install "
    "'memplan[plot]'"),
    rich_help_panel=OUTPUT, show_default=False, dir_okay=False)]


def write_plot(draw: Callable[..., Path], *args: Any) -> None:
    """``--plot``: draw with a ``memplan.plot`` function (it imports matplotlib) and say where, on stderr."""
    print(f"plot: wrote {draw(*args)}", file=sys.stderr)
