"""Exact parameter counts: every catalog entry against the model transformers builds on the meta device.

The reference numbers come from transformers itself (``sum(p.numel() for p in model.parameters())``, which
counts tied weights once) — not from memplan's formulas. Tests without torch run everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest

from memplan.catalog import get_model, get_model_config, list_models
from memplan.errors import InputError
from memplan.report import ArchConfig
from memplan.specs import spec_from_arch, spec_from_config

EMBEDDING_MODULES = {"embed_tokens", "embed_positions", "project_in", "project_out", "wte", "wpe", "embed_in"}


@functools.lru_cache(maxsize=None)
def _build(name: str):
    """The AutoModelForCausalLM transformers builds from the catalog config, on the meta device (no memory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = get_model_config(name)
    model_type = config.pop("model_type")
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf_config)


def _decoder_layers(model, num_layers: int):
    for _, module in model.named_modules():
        if type(module).__name__ == "ModuleList" and len(module) == num_layers:
            return module
    raise AssertionError("no decoder ModuleList")


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


CATALOG = [m.name for m in list_models()]
UNIFORM = [n for n in CATALOG if not get_model(n).layer_groups]
"""Models whose decoder layers are all alike (Gemma-4's layer groups: tests/test_gemma4.py, group by group)."""


@pytest.mark.parametrize("name", UNIFORM)
def test_counts_match_transformers(name):
    model = _build(name)
    spec = get_model(name)
    assert spec.num_params == _numel(model)  # parameters() yields a tied weight once
    layers = _decoder_layers(model, spec.num_layers)
    assert {_numel(layer) for layer in layers} == {spec.layer_params}

    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head.weight is embed.weight
    assert tied == spec.tie_word_embeddings
    assert spec.lm_head_params == (0 if tied else _numel(head))

    embedding = sum(
        _numel(module) for qualified, module in model.named_modules()
        if qualified.rsplit(".", 1)[-1] in EMBEDDING_MODULES and module is not None
    )
    assert spec.embedding_params == embedding
    assert embed.weight.shape[0] == spec.vocab_size


@pytest.mark.parametrize("name", UNIFORM)
def test_linears_match_modules(name):
    """Every 2-D weight of a decoder layer is one listed linear (same shape); expert tensors match counts."""
    spec = get_model(name)
    layer = _decoder_layers(_build(name), spec.num_layers)[0]
    found = {}
    for qualified, module in layer.named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and weight.dim() == 2 and "weight" in dict(module.named_parameters(recurse=False)):
            conv1d = type(module).__name__ == "Conv1D"  # GPT-2 stores weights in×out
            out_f, in_f = (weight.shape[1], weight.shape[0]) if conv1d else tuple(weight.shape)
            found[qualified] = (in_f, out_f)
    dense = [lin for lin in spec.linears if lin.count == 1]
    assert len(found) == len(dense), (sorted(found), [lin.name for lin in dense])
    for lin in dense:
        matches = [q for q in found if q == lin.name or q.endswith("." + lin.name)]
        assert len(matches) == 1, (lin.name, sorted(found))
        assert found[matches[0]] == (lin.in_features, lin.out_features), lin.name
        assert lin.attention == ("attn" in matches[0] or "attention" in matches[0]), lin.name

    experts = [lin for lin in spec.linears if lin.count > 1]
    expert_tensors = [p for p in layer.parameters() if p.dim() == 3]
    assert sum(lin.count * lin.in_features * lin.out_features for lin in experts) == sum(
        p.numel() for p in expert_tensors
    )
    for lin in experts:
        assert lin.count == spec.num_experts


def test_published_llama2_7b():
    # Llama-2-7B: 32 × 202,383,360 per layer + 2 × 131,072,000 (embed, head) + 4,096 (final norm) = 6,738,415,616
    spec = get_model("meta-llama/Llama-2-7b-hf")
    assert spec.layer_params == 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096 == 202_383_360
    assert spec.num_params == 6_738_415_616


def test_qwen25_tied_head_has_no_params():
    spec = get_model("Qwen/Qwen2.5-0.5B")
    assert spec.tie_word_embeddings and spec.lm_head_params == 0
    assert spec.num_params == 494_032_768  # Qwen2.5-0.5B model card (0.49B)
    assert spec.backbone_params == spec.num_params


def test_opt_350m_projections():
    # OPT-350m: word embeddings of width 512, project_in/out to 1024, positions 2048 + 2 offset, no final LN
    spec = get_model("opt-350m")
    assert spec.embedding_params == 50272 * 512 + 2050 * 1024 + 2 * 512 * 1024
    assert spec.num_params == 331_196_416


def test_config_key_variants():
    # gpt2: n_embd / n_layer / n_head; n_inner absent → 4h
    gpt2 = spec_from_config({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100}, "g")
    assert gpt2.intermediate_size == 256 and gpt2.max_position_embeddings == 1024 and gpt2.tie_word_embeddings
    # head_dim and num_key_value_heads absent → h/a and a
    llama = spec_from_config(
        {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
         "intermediate_size": 128, "vocab_size": 100}, "l",
    )
    assert (llama.head_dim, llama.num_kv_heads) == (16, 4)
    # OPT: ffn_dim
    opt = spec_from_config(
        {"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "ffn_dim": 96,
         "vocab_size": 100}, "o",
    )
    assert opt.intermediate_size == 96


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_hidden_layers": "32"}, "num_hidden_layers"),
        ({"vocab_size": 1.5}, "vocab_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"model_type": "t5"}, "model_type"),
        ({"num_attention_heads": 7, "num_key_value_heads": 7}, "num_attention_heads"),
    ],
)
def test_bad_config_names_the_field(change, field):
    config = {**get_model_config("memplan/tiny-llama"), **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(InputError) as info:
        spec_from_config(config, "bad")
    assert info.value.field == field


def test_mixtral_needs_experts():
    config = get_model_config("memplan/tiny-mixtral")
    del config["num_local_experts"]
    with pytest.raises(InputError, match="num_local_experts"):
        spec_from_config(config, "bad")


def test_spec_from_arch_matches_catalog():
    arch = ArchConfig(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008, vocab_size=32000,
    )
    spec = spec_from_arch(arch)
    assert spec.name == "inline"
    assert spec.num_params == get_model("llama-2-7b").num_params
    assert (spec.num_kv_heads, spec.head_dim) == (32, 128)


def test_spec_from_arch_family_defaults():
    # gpt2 is tied unless the request says otherwise; OPT takes its own 2048 positions when unset
    gpt2 = ArchConfig(model_type="gpt2", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, vocab_size=50257, max_position_embeddings=1024)
    assert spec_from_arch(gpt2).num_params == get_model("gpt2").num_params == 124_439_808
    mixtral = ArchConfig(model_type="mixtral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=14336, vocab_size=32000, num_local_experts=8,
                         num_experts_per_tok=2)
    assert spec_from_arch(mixtral).num_params == get_model("mixtral-8x7b").num_params
    with pytest.raises(InputError, match="num_local_experts"):
        spec_from_arch(ArchConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=10, num_local_experts=4, num_experts_per_tok=1))


@pytest.mark.parametrize("name", CATALOG)
def test_spec_from_path_round_trip(name, tmp_path):
    """A config.json read through transformers' config class (to_dict) resolves to the same spec."""
    pytest.importorskip("transformers")
    from memplan.specs import spec_from_path

    file = tmp_path / "config.json"
    file.write_text(json.dumps(get_model_config(name)))
    assert dataclasses.replace(spec_from_path(file), name=name) == get_model(name)
