"""Catalog gaps (issue 15 item 18) and the model types of the measurement corpus (issue 16 part 4).

* Entries added from verbatim config.json copies: their counts against transformers on the meta device (as every
  entry in tests/test_specs.py) and against an independent figure where one exists.
* Chat tunes listed as aliases of their base (``alias_notes``: the compared copies): ``--model`` and the framework
  readers resolve them to the same spec.
* ``olmoe``, ``gemma3_text`` and ``gemma3`` (Gemma-3's multimodal config, ``text_config`` + SigLIP ``vision_config``):
  ``spec_from_config`` against the model ``AutoModelForCausalLM.from_config`` builds, parameter by parameter.
"""

from __future__ import annotations

import json

import pytest

from memplan.catalog import get_model, get_model_config, list_models
from memplan.errors import InputError
from memplan.frameworks.common import catalog_model
from memplan.report import ArchConfig
from memplan.specs import SUPPORTED_MODEL_TYPES, spec_from_arch, spec_from_config

ADDED = ["meta-llama/Llama-3.3-70B-Instruct", "microsoft/phi-4"]


def _entries() -> list[dict]:
    from memplan.catalog import _model_entries  # the raw entries: alias_notes is data no API returns

    return list(_model_entries().values())


ALIAS_NOTES = [(e["name"], tune, note) for e in _entries() for tune, note in e.get("alias_notes", {}).items()]


@pytest.mark.parametrize("name", ADDED)
def test_added_entry_is_listed_with_its_copy(name):
    model = {m.name: m for m in list_models()}[name]
    assert model.source.startswith(f"https://huggingface.co/{name}/blob/main/config.json (verbatim copy read: ")
    assert "github.com" in model.source and get_model(name.split("/")[1].lower()) is get_model(name)


def test_llama_33_70b_instruct_is_llama_31_70b_shaped():
    # Same shapes as Llama-3.1-70B (hidden 8192, intermediate 28672, 80 layers, 64/8 heads, vocab 128256, untied):
    # 80 × 855,654,400 per layer + 2 × 1,050,673,152 (embedding, head) + 8,192 (final norm) = 70,553,706,496
    spec = get_model("meta-llama/Llama-3.3-70B-Instruct")
    assert spec.layer_params == 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192 == 855_654_400
    assert spec.num_params == 70_553_706_496 == get_model("meta-llama/Llama-3.1-70B").num_params


def test_phi4_count_by_hand():
    # phi3 layout: fused qkv (40 + 2·10 heads × 128) and gate_up (2 × 17920); untied head over 100,352 tokens.
    # layer = 5120·7680 + 5120·5120 + 5120·35840 + 17920·5120 + 2·5120 = 340,797,440
    spec = get_model("microsoft/phi-4")
    assert spec.layer_params == 340_797_440
    assert spec.num_params == 40 * 340_797_440 + 2 * 100_352 * 5120 + 5120 == 14_659_507_200  # "14.7B" on its card


@pytest.mark.parametrize(("base", "tune", "note"), ALIAS_NOTES, ids=[t for _, t, _ in ALIAS_NOTES])
def test_tune_alias_resolves_to_its_base(base, tune, note):
    """`--model <tune>` and a framework reader's `<tune>` path give the base's spec; the reader says so."""
    assert tune in {m.name: m for m in list_models()}[base].aliases
    assert get_model(tune) is get_model(base) is get_model(tune.split("/")[1].lower())
    assert "every memory-relevant field" in note and "https://" in note
    notes: list[str] = []
    assert catalog_model(tune, "actor_rollout_ref.model.path", "verl", notes) == base
    assert len(notes) == 1 and tune in notes[0] and "chat/instruct tune" in notes[0]


def test_issue_15_tunes_work_with_model():
    for tune in ("Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct", "meta-llama/Llama-3.1-70B-Instruct"):
        assert tune in {t for _, t, _ in ALIAS_NOTES}
        assert get_model(tune).name == tune.replace("-Instruct", "")


# ------------------------------------------------------------------------------------ olmoe, gemma3(_text)

TINY = {
    "olmoe": {"model_type": "olmoe", "hidden_size": 256, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 8, "num_key_value_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
              "vocab_size": 1000},
    "gemma3_text": {"model_type": "gemma3_text", "hidden_size": 256, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000},
    "gemma3": {"model_type": "gemma3",
               "text_config": {"model_type": "gemma3_text", "hidden_size": 256, "intermediate_size": 64,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "head_dim": 32, "vocab_size": 1000},
               "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 96,
                                 "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 56,
                                 "patch_size": 14, "vision_use_head": False},
               "mm_tokens_per_image": 4},
    # the vision tower with SigLIP's default attention-pooling head, and an untied LM head
    "gemma3-head-untied": {"model_type": "gemma3", "tie_word_embeddings": False,
                           "text_config": {"hidden_size": 128, "intermediate_size": 64, "num_hidden_layers": 1,
                                           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
                                           "vocab_size": 500},
                           "vision_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                                             "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
                           "mm_tokens_per_image": 4},
    # every shape from the config classes' defaults (OLMoE-1B-7B's, but intermediate 2048; Gemma-3 / SigLIP defaults)
    "olmoe-defaults": {"model_type": "olmoe"},
    "gemma3_text-defaults": {"model_type": "gemma3_text"},
    "gemma3-defaults": {"model_type": "gemma3"},
}


