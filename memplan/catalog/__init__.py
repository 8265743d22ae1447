"""The model and GPU catalogs: data with sources, loaded once and looked up by name or alias.

* ``models/<slug>.json`` — ``{"name", "aliases", "source", "config"}``; ``config`` is the model's published
  config.json (``source`` links it). ``get_model`` resolves it into a ``ModelSpec`` in pure Python.
* ``gpus.json`` — one entry per GPU with its addressable memory, typical CUDA context and datasheet link.
  ``memory_bytes`` is what one PyTorch process can address on the device: ``torch.cuda.get_device_properties
  (i).total_memory`` where known, else nvidia-smi's total or the datasheet figure (``memory_basis`` says
  which). The CUDA context comes out of it and is counted separately (``cuda_context_bytes``).

Nothing here imports torch; a path to a local config.json goes through transformers, imported lazily.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from memplan import disk
from memplan.errors import InputError, UnknownGPUError, UnknownModelError, shown
from memplan.specs import ModelSpec, spec_from_config, spec_from_path

__all__ = [
    "CatalogModel",
    "Cluster",
    "GPUSpec",
    "MAX_GPUS",
    "catalog_name",
    "get_gpu",
    "get_model",
    "get_model_config",
    "list_gpus",
    "list_models",
    "parse_cluster",
]

_HERE = Path(__file__).parent
MAX_GPUS = 65_536
"""Largest cluster ``parse_cluster`` accepts (nodes × GPUs per node)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CatalogModel:
    """One catalog model, as ``list_models`` shows it."""

    name: str
    """HF ``org/name``."""
    aliases: tuple[str, ...]
    num_params: int
    source: str
    """Where the config.json facts come from."""
    model_type: str


@dataclass(frozen=True, kw_only=True, slots=True)
class GPUSpec:
    """One GPU model."""

    name: str
    memory_bytes: int
    """Memory one process can address on the device (see the module docstring)."""
    cuda_context_bytes: int
    """Typical CUDA context + library handles (torch 2.x, cuBLAS, cuDNN) taken out of ``memory_bytes``."""
    bf16_tflops: float
    """Dense bf16 tensor-core peak (no sparsity)."""
    source: str
    """Datasheet URL."""
    vendor: str = "nvidia"
    aliases: tuple[str, ...] = ()
    gpus_per_node: int = 8
    """GPUs of this kind one node holds (the usual server: a DGX/HGX board, the largest cloud instance; gpus.json
    cites each): ``parse_cluster`` reads ``'N x GPU'`` with N above it as N / gpus_per_node nodes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Cluster:
    """GPUs the run has: ``num_nodes`` × ``gpus_per_node`` devices of one kind."""

    gpu: GPUSpec
    num_nodes: int
    gpus_per_node: int
    nodes_inferred: bool = False
    """``'N x GPU'`` with N above the GPU's ``gpus_per_node``, read as several nodes (the report says so)."""

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


