"""The model and GPU catalogs: lookups, error messages, cluster strings, every entry sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memplan.catalog import (
    MAX_GPUS,
    get_gpu,
    get_model,
    get_model_config,
    list_gpus,
    list_models,
    parse_cluster,
)
from memplan.errors import InputError, UnknownGPUError, UnknownModelError
from memplan.units import GB, GiB

REQUIRED_MODELS = [
    "huggyllama/llama-7b", "huggyllama/llama-13b",
    "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf",
    "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B",
    "mistralai/Mistral-7B-v0.1", "mistralai/Mixtral-8x7B-v0.1",
    *(f"Qwen/Qwen2.5-{s}" for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")),
    *(f"Qwen/Qwen3-{s}" for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")),
    "google/gemma-2-2b", "google/gemma-2-9b", "google/gemma-2-27b", "microsoft/Phi-3-mini-4k-instruct",
    *(f"facebook/opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")),
    *(f"EleutherAI/pythia-{s}" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")),
    *(f"openai-community/{s}" for s in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")),
    "memplan/tiny-llama", "memplan/tiny-qwen2", "memplan/tiny-opt", "memplan/tiny-gpt2",
]
REQUIRED_GPUS = [
    "A100-40GB", "A100-80GB", "A800-80GB", "H100-80GB", "H100-PCIe", "H800", "H20-96GB", "H200", "B200", "L40S",
    "A10G", "L4", "RTX-3090", "RTX-4090", "A6000", "V100-16GB", "V100-32GB", "MI300X", "MI250X", "T4",
]


def test_required_models_present():
    names = {m.name for m in list_models()}
    assert set(REQUIRED_MODELS) <= names


# Published parameter counts (model cards / papers), independent of memplan's formulas.
@pytest.mark.parametrize(
    ("name", "num_params"),
    [
        ("llama-2-7b", 6_738_415_616),  # Llama-2 model card rounding 7B; HF safetensors count
        ("Qwen/Qwen2.5-0.5B", 494_032_768),  # Qwen2.5 model card: 0.49B, tied embeddings
        ("pythia-70m", 70_426_624),  # Pythia paper, Table "Total params"
        ("pythia-12b", 11_846_072_320),  # Pythia paper
        ("gpt2", 124_439_808),  # GPT-2 small, tied head
        ("mixtral-8x7b", 46_702_792_704),  # Mixtral paper: 47B total
    ],
)
def test_published_counts(name, num_params):
    assert get_model(name).num_params == num_params


def test_get_model_by_name_and_alias():
    spec = get_model("meta-llama/Llama-2-7b-hf")
    assert spec.name == "meta-llama/Llama-2-7b-hf"
    assert get_model("llama2-7b") is spec
    assert get_model("META-LLAMA/LLAMA-2-7B-HF") is spec
    assert get_model("Llama-2-7b-hf") is spec  # name without the org
    assert (spec.hidden_size, spec.num_layers, spec.vocab_size) == (4096, 32, 32000)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError) as info:
        get_model("lama2-7b")
    err = info.value
    assert err.field == "model"
    assert "meta-llama/Llama-2-7b-hf" in str(err)
    assert isinstance(err, InputError)


def test_unknown_model_without_close_names():
    with pytest.raises(UnknownModelError, match="unknown model 'zzzz-qqqq'"):
        get_model("zzzz-qqqq")


def test_get_model_from_local_config(tmp_path):
    pytest.importorskip("transformers")
    config = get_model_config("memplan/tiny-llama")
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_folder = get_model(str(tmp_path))
    from_file = get_model(str(tmp_path / "config.json"))
    expected = get_model("memplan/tiny-llama")
    assert from_folder.num_params == from_file.num_params == expected.num_params == 158_016
    assert from_folder.name == str(tmp_path)


def test_local_config_with_unsupported_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(InputError, match="supported: .*llama") as info:
        get_model(str(tmp_path))
    assert info.value.field == "model"


def test_get_model_config_is_a_copy():
    config = get_model_config("opt-125m")
    config["hidden_size"] = 1
    assert get_model_config("facebook/opt-125m")["hidden_size"] == 768
    with pytest.raises(UnknownModelError):
        get_model_config("no-such-model")


def test_list_models_fields():
    models = {m.name: m for m in list_models()}
    opt = models["facebook/opt-350m"]
    assert opt.model_type == "opt"
    assert opt.num_params == 331_196_416  # HF model card / DeepSpeed-Chat critic size
    assert "opt-350m" in opt.aliases
    assert opt.source.startswith("https://huggingface.co/facebook/opt-350m")


def test_aliases_unique():
    seen: dict[str, str] = {}
    for m in list_models():
        for key in (m.name.lower(), *(a.lower() for a in m.aliases)):
            assert seen.setdefault(key, m.name) == m.name, key


@pytest.mark.parametrize("name", [m.name for m in list_models()])
def test_every_model_entry(name):
    spec = get_model(name)
    config = get_model_config(name)
    assert spec.model_type == config["model_type"]
    assert spec.num_params > 0 and spec.layer_params > 0 and spec.embedding_params > 0
    assert spec.num_params >= spec.embedding_params + spec.num_layers * spec.layer_params + spec.lm_head_params
    assert (spec.lm_head_params == 0) == spec.tie_word_embeddings
    assert spec.num_heads % spec.num_kv_heads == 0
    assert any(lin.attention for lin in spec.linears) and any(not lin.attention for lin in spec.linears)


def test_get_gpu():
    gpu = get_gpu("a100-40gb")
    assert gpu.name == "A100-40GB"
    with pytest.raises(UnknownGPUError, match="A100-40GB or A100-80GB"):  # two memory sizes: refused, not guessed
        get_gpu("A100")
    # torch total_memory of an A100-SXM4-40GB (39.49 GiB), torch 2.11.0 / CUDA 13.0: device.total_bytes of AgileRL's
    # fixtures/*@NVIDIA-A100-SXM4-40GB.json (memory/profiling-rig @0151c660, sweep.py::_device_identity)
    assert gpu.memory_bytes == 42_404_806_656
    assert get_gpu("h100").name == "H100-80GB"
    assert get_gpu("RTX 4090").name == "RTX-4090"


def test_gpus_measured_by_the_corpus():
    """A100-40GB's and L4's capacity is what AgileRL's sweep read on them (memory/profiling-rig @0151c660, torch 2.11.0
    / CUDA 13.0): torch total_memory, the fixtures' device.total_bytes, as every corpus record carries it. Their CUDA
    contexts are AgileRL's measured ones (agilerl/memory/specs.py::MEASURED_CUDA_CONTEXT_BYTES, NVML either side of
    a one-element allocation: A100 501 MiB, L4 226 MiB), applied since validate nets NVML's driver reserve, NVML's
    v1 total − torch's, out of the NVML peaks (every record carries NVML's total: 40,960 and 23,034 MiB)."""
    corpus = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus" / "agilerl.jsonl"
    totals = {(r["device"]["catalog_gpu"], r["device"]["total_bytes"]) for r in map(json.loads, corpus.open())}
    assert totals == {("A100-40GB", 42_404_806_656), ("L4", 23_659_151_360)}
    for name, total in totals:
        assert get_gpu(name).memory_bytes == total
    assert get_gpu("A100-40GB").cuda_context_bytes == 525_336_576 == 501 * 2**20
    assert get_gpu("L4").cuda_context_bytes == 236_978_176 == 226 * 2**20
    nvml = {(r["device"]["catalog_gpu"], r["device"]["nvml_total_bytes"]) for r in map(json.loads, corpus.open())}
    assert nvml == {("A100-40GB", 40_960 * 2**20), ("L4", 23_034 * 2**20)}


def test_unknown_gpu():
    with pytest.raises(UnknownGPUError) as info:
        get_gpu("A1000")
    assert info.value.field == "gpus"
    assert "A100-40GB" in str(info.value)


def test_required_gpus_present():
    assert set(REQUIRED_GPUS) <= {g.name for g in list_gpus()}


@pytest.mark.parametrize("gpu", list_gpus(), ids=lambda g: g.name)
def test_every_gpu_entry(gpu):
    assert 8 * GiB <= gpu.memory_bytes <= 200 * GiB
    assert 0.2 * GiB <= gpu.cuda_context_bytes <= 1 * GiB
    assert 10 <= gpu.bf16_tflops <= 5000
    assert gpu.source.startswith("https://")
    assert gpu.vendor in ("nvidia", "amd")
    # capacity never exceeds the nominal size in the name (datasheet GB, or GiB for HBM sizes)
    nominal = {"A100-40GB": 40 * GiB, "A100-80GB": 80 * GiB, "H100-80GB": 80 * GiB, "V100-16GB": 16 * GiB}
    if gpu.name in nominal:
        assert gpu.memory_bytes <= nominal[gpu.name]
    assert get_gpu(gpu.name) is gpu
    for alias in gpu.aliases:
        assert get_gpu(alias) is gpu


@pytest.mark.parametrize(
    ("text", "gpu", "nodes", "per_node"),
    [
        ("8xA100-40GB", "A100-40GB", 1, 8),
        ("8×A100-40GB", "A100-40GB", 1, 8),
        ("8 x a100-40gb", "A100-40GB", 1, 8),
        ("2x8xH100-80GB", "H100-80GB", 2, 8),
        ("2X8XH100", "H100-80GB", 2, 8),
        ("A100-80GB", "A100-80GB", 1, 1),
        ("1xT4", "T4", 1, 1),
        ("8192x8xH100", "H100-80GB", 8192, 8),
    ],
)
def test_parse_cluster(text, gpu, nodes, per_node):
    cluster = parse_cluster(text)
    assert (cluster.gpu.name, cluster.num_nodes, cluster.gpus_per_node) == (gpu, nodes, per_node)
    assert cluster.num_gpus == nodes * per_node


@pytest.mark.parametrize("text", ["", "0xA100", "2x0xA100", "8x", "x8", "9x9x9xA100", "65537xA100", "1.5xA100", 8])
def test_parse_cluster_rejects(text):
    with pytest.raises(InputError) as info:
        parse_cluster(text)
    assert info.value.field == "gpus"


def test_parse_cluster_error_names_form_and_range():
    with pytest.raises(InputError, match=rf"1\.\.{MAX_GPUS}.*'8xA100-40GB'"):
        parse_cluster("100000xA100")
    with pytest.raises(UnknownGPUError, match="unknown GPU 'Z80'"):
        parse_cluster("8xZ80")


def test_import_does_not_pull_torch():
    code = "import memplan.catalog, sys; memplan.catalog.get_model('llama-2-7b'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_b200_uses_datasheet_gb():
    assert get_gpu("B200").memory_bytes == 180 * GB  # datasheet: 180 GB HBM3e per GPU in DGX B200


def test_a_name_no_file_system_takes_is_an_unknown_model():
    """A 5,000-character name is not a path (the OS refuses it: ENAMETOOLONG): an unknown model, not an OSError
    (found by fuzzing the verl reader, which passes model paths through)."""
    for name in ("x" * 5000, "a/" * 3000):
        with pytest.raises(UnknownModelError):
            get_model(name)