def _build(config: dict):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    fields = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **fields)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf_config)


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("case", list(TINY))
def test_new_model_types_match_transformers(case):
    config = TINY[case]
    model, spec = _build(config), spec_from_config(config, case)
    assert spec.num_params == _numel(model)  # vision tower and projector included for gemma3
    assert spec.model_type == config["model_type"]
    layers = next(m for m in model.modules() if type(m).__name__ == "ModuleList" and len(m) == spec.num_layers
                  and "Decoder" in type(m[0]).__name__)
    assert {_numel(layer) for layer in layers} == {spec.layer_params}
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert (head.weight is embed.weight) == spec.tie_word_embeddings
    assert spec.embedding_params == embed.weight.numel() and embed.weight.shape == (spec.vocab_size, spec.hidden_size)
    assert spec.lm_head_params == (0 if spec.tie_word_embeddings else head.weight.numel())
    attn = layers[0].self_attn
    assert attn.q_proj.weight.shape == (spec.num_heads * spec.head_dim, spec.hidden_size)
    assert attn.k_proj.weight.shape == (spec.num_kv_heads * spec.head_dim, spec.hidden_size)

    # each 2-D weight of a layer is one listed linear; routed experts (fused 3-D tensors) match the counts
    found = {q: tuple(reversed(m.weight.shape)) for q, m in layers[0].named_modules()
             if "weight" in dict(m.named_parameters(recurse=False)) and m.weight.dim() == 2}
    dense = [lin for lin in spec.linears if lin.count == 1]
    assert sorted(q.rsplit(".", 1)[-1] for q in found) == sorted(lin.name for lin in dense)
    for lin in dense:
        (q,) = [q for q in found if q.rsplit(".", 1)[-1] == lin.name]
        assert found[q] == (lin.in_features, lin.out_features) and lin.attention == ("attn" in q)
    experts = sum(p.numel() for p in layers[0].parameters() if p.dim() == 3)
    assert experts == sum(lin.count * lin.in_features * lin.out_features for lin in spec.linears if lin.count > 1)
    if config["model_type"] == "olmoe":
        cfg = model.config
        assert (spec.num_experts, spec.experts_per_token) == (cfg.num_experts, cfg.num_experts_per_tok)
        assert spec.intermediate_size == model.config.intermediate_size  # per expert


@pytest.mark.parametrize("case", ["olmoe", "gemma3_text", "gemma3", "gemma3-head-untied"])
def test_new_model_types_round_trip_through_transformers_config(case, tmp_path):
    """A config.json read through transformers' config class (to_dict: every default written out, Gemma-3's
    sub-configs included) resolves to the same spec."""
    pytest.importorskip("transformers")
    from memplan.specs import spec_from_path

    (tmp_path / "config.json").write_text(json.dumps(TINY[case]))
    assert spec_from_path(tmp_path / "config.json") == spec_from_config(TINY[case], str(tmp_path / "config.json"))


