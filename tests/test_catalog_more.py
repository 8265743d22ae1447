"""Catalog gaps, second pass (issue 15 item 18): entries whose memory-relevant config fields two public copies agree on.

No official config.json could be read here, so each entry's ``sources`` names two copies (re-saves, quantized
uploads, vendored fixtures: different repositories) and ``copies_differ_in`` says what differs between them — never a
field ``memplan/specs.py`` reads. ``config`` keeps only those fields plus model_type/architectures/torch_dtype.

Each entry is checked three ways: its parameter count against the model transformers builds from the entry's config
on the meta device (the helpers of tests/test_catalog_new.py), against a published or measured count where one
exists, and by hand for the layer shapes. Instruct tunes listed as aliases resolve to their base for ``--model`` and
the framework readers alike.
"""

from __future__ import annotations

import re

import pytest
from test_catalog_new import _build, _numel  # the colleague's meta-device builder and counter

from memplan.catalog import _model_entries, get_model, get_model_config, list_models
from memplan.frameworks.common import catalog_model

ADDED = [
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "Qwen/Qwen2.5-Math-1.5B",
    "Qwen/Qwen2.5-Math-7B",
    "google/gemma-3-1b-it",
    "google/gemma-3-4b-it",
    "google/gemma-3-27b-it",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "allenai/OLMoE-1B-7B-0924",
]

# The keys spec_from_config reads per model type (memplan/specs.py), plus the three identity keys every entry keeps.
IDENTITY = {"model_type", "architectures", "torch_dtype"}
READ = {
    "llama": {"hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "tie_word_embeddings", "attention_bias", "intermediate_size", "mlp_bias",
              "max_position_embeddings"},
    "qwen2": {"hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "tie_word_embeddings", "intermediate_size", "max_position_embeddings"},
    "gemma3_text": {"hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "tie_word_embeddings", "attention_bias", "intermediate_size",
                    "max_position_embeddings"},
    "olmoe": {"hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "tie_word_embeddings", "attention_bias", "intermediate_size", "num_experts",
              "num_experts_per_tok", "max_position_embeddings"},
    "gemma3": {"text_config", "vision_config", "tie_word_embeddings"},
}
SIGLIP_READ = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
               "image_size", "patch_size", "vision_use_head", "model_type"}


def _entry(name: str) -> dict:
    return _model_entries()[name]


def _repo(url: str) -> str:
    """'owner/repo' of a github.com or huggingface.co URL."""
    match = re.match(r"https://(?:github\.com|huggingface\.co)/([^/]+/[^/]+)/", url)
    assert match, url
    return match.group(1)


@pytest.mark.parametrize("name", ADDED)
def test_entry_names_two_copies_and_what_differs(name):
    entry = _entry(name)
    official = rf"https://huggingface.co/{re.escape(name)}/blob/(main|[0-9a-f]{{40}})/config.json "
    assert re.match(official, entry["source"])
    copies = entry["sources"]
    assert len(copies) >= 2 and all(c.startswith("https://") for c in copies)
    repos = [_repo(c) for c in copies]
    assert len(set(repos)) == len(repos)  # different repositories (allenai's SFT repo is the one same-owner pair)
    assert all(re.search(r"commit [0-9a-f]{7}|/[0-9a-f]{40}/|at main as stored", c) for c in copies)
    assert "none memory-relevant" in entry["copies_differ_in"] or "agrees" in entry["copies_differ_in"] \
        or entry["copies_differ_in"].startswith("nothing")
    assert "left out" in entry["config_note"]
    assert {m.name: m for m in list_models()}[name].source == entry["source"]


@pytest.mark.parametrize("name", ADDED)
def test_config_keeps_only_what_specs_reads(name):
    config = get_model_config(name)
    model_type = config["model_type"]
    assert set(config) <= READ[model_type] | IDENTITY
    if model_type == "gemma3":
        assert set(config["text_config"]) <= READ["gemma3_text"] | {"model_type"}
        assert set(config["vision_config"]) <= SIGLIP_READ


@pytest.mark.parametrize("name", ADDED)
def test_counts_match_transformers(name):
    config = get_model_config(name)
    model, spec = _build(config), get_model(name)
    assert spec.num_params == _numel(model)  # parameters() yields a tied weight once; gemma3: tower + projector too
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert (head.weight is embed.weight) == spec.tie_word_embeddings
    assert embed.weight.shape == (spec.vocab_size, spec.hidden_size)
    layers = next(m for m in model.modules() if type(m).__name__ == "ModuleList" and len(m) == spec.num_layers
                  and "Decoder" in type(m[0]).__name__)
    assert {_numel(layer) for layer in layers} == {spec.layer_params}
    attn = layers[0].self_attn
    assert attn.q_proj.weight.shape == (spec.num_heads * spec.head_dim, spec.hidden_size)
    assert attn.k_proj.weight.shape == (spec.num_kv_heads * spec.head_dim, spec.hidden_size)