def _key(name: str) -> str:
    """Lookup key: case-insensitive, '_' and ' ' read as '-'."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


# ---------------------------------------------------------------------------------------------- models


@lru_cache(maxsize=1)
def _model_entries() -> dict[str, dict]:
    """Every model entry by its name, loaded once."""
    entries = {}
    for file in sorted((_HERE / "models").glob("*.json")):
        entry = json.loads(file.read_text(encoding="utf-8"))
        entries[entry["name"]] = entry
    return entries


@lru_cache(maxsize=1)
def _model_index() -> dict[str, str]:
    """Lookup key (name, name without org, aliases) → catalog name."""
    index: dict[str, str] = {}
    for name, entry in _model_entries().items():
        for key in (name, name.split("/", 1)[-1], *entry["aliases"]):
            index.setdefault(_key(key), name)
    return index


def _resolve_model_name(name: str) -> str | None:
    if not isinstance(name, str) or not name.strip():
        raise InputError("model", "give a catalog name (e.g. 'meta-llama/Llama-2-7b-hf') or a config.json path", name)
    return _model_index().get(_key(name))


def catalog_name(name: str) -> str | None:
    """The catalog's name for ``name`` (a name or alias, any letter case), else None: no file is looked at and
    no close matches are computed (the framework readers try several candidates)."""
    return _model_index().get(_key(name)) if isinstance(name, str) and len(name) <= MAX_PATH else None


MAX_PATH = 4096  # Linux's PATH_MAX
MAX_SUGGESTED = 128  # characters of an unknown name worth comparing with the catalog's (difflib is quadratic)


def _unknown_model(name: str) -> UnknownModelError:
    keys = list(_model_index())
    close = difflib.get_close_matches(_key(name), keys, n=6, cutoff=0.5) if len(name) <= MAX_SUGGESTED else []
    names = dict.fromkeys(_model_index()[c] for c in close)
    hint = f"; did you mean {', '.join(map(repr, names))}?" if close else ""
    return UnknownModelError(
        "model",
        f"unknown model {shown(name)}{hint} (see `memplan models` / list_models(); a path to a config.json also works)",
        name,
    )


@lru_cache(maxsize=None)
def _catalog_spec(name: str) -> ModelSpec:
    return spec_from_config(_model_entries()[name]["config"], name)


def get_model(name: str) -> ModelSpec:
    """The ``ModelSpec`` for a catalog name (HF ``org/name``, case-insensitive) or alias, or a local
    config.json / model folder. Unknown names raise ``UnknownModelError`` with close matches."""
    if len(name) > MAX_PATH:  # neither a catalog name nor a path any file system takes
        raise _unknown_model(name)
    found = _resolve_model_name(name)
    if found is not None:
        return _catalog_spec(found)
    if not disk.allowed():  # the service: a name, never a path (and no word on whether it exists)
        raise _unknown_model(name)
    path = Path(name).expanduser()
    try:
        local = path.is_file() or (path.is_dir() and (path / "config.json").is_file())
    except OSError:  # a name no file system takes (too long, ...): not a path
        local = False
    if local:
        return spec_from_path(path)
    raise _unknown_model(name)


def get_model_config(name: str) -> dict:
    """A copy of the raw config.json dict of a catalog entry (to build the real transformers model)."""
    found = _resolve_model_name(name)
    if found is None:
        raise _unknown_model(name)
    return json.loads(json.dumps(_model_entries()[found]["config"]))


FIXTURE_PREFIX = "memplan/"
"""Names of the synthetic test models (``memplan/tiny-llama`` …): loadable by name, not real checkpoints."""


def list_models(*, fixtures: bool = True) -> list[CatalogModel]:
    """Every catalog model, sorted by name; ``fixtures=False`` leaves out the synthetic test models
    (``memplan/tiny-*``), as ``memplan models`` and ``GET /v1/models`` list them."""
    return [
        CatalogModel(
            name=name, aliases=tuple(entry["aliases"]), num_params=_catalog_spec(name).num_params,
            source=entry["source"], model_type=entry["config"]["model_type"],
        )
        for name, entry in sorted(_model_entries().items(), key=lambda kv: kv[0].lower())
        if fixtures or not name.startswith(FIXTURE_PREFIX)
    ]


# ------------------------------------------------------------------------------------------------ GPUs


@lru_cache(maxsize=1)
def _gpus() -> dict[str, GPUSpec]:
    """Lookup key (name and aliases) → GPUSpec, loaded once; insertion order is the file's."""
    data = json.loads((_HERE / "gpus.json").read_text(encoding="utf-8"))
    index: dict[str, GPUSpec] = {}
    for row in data["gpus"]:
        gpu = GPUSpec(
            name=row["name"], memory_bytes=int(row["memory_bytes"]), cuda_context_bytes=int(row["cuda_context_bytes"]),
            bf16_tflops=float(row["bf16_tflops"]), source=row["source"], vendor=row["vendor"],
            aliases=tuple(row["aliases"]), gpus_per_node=int(row["gpus_per_node"]),
        )
        for key in (gpu.name, *gpu.aliases):
            index.setdefault(_key(key), gpu)
    return index