def test_gemma3_shapes_are_the_text_models():
    # Gemma-3's published multimodal configs leave heads, head_dim and vocabulary to Gemma3TextConfig's defaults
    # (8 heads, 4 KV heads, head_dim 256, 262,208 tokens, tied); the decoder's shapes describe the model.
    spec = spec_from_config({"model_type": "gemma3", "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                                                                      "num_hidden_layers": 34}}, "g")
    shapes = (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim)
    assert shapes == (2560, 34, 8, 4, 256)
    assert (spec.vocab_size, spec.intermediate_size, spec.tie_word_embeddings) == (262_208, 10240, True)
    text_only = spec_from_config({"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                                  "num_hidden_layers": 34}, "t")
    # the multimodal model adds the SigLIP tower (defaults: 12 layers of 768) and the projector to the text model
    assert spec.num_params > text_only.num_params and spec.layer_params == text_only.layer_params


@pytest.mark.parametrize(("config", "field"), [
    ({"model_type": "gemma3", "text_config": [1]}, "text_config"),
    ({"model_type": "gemma3", "vision_config": "siglip"}, "vision_config"),
    ({"model_type": "gemma3", "text_config": {"hidden_size": 0}}, "hidden_size"),
    ({"model_type": "gemma3", "vision_config": {"image_size": [896, 896]}}, "image_size"),
    ({"model_type": "olmoe", "num_experts": 0}, "num_experts"),
])
def test_new_model_types_name_the_bad_field(config, field):
    with pytest.raises(InputError) as info:
        spec_from_config(config, "bad")
    assert info.value.field == field


def test_supported_types_and_inline_gemma3_text():
    assert {"olmoe", "gemma3", "gemma3_text"} <= set(SUPPORTED_MODEL_TYPES)
    arch = ArchConfig(model_type="gemma3_text", hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, intermediate_size=64, vocab_size=1000)
    assert spec_from_arch(arch).num_params == spec_from_config(TINY["gemma3_text"], "x").num_params  # tied by default


def test_catalog_configs_stay_copies():
    """The added configs are the copies' text (keys and values as read), not edited."""
    llama = get_model_config("meta-llama/Llama-3.3-70B-Instruct")
    assert llama["eos_token_id"] == [128001, 128008, 128009] and llama["transformers_version"] == "4.47.0"
    phi = get_model_config("microsoft/phi-4")
    assert (phi["eos_token_id"], phi["pad_token_id"], phi["sliding_window"]) == (100265, 100349, None)


# Checkpoint bytes measured on GPUs by AgileRL's profiling rig (github.com/AgileRL/AgileRL, branch
# memory/profiling-rig at 0151c660, tools/memory_profiling/fixtures/<model>@<GPU>.json, "realised_weight_bytes":
# the distinct storages of every parameter and buffer after loading the bf16 checkpoint, harness.py::_storage_bytes).
# The shapes are the fixture's own "model_spec.arch" record. Expected: 2 bytes per parameter + the two fp32 rotary
# buffers (inv_freq, original_inv_freq) of d/2 elements each.
AGILERL_REALISED = [
    ("allenai/OLMoE-1B-7B-0924-Instruct", 13_838_324_224,
     {"model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
      "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
      "vocab_size": 50304, "tie_word_embeddings": False}),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", 3_422_753_024,
     {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
      "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152, "tie_word_embeddings": True}),
]


@pytest.mark.parametrize(("model", "realised", "shapes"), AGILERL_REALISED, ids=[m for m, _, _ in AGILERL_REALISED])
def test_counts_match_the_bytes_a_gpu_loaded(model, realised, shapes):
    spec = spec_from_config(shapes, model)
    assert 2 * spec.num_params + 2 * 4 * (spec.head_dim // 2) == realised


# Gemma-3 parameter counts KerasHub publishes for its presets (github.com/keras-team/keras-hub at 00d9f10a,
# keras_hub/src/models/gemma3/gemma3_presets.py, "params"), over a 262,144-token vocabulary. The shapes are those
# maxtext writes for Gemma-3 (github.com/AI-Hypercomputer/maxtext at e591f30c, src/maxtext/checkpoint_conversion/
# utils/hf_model_configs.py, gemma3_{4b,12b,27b}_config: text_config and the SigLIP vision_config); the 1B's
# (text only) from a config saved from it (huggingface.co/MatanBT/mia-target-model, config.json). HF's checkpoints
# carry 64 more rows (Gemma3TextConfig's default 262,208): google/gemma-3-4b-it sums to 4,300,079,472 (KerasHub's
# medgemma_4b, the same architecture) = 4,299,915,632 + 64 × 2560.
SIGLIP = {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "num_attention_heads": 16,
          "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}
GEMMA3_TEXT = {
    "4b": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, "num_attention_heads": 8,
           "num_key_value_heads": 4, "head_dim": 256},
    "12b": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 256},
    "27b": {"hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 62, "num_attention_heads": 32,
            "num_key_value_heads": 16, "head_dim": 128},
    "1b": {"hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4,
           "num_key_value_heads": 1, "head_dim": 256},
}
KERAS_HUB = [  # (preset, size, vision + text?, params)
    ("gemma3_4b", "4b", True, 4_299_915_632), ("gemma3_4b_text", "4b", False, 3_880_099_328),
    ("gemma3_12b", "12b", True, 12_187_079_280), ("gemma3_12b_text", "12b", False, 11_765_788_416),
    ("gemma3_27b", "27b", True, 27_432_062_576), ("gemma3_27b_text", "27b", False, 27_009_002_240),
    ("gemma3_1b", "1b", False, 999_885_952),
]


@pytest.mark.parametrize(("preset", "size", "vision", "params"), KERAS_HUB, ids=[k[0] for k in KERAS_HUB])
def test_gemma3_counts_match_published(preset, size, vision, params):
    text = {**GEMMA3_TEXT[size], "vocab_size": 262_144}
    config = ({"model_type": "gemma3", "text_config": text, "vision_config": SIGLIP} if vision
              else {"model_type": "gemma3_text", **text})
    assert spec_from_config(config, preset).num_params == params


def test_gemma3_4b_it_count():
    text = dict(GEMMA3_TEXT["4b"])  # vocabulary left to Gemma3TextConfig, as HF's config does
    spec = spec_from_config({"model_type": "gemma3", "text_config": text, "vision_config": SIGLIP}, "gemma-3-4b-it")
    assert spec.vocab_size == 262_208 and spec.num_params == 4_300_079_472 == 4_299_915_632 + 64 * 2560