KERAS_HUB = "KerasHub presets (github.com/keras-team/keras-hub at 71453d08, keras_hub/src/models/*/..._presets.py)"
AGILERL = "AgileRL's GPU-measured realised bytes (tests/test_catalog_new.py AGILERL_REALISED)"
PUBLISHED = [  # (name, count, where it is published)
    ("Qwen/Qwen2.5-Math-1.5B", 1_543_714_304, f"{KERAS_HUB}: qwen2.5_math_1.5b_en"),
    ("Qwen/Qwen2.5-Math-1.5B-Instruct", 1_543_714_304, f"{KERAS_HUB}: qwen2.5_math_instruct_1.5b_en"),
    ("Qwen/Qwen2.5-Math-7B", 7_615_616_512, f"{KERAS_HUB}: qwen2.5_math_7b_en"),
    ("google/gemma-3-1b-it", 999_885_952, f"{KERAS_HUB}: gemma3_instruct_1b (converted from google/gemma-3-1b-it)"),
    # HF's multimodal Gemma-3 configs leave the vocabulary at Gemma3TextConfig's 262,208 rows: KerasHub's medgemma_4b
    # has that embedding; its gemma3_instruct_* presets have 262,144 rows, 64 x hidden fewer.
    ("google/gemma-3-4b-it", 4_300_079_472, f"{KERAS_HUB}: medgemma_instruct_4b"),
    ("google/gemma-3-4b-it", 4_299_915_632 + 64 * 2560, f"{KERAS_HUB}: gemma3_instruct_4b + 64 rows of 2560"),
    ("google/gemma-3-27b-it", 27_432_062_576 + 64 * 5376, f"{KERAS_HUB}: gemma3_instruct_27b + 64 rows of 5376"),
    # realised bf16 bytes = 2 per parameter + the fp32 rotary buffers inv_freq and original_inv_freq (d/2 each)
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", (3_422_753_024 - 2 * 4 * 32) // 2, AGILERL),
    ("allenai/OLMoE-1B-7B-0924-Instruct", (13_838_324_224 - 2 * 4 * 64) // 2, AGILERL),
]


@pytest.mark.parametrize(("name", "num_params", "where"), PUBLISHED, ids=[f"{n}:{w[:20]}" for n, _, w in PUBLISHED])
def test_counts_match_published(name, num_params, where):
    assert get_model(name).num_params == num_params, where


def test_olmoe_total_is_the_papers():
    # "6.9B total / 1.3B active": https://labindex.ai/outputs/ai2/olmoe, on arXiv 2409.02060 ("7 billion" in its
    # abstract)
    assert round(get_model("allenai/OLMoE-1B-7B-0924").num_params / 1e9, 1) == 6.9


@pytest.mark.parametrize(("distill", "base"), [
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "meta-llama/Llama-3.1-8B"),  # distilled into Llama-3.1-8B
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "Qwen/Qwen2.5-14B"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "Qwen/Qwen2.5-32B"),
    ("Qwen/Qwen2.5-Math-7B", "Qwen/Qwen2.5-7B"),  # same shapes; only max_position_embeddings (4096) differs
    ("Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-1.5B"),
])
def test_distills_have_their_base_models_shapes(distill, base):
    a, b = get_model(distill), get_model(base)
    assert (a.num_params, a.layer_params, a.vocab_size, a.tie_word_embeddings) == \
        (b.num_params, b.layer_params, b.vocab_size, b.tie_word_embeddings)


def test_r1_distill_qwen_14b_by_hand():
    # qwen2: q, k, v with bias (40 + 2 x 8 heads of 128), o without; SwiGLU 13824; two RMSNorms
    layer = (5120 * 5120 + 5120) + 2 * (5120 * 1024 + 1024) + 5120 * 5120 + 3 * 5120 * 13824 + 2 * 5120
    assert layer == 275_268_608 == get_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B").layer_params
    assert get_model("r1-distill-qwen-14b").num_params == 48 * layer + 2 * 152064 * 5120 + 5120 == 14_770_033_664


def test_olmoe_by_hand():
    # attention 4 x 2048^2, q_norm (2048) and k_norm (16 heads x 128), 64 SwiGLU experts of 3 x 2048 x 1024,
    # the router (2048 x 64), two RMSNorms; untied 50,304-token embedding and head
    layer = 4 * 2048 * 2048 + 2048 + 2048 + 64 * 3 * 2048 * 1024 + 2048 * 64 + 2 * 2048
    assert layer == 419_569_664 == get_model("olmoe-1b-7b").layer_params
    assert get_model("olmoe-1b-7b").num_params == 16 * layer + 2 * 50304 * 2048 + 2048 == 6_919_161_856


def test_gemma3_1b_by_hand():
    # gemma3_text: q (4 x 256), k, v (1 x 256), o; q_norm, k_norm over 256; GeGLU 6912; four RMSNorms; tied
    layer = 1152 * 1024 + 2 * 1152 * 256 + 1024 * 1152 + 2 * 256 + 3 * 1152 * 6912 + 4 * 1152
    assert layer == 26_842_112 == get_model("gemma-3-1b-it").layer_params
    assert get_model("gemma-3-1b-it").num_params == 26 * layer + 262144 * 1152 + 1152 == 999_885_952


TUNES = [("Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-1.5B-Instruct"),
         ("allenai/OLMoE-1B-7B-0924", "allenai/OLMoE-1B-7B-0924-Instruct")]


@pytest.mark.parametrize(("base", "tune"), TUNES, ids=[t for _, t in TUNES])
def test_instruct_tunes_work_with_model_and_readers(base, tune):
    note = _entry(base)["alias_notes"][tune]
    assert "every memory-relevant field" in note and note.count("https://") >= 2  # two copies of the tune's config
    assert get_model(tune) is get_model(base) is get_model(tune.split("/")[1].lower())
    notes: list[str] = []
    assert catalog_model(tune, "actor_rollout_ref.model.path", "verl", notes) == base
    assert len(notes) == 1 and "chat/instruct tune" in notes[0]


@pytest.mark.parametrize("name", ADDED)
def test_short_aliases_resolve(name):
    for alias in _entry(name)["aliases"]:
        assert get_model(alias) is get_model(name)
    assert get_model(name.split("/")[1].lower()) is get_model(name)
