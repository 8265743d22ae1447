"""Framework presets: ``framework`` on a request (``--framework`` on the CLI) fills every field not given with
that framework's defaults — from the same facts its launch-file reader holds.

A preset *is* what the framework's reader makes of a minimal launch file: one naming only what the framework
requires (the model, the algorithm, the GPUs; verl also a rollout engine and a micro batch), plus the few
request knobs the user gave from which the reader derives other fields (``KNOBS``: the stage of OpenRLHF's
frozen models follows ``ds.zero_stage``, verl's reference mode follows ``lora_rank`` …). ``launch_file`` writes
that file; ``preset`` reads it back with the reader; the request then takes every field it was given from the
user and the rest from the preset (``EstimateRequest``'s validator). tests/test_presets.py checks, framework by
framework, that a preset equals the reader's request from the same minimal file in tests/data.

    framework        reader (release)                       minimal launch file
    verl             memplan.frameworks.verl (0.9.1)          model.path, adv_estimator, trainer.nnodes /
                                                              n_gpus_per_node, rollout.name=vllm (verl's
                                                              '???': required), ppo_micro_batch_size_per_gpu
                                                              (required unless use_dynamic_bsz)
    trl              memplan.frameworks.trl (1.16)            recipe: model_name_or_path; accelerate config:
                                                              num_processes, num_machines, distributed_type
                                                              (MULTI_GPU: accelerate's default without a config
                                                              file; NO on one GPU)
    openrlhf         memplan.frameworks.openrlhf (0.11.2)     --actor.model_name_or_path, --actor.num_nodes /
                                                              num_gpus_per_node (each model its own GPUs, as
                                                              train_ppo_ray places them by default),
                                                              --algo.advantage.estimator
    deepspeed-chat   memplan.frameworks.dschat (DeepSpeed-    --actor_model_name_or_path,
                     Examples @83757d9)                       --critic_model_name_or_path (the same),
                                                              --enable_hybrid_engine (every shipped script)
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from memplan.errors import InputError
from memplan.estimator.consistency import DEFAULT_GROUP, VLLM_FIELDS

if TYPE_CHECKING:
    from memplan.report import EstimateRequest

FRAMEWORKS = ("trl", "verl", "openrlhf", "deepspeed-chat")
RELEASE = {
    "verl": "verl 0.9.1 (trainer/config/_generated_ppo_trainer.yaml)",
    "trl": "TRL 1.16 (GRPOConfig, RLOOConfig, DPOConfig, SFTConfig) under accelerate's default launch",
    "openrlhf": "OpenRLHF 0.11.2 (cli/train_ppo_ray.py)",
    "deepspeed-chat": "DeepSpeed-Chat step 3 (main.py, DeepSpeedExamples @83757d9) with its hybrid engine",
}
DEFAULT_ALGO = {"verl": "ppo", "trl": "grpo", "openrlhf": "ppo", "deepspeed-chat": "ppo"}
"""The algorithm of a launch file that names none: verl's adv_estimator gae, TRL's GRPO (its reader's
default), OpenRLHF's gae, DeepSpeed-Chat's PPO."""
ALGOS = {
    "verl": {"ppo": "gae", "grpo": "grpo", "rloo": "rloo", "remax": "remax"},  # algorithm.adv_estimator
    "trl": {"grpo": "grpo", "rloo": "rloo", "dpo": "dpo", "sft": "sft"},  # the trainer
    "openrlhf": {"ppo": "gae", "grpo": "group_norm", "rloo": "rloo"},  # algo.advantage.estimator
    "deepspeed-chat": {"ppo": "ppo", "remax": "remax"},  # DeepSpeed-Chat's trainer, ReMax's fork
}
A = "actor_rollout_ref"
KNOBS: dict[str, dict[str, str]] = {
    "verl": {"micro_batch_size": f"{A}.actor.ppo_micro_batch_size_per_gpu", "group_size": f"{A}.rollout.n",
             "lora_rank": f"{A}.model.lora_rank"},
    "trl": {"micro_batch_size": "per_device_train_batch_size", "group_size": "num_generations",
            "lora_rank": "lora_r"},
    "openrlhf": {"zero_stage": "ds.zero_stage", "lora_rank": "ds.lora.rank", "micro_batch_size":
                 "train.micro_batch_size", "group_size": "rollout.n_samples_per_prompt"},
    "deepspeed-chat": {"zero_stage": "actor_zero_stage", "lora_rank": "actor_lora_dim",
                       "micro_batch_size": "per_device_training_batch_size"},
}
"""Request fields written into the minimal launch file when given, as the framework's keys: the reader derives
other fields from them. A field given and not listed here overrides its own field only. OpenRLHF's
``placement`` 'colocated' is its ``--train.colocate_all``."""
PLACEHOLDER = "memplan/preset-model"
"""The model path written into a minimal launch file: the request's own model replaces what the reader makes
of it (an inline architecture has no path; a catalog name would add the reader's notes on it)."""


class Preset(NamedTuple):
    fields: dict[str, Any]
    """Request fields of the minimal launch file, without ``model`` and ``gpus`` (the request's own)."""
    notes: list[str]
    """The reader's notes on it."""


def launch_file(framework: str, algo: str, gpus: str, knobs: dict[str, Any] | None = None,
                model: str = PLACEHOLDER) -> dict[str, str]:
    """The minimal launch file(s) of a run, as text: ``{"script": ...}`` (verl, OpenRLHF, DeepSpeed-Chat) or
    ``{"recipe": ..., "accelerate": ...}`` (TRL). ``knobs``: request fields among ``KNOBS[framework]`` (and
    OpenRLHF's ``placement``)."""
    from memplan.catalog import parse_cluster

    if framework not in ALGOS:
        raise InputError("framework", f"one of {', '.join(FRAMEWORKS)}, got {framework!r}", framework)
    if algo not in ALGOS[framework]:
        raise InputError("algo", f"the {framework} preset covers {', '.join(ALGOS[framework])} (what its reader "
                         f"reads), got {algo!r}", algo)
    cluster = parse_cluster(gpus)
    nodes, per_node = cluster.num_nodes, cluster.gpus_per_node
    placement = (knobs or {}).get("placement")
    knobs = {KNOBS[framework][k]: v for k, v in (knobs or {}).items() if k in KNOBS[framework]}
    if framework == "verl":
        settings = {f"{A}.model.path": model, "algorithm.adv_estimator": ALGOS["verl"][algo],
                    "trainer.nnodes": nodes, "trainer.n_gpus_per_node": per_node, f"{A}.rollout.name": "vllm",
                    f"{A}.actor.ppo_micro_batch_size_per_gpu": 1, **knobs}
        lines = ["python3 -m verl.trainer.main_ppo"] + [f"    {k}={_text(v)}" for k, v in settings.items()]
        return {"script": " \\\n".join(lines) + "\n"}
    if framework == "trl":
        recipe = {"model_name_or_path": model, **knobs}
        if recipe.get("lora_r"):
            recipe["use_peft"] = True
        else:  # lora_rank 0: no PEFT
            recipe.pop("lora_r", None)
        processes = nodes * per_node
        kind = "MULTI_GPU" if processes > 1 else "'NO'"  # quoted: YAML 1.1 reads a bare NO as false
        accelerate = f"distributed_type: {kind}\nnum_machines: {nodes}\nnum_processes: {processes}\n"
        return {"recipe": "".join(f"{k}: {_text(v)}\n" for k, v in recipe.items()), "accelerate": accelerate}
    if framework == "openrlhf":
        args = {"actor.model_name_or_path": model, "actor.num_nodes": nodes, "actor.num_gpus_per_node": per_node,
                "algo.advantage.estimator": ALGOS["openrlhf"][algo], **knobs}
        if placement == "colocated":
            args["train.colocate_all"] = True
        return {"script": "python3 -m openrlhf.cli.train_ppo_ray " + " ".join(f"--{k} {_text(v)}" for k, v in
                                                                          args.items()) + "\n"}
    args = {"actor_model_name_or_path": model, "critic_model_name_or_path": model, **knobs}
    return {"script": "deepspeed main.py " + " ".join(f"--{k} {_text(v)}" for k, v in args.items())
            + " --enable_hybrid_engine\n"}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def read_launch(framework: str, files: dict[str, str], gpus: str, algo: str,
                given: frozenset[str] = frozenset()) -> tuple[dict[str, Any], list[str]]:
    """What the framework's reader makes of ``files`` (``launch_file``'s form): its request fields and notes.
    ``gpus`` is the whole cluster; ``given``: the request fields the caller sets itself."""
    if framework == "verl":
        from memplan.frameworks import verl

        run = verl.fields(verl.read(files["script"]), _kind(gpus))
    elif framework == "trl":
        from memplan.frameworks import trl

        run = trl.fields(trl.read(files["recipe"]), trl.read_accelerate(files["accelerate"]), _kind(gpus), algo,
                         given)
    elif framework == "openrlhf":
        from memplan.frameworks import openrlhf

        run = openrlhf.fields(openrlhf.read(files["script"]), _kind(gpus))
    else:
        from memplan.frameworks import dschat

        run = dschat.fields(dschat.read(files["script"]), gpus, algo)
    return run.fields, run.notes


def _kind(gpus: str) -> str:
    from memplan.catalog import parse_cluster

    return parse_cluster(gpus).gpu.name


def preset(framework: str, algo: str, gpus: str, knobs: dict[str, Any] | None = None,
           given: frozenset[str] = frozenset()) -> Preset:
    """The preset of ``framework`` for a run of ``algo`` on ``gpus``: the reader's fields of the minimal launch
    file, less ``model`` and ``gpus``. Errors of the readers name ``framework`` (or the request field)."""
    from memplan.report import EstimateRequest

    files = launch_file(framework, algo, gpus, knobs)
    try:
        fields, notes = read_launch(framework, files, gpus, algo, given | {"model"})
    except InputError as exc:
        if exc.field in EstimateRequest.model_fields:
            raise
        raise InputError("framework", f"the {framework} preset: {exc}", framework) from None
    if framework == "openrlhf" and fields.get("placement") == "split":
        fields, notes = _split_openrlhf(algo, fields, gpus, knobs)
    fields.pop("model", None)
    fields.pop("gpus", None)
    return Preset(fields, [n for n in notes if PLACEHOLDER not in n])


def _split_openrlhf(algo: str, fields: dict[str, Any], gpus: str, knobs: dict[str, Any] | None,
                    model: str = PLACEHOLDER) -> tuple[dict[str, Any], list[str]]:
    """OpenRLHF's default placement gives each model GPUs of its own, as many as the actor's
    (``--actor.num_nodes × num_gpus_per_node``): the request's GPUs are all the groups', so the minimal launch
    file gives the actor ``gpus ÷ groups`` of them."""
    from memplan.catalog import parse_cluster

    cluster = parse_cluster(gpus)
    groups = 1 + len(_roles(fields)) - len(fields.get("split_groups", ()))
    if cluster.num_gpus % groups:
        raise InputError("gpus", f"OpenRLHF's default placement (no --colocate_all_models) gives each of its "
                         f"{groups} model groups GPUs of its own, as many as the actor's: give a multiple of "
                         f"{groups} GPUs, or placement 'colocated'", gpus)
    actor = cluster.num_gpus // groups
    per_node = min(actor, cluster.gpus_per_node)
    name = cluster.gpu.name
    actor_gpus = f"{actor}x{name}" if actor == per_node else f"{actor // per_node}x{per_node}x{name}"
    return read_launch("openrlhf", launch_file("openrlhf", algo, actor_gpus, knobs, model), gpus, algo)


def _roles(fields: dict[str, Any]) -> set[str]:
    """The models beside the actor that OpenRLHF loads (its reader's ``active``)."""
    roles = set()
    if fields.get("algo") == "ppo":
        roles.add("critic")
    if fields.get("ref") == "separate":
        roles.add("reference")
    if fields.get("reward") == "model":
        roles.add("reward")
    return roles


def preset_fields(request: EstimateRequest, given: frozenset[str]) -> dict[str, Any]:
    """The preset fields for a request whose ``framework`` is set; ``given``: the fields the caller gave (its
    knobs go into the launch file, and an algorithm not given is the framework's own default)."""
    framework = request.framework
    assert framework is not None
    algo = request.algo if "algo" in given else DEFAULT_ALGO[framework]
    knobs = {k: getattr(request, k) for k in (*KNOBS[framework], "placement") if k in given}
    fields = preset(framework, algo, request.gpus, knobs, given).fields
    if "rollout_engine" in given and request.rollout_engine != "vllm":  # vLLM's settings: not another engine's
        dropped = {*VLLM_FIELDS, *(() if request.rollout_engine == "remote" else ("weight_sync_bucket_mb",))}
        fields = {k: v for k, v in fields.items() if k not in dropped}
    return {**fields, "algo": algo}


def _no_group(framework: str, algo: str, gpus: str) -> bool:
    """The framework's own default gives a group algorithm one completion per prompt (verl's ``rollout.n`` 1,
    OpenRLHF's ``n_samples_per_prompt`` 1): a group baseline over one sample is no baseline (OpenRLHF refuses
    ``group_norm`` with one). The preset keeps the framework's value, as its launch file would run it, and the
    report's notes say to set the group."""
    if algo not in DEFAULT_GROUP or "group_size" not in KNOBS[framework]:
        return False
    return dict(_bare(framework, algo, gpus)[0]).get("group_size", 1) <= 1


def preset_notes(request: EstimateRequest) -> tuple[str, ...]:
    """The report's notes on a preset: which fields hold the framework's defaults, and its reader's notes.
    A pure function of the request's fields (a field that holds the preset's value is listed, given or not)."""
    framework = request.framework
    if framework is None:
        return ()
    try:
        fields, notes = _bare(framework, request.algo, request.gpus)
    except InputError:
        return ()
    same = [f"{k}={_shown(v)}" for k, v in fields if getattr(request, k) == v]
    out = [f"framework {framework}: {RELEASE[framework]}'s defaults, as memplan's reader takes a launch file "
           f"naming only the model, algorithm and GPUs: {', '.join(same)}; the fields given override them"]
    if _no_group(framework, request.algo, request.gpus) and (request.group_size or 1) <= 1:
        out.append(f"group_size 1: {framework}'s default is one completion per prompt, which {request.algo}'s "
                   f"group baseline cannot use: set the group (--group-size {DEFAULT_GROUP[request.algo]}, as "
                   f"memplan's default)")
    out += [f"{framework}: {note}" for note in notes]
    return tuple(out)


@lru_cache(maxsize=256)
def _bare(framework: str, algo: str, gpus: str) -> tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]:
    """``preset`` without knobs, frozen and cached: the planner estimates many variants of one run."""
    found = preset(framework, algo, gpus)
    return tuple(found.fields.items()), tuple(found.notes)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return "+".join("+".join(g) if isinstance(g, tuple) else str(g) for g in value)
    return str(value).lower() if isinstance(value, bool) else str(value)