def get_gpu(name: str) -> GPUSpec:
    """The GPU for a catalog name or alias (case-insensitive); ``UnknownGPUError`` with close matches."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownGPUError("gpus", "empty GPU name", name)
    gpu = _gpus().get(_key(name))
    if gpu is None and (choices := _ambiguous(_key(name))):
        raise UnknownGPUError("gpus", f"{name!r} is ambiguous: say which, {' or '.join(choices)}", name)
    if gpu is None:
        close = difflib.get_close_matches(_key(name), list(_gpus()), n=3, cutoff=0.5)
        names = ", ".join(dict.fromkeys(_gpus()[c].name for c in close))
        hint = f"; did you mean {names}?" if close else ""
        known = ", ".join(g.name for g in list_gpus())
        raise UnknownGPUError("gpus", f"unknown GPU {name!r}{hint} Known GPUs: {known}", name)
    return gpu


def _ambiguous(key: str) -> list[str]:
    """The GPUs a bare family name stands for when several share it ('a100': A100-40GB and A100-80GB)."""
    names = dict.fromkeys(g.name for k, g in _gpus().items() if k.startswith(key + "-"))
    return list(names) if len(names) > 1 else []


def list_gpus() -> list[GPUSpec]:
    """Every catalog GPU, in catalog order."""
    return list({id(g): g for g in _gpus().values()}.values())


_CLUSTER = re.compile(r"^(?:([0-9]+)\s*[x×*]\s*)?(?:([0-9]+)\s*[x×*]\s*)?([A-Za-z].*)$", re.IGNORECASE | re.ASCII)
"""ASCII digits only: ``int()`` would read '８' (fullwidth) or '٨' (Arabic-Indic) as 8."""
_CLUSTER_FORM = "'N x GPU' ('8xA100-40GB'), 'nodes x gpus-per-node x GPU' ('2x8xH100-80GB') or 'GPU' (one)"


def parse_cluster(text: str) -> Cluster:
    """Parse ``'8xA100-40GB'``, ``'8×A100-40GB'``, ``'2x8xH100-80GB'`` or ``'A100-80GB'`` (one GPU).

    ``'N x GPU'`` is one node when N fits in one (the GPU's ``gpus_per_node``, 8 for SXM/HGX boards); above that,
    N / gpus_per_node nodes of gpus_per_node GPUs (``nodes_inferred``), or an error naming ``gpus`` when N is not
    a multiple of it. ``'nodes x gpus-per-node x GPU'`` is taken as written (a DGX-2 holds 16 V100s).
    Errors name the field ``gpus``, the allowed form and the range 1..65536 GPUs.
    """
    if not isinstance(text, str):
        raise InputError("gpus", f"expected {_CLUSTER_FORM}, got {text!r}", text)
    match = _CLUSTER.match(text.strip())
    if match is None:
        digits = " in ASCII digits (0-9)" if any(c.isdigit() and not c.isascii() for c in text) else ""
        raise InputError("gpus", f"expected {_CLUSTER_FORM}{digits}, got {text!r}", text)
    first, second, gpu_name = match.groups()
    if second is None:
        nodes, per_node = 1, int(first) if first is not None else 1
    else:
        nodes, per_node = int(first), int(second)
    if nodes < 1 or per_node < 1 or nodes * per_node > MAX_GPUS:
        raise InputError(
            "gpus", f"{text!r} asks for {nodes * per_node} GPUs; allowed 1..{MAX_GPUS} in the form {_CLUSTER_FORM}",
            text,
        )
    gpu = get_gpu(gpu_name)
    if second is None and per_node > gpu.gpus_per_node:
        node = gpu.gpus_per_node
        if per_node % node:
            even = max(d for d in range(1, node + 1) if per_node % d == 0)  # the fullest even split
            raise InputError("gpus", f"{per_node} {gpu.name} GPUs do not fill whole nodes of {node} (one node holds "
                             f"{node}): give a multiple of {node}, or write the nodes out as 'nodes x gpus-per-node x "
                             f"GPU' (e.g. '{per_node // even}x{even}x{gpu.name}')", text)
        return Cluster(gpu=gpu, num_nodes=per_node // node, gpus_per_node=node, nodes_inferred=True)
    return Cluster(gpu=gpu, num_nodes=nodes, gpus_per_node=per_node)
