"""What the launch-file writers share: the file they return, the request's effective values, the model's path,
and the round trip that proves a written file is the run that was planned.

Every writer (``verl``, ``trl``, ``openrlhf``) builds its file from the request, then reads it back with memplan's
own reader (``memplan.frameworks.<framework>``) and compares the two requests as the estimator sees them
(``memplan.estimator.resolve``: an unset default and its value written out are the same run; a setting the
estimator does not use, such as vLLM's under HF generation, is the same run when memplan's answer is the same).
Any field that the file cannot carry is an ``InputError`` naming it, the framework, and the value the framework
would run instead — never a file that launches something other than what was estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memplan.errors import EnvironmentProblem, InputError, shown
from memplan.report import ArchConfig, EstimateRequest

NOT_LAUNCH_SETTINGS = ("host_ram_bytes_per_node", "cuda_context_bytes")
"""Facts about the machine, not settings of a launch file: carried over from the request in the round trip."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchFile:
    """One written file."""

    name: str
    """A file name to save it under ('run_verl.sh', 'recipe.yaml')."""
    text: str
    """The file's text."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Emitted:
    """What ``memplan.emit.emit`` returns: the files for one target, and how to read them back."""

    target: str
    """'verl', 'trl', 'openrlhf', 'ray', 'skypilot' or 'kuberay'."""
    files: tuple[LaunchFile, ...]
    """One file (verl, OpenRLHF, the resource specs) or two (TRL: the recipe, then accelerate's config)."""
    read_back: str
    """The memplan command that reads the files back into the request (launch files), or what the numbers
    come from (resource specs)."""
    notes: tuple[str, ...] = ()
    """What to fill in (data sets, reward functions) and what the file cannot say."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Effective:
    """The request's values once its defaults are applied, as ``memplan.estimator.resolve.resolve`` applies them
    (the ``ref_mode``, ``reward_mode``, ``master``, ``prompts``, ``group`` and ``score_micro`` lines there)."""

    ref: str
    reward: str
    master_weights: bool
    prompts: int
    """Prompts per GPU per generation."""
    group: int
    """Completions per prompt."""
    score_micro: int
    """Sequences per GPU per scoring forward (not capped: the file says what the user asked for)."""


def effective(request: EstimateRequest) -> Effective:
    from memplan.estimator.resolve import DEFAULT_GROUP

    algo, lora = request.algo, request.lora_rank > 0
    return Effective(
        ref=request.ref or ("none" if algo == "sft" else "lora-shared" if lora else "separate"),
        reward=request.reward or ("rule" if algo == "grpo" else "model"),
        master_weights=request.master_weights if request.master_weights is not None else request.engine != "torch",
        prompts=request.rollout_batch_size or request.micro_batch_size,
        group=request.group_size or DEFAULT_GROUP.get(algo, 1),
        score_micro=request.score_micro_batch_size or request.micro_batch_size,
    )


def zero_stage(request: EstimateRequest) -> int:
    """The request's ZeRO stage: as given, else ``memplan.report.auto_zero_stage``'s (where the request has it)."""
    if request.zero_stage is not None:
        return request.zero_stage
    from memplan import report

    return report.auto_zero_stage(request) if hasattr(report, "auto_zero_stage") else 0


def model_path(model: str | ArchConfig | None, field: str, framework: str) -> str:
    """The path a framework loads ``model`` from: the catalog's name for a catalog model (its Hugging Face id),
    a local config.json's folder, a folder as given. An inline architecture has no path: an ``InputError``."""
    from pathlib import PurePath

    from memplan.catalog import catalog_name

    if isinstance(model, ArchConfig) or model is None:
        raise InputError(field, f"an inline architecture has no path a {framework} launch file can load: name a "
                         "catalog model (memplan models) or a local model folder", "architecture")
    found = catalog_name(model)
    if found is not None:
        return found
    path = PurePath(model)
    return str(path.parent) if path.name == "config.json" else model


def cluster_of(request: EstimateRequest) -> tuple[int, int, str]:
    """(nodes, GPUs per node, GPU name) of the request's ``gpus`` (``memplan.catalog.parse_cluster``)."""
    from memplan.catalog import parse_cluster

    cluster = parse_cluster(request.gpus)
    return cluster.num_nodes, cluster.gpus_per_node, cluster.gpu.name


def whole(numerator: int, denominator: int, field: str, framework: str, what: str) -> int:
    """``numerator / denominator`` when it divides, else an ``InputError`` naming ``field`` and why it must."""
    if numerator % denominator:
        raise InputError(field, f"{framework} needs {what}", numerator)
    return numerator // denominator


def yaml_text(data: Any) -> str:
    """``data`` as block YAML in the order given (PyYAML comes with the cli and api extras)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - the cli and api extras install it
        raise EnvironmentProblem("writing YAML needs pyyaml: pip install 'memplan[cli]'") from None
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def _run(request: EstimateRequest) -> Any:
    """What the estimator makes of ``request``: its resolved run (notes aside), or the error it raises."""
    from memplan.estimator.resolve import resolve

    try:
        return resolve(request)._replace(notes=())
    except InputError as exc:
        return ("error", str(exc))


def _answer(request: EstimateRequest) -> Any:
    """memplan's answer for ``request`` (its report without the request and the notes), or the error."""
    from memplan import estimate

    try:
        return estimate(request).model_dump(exclude={"request", "notes"})
    except InputError as exc:
        return ("error", str(exc))


def _same(a: EstimateRequest, b: EstimateRequest) -> bool:
    """One run: the same resolved run, or (a setting the estimator does not use under the other settings, such as
    vLLM's under HF generation) the same answer."""
    return _run(a) == _run(b) or _answer(a) == _answer(b)


def _flag(field: str, value: Any) -> str:
    option = "--" + field.replace("_", "-")
    if value is None:
        return f"no {option}"
    if isinstance(value, bool):
        return option if value else "--no-" + option[2:]
    if isinstance(value, tuple):  # split_groups: 'actor+reference,critic+reward'
        return f"{option} " + ",".join("+".join(group) for group in value)
    return f"{option} {value}"


def check_round_trip(framework: str, request: EstimateRequest, back: dict[str, Any],
                     hints: dict[str, str]) -> None:
    """``back`` (the fields memplan's reader took from the written file) must be ``request``'s run: else an
    ``InputError`` on the first field that differs, listing each (with ``hints[field]``: why the framework runs
    it that way) and the flags that plan the run the framework launches."""
    carried = {name: getattr(request, name) for name in NOT_LAUNCH_SETTINGS}
    try:
        read = EstimateRequest(**{**back, **carried})
    except ValueError as exc:  # pydantic's ValidationError: the file holds a value the request cannot
        raise InputError(next(iter(back), "model"), f"{framework}: the written file reads back as no valid "
                         f"request ({str(exc).splitlines()[0]})", None) from None
    if _same(request, read):
        return
    differ = [(name, getattr(request, name), getattr(read, name)) for name in EstimateRequest.model_fields
              if getattr(request, name) != getattr(read, name)]
    deciding = [(name, ours, theirs) for name, ours, theirs in differ
                if not _same(request, request.model_copy(update={name: theirs}))]
    differ = deciding or differ
    parts = [f"{name} {shown(ours, 40)} → {shown(theirs, 40)}" + (f" ({hints[name]})" if name in hints else "")
             for name, ours, theirs in differ]
    flags = ", ".join(_flag(name, theirs) for name, _, theirs in differ)
    preset = (f", or plan with --framework {framework.lower()}: its defaults"
              if "framework" in EstimateRequest.model_fields and request.framework is None else "")
    raise InputError(differ[0][0], f"a {framework} launch file cannot run this request as planned: "
                     + "; ".join(parts) + f". Plan the run {framework} launches ({flags}{preset}) and emit that",
                     differ[0][1])
