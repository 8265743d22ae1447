"""Gemma-4 (google/gemma-4-E2B-it, E4B-it, memplan/tiny-gemma4): parameter counts, LoRA sizes, KV cache and
activations per layer group, each worked by hand from transformers 5.25 ``models/gemma4/modeling_gemma4.py``, and
held to transformers' own model (meta device), peft, AgileRL's measured weight bytes and the tracer."""

from __future__ import annotations

import functools

import pytest

import memplan
from memplan.catalog import get_model, get_model_config
from memplan.errors import InputError
from memplan.estimator.formulas import (
    kv_cache_bytes,
    lora_params,
    per_layer_inputs_bytes_per_token,
    saved_bytes_per_token,
    shared_kv_bytes_per_token,
)
from memplan.specs import layer_views, spec_from_config

E2B, E4B, TINY = "google/gemma-4-E2B-it", "google/gemma-4-E4B-it", "memplan/tiny-gemma4"

# AgileRL memory/profiling-rig @ 0151c660, tools/memory_profiling/fixtures/google__gemma-4-E{2,4}B-it@NVIDIA-A100-
# SXM4-40GB.json, realised_weight_bytes: every parameter and buffer storage of the loaded bf16 checkpoint, once
# (harness.py::measure_realised_weight_bytes), and of its vision/audio towers and their embedders.
REALISED = {E2B: (10_208_601_186, 951_459_352), E4B: (15_882_207_856, 956_177_944)}


def test_e2b_parameters_by_hand():
    """h 1536, P (PLE) 256, 8 heads, 1 KV head, head dim 256 (sliding) / 512 (full), MLP 6144 (12288 double-wide on
    the 20 KV-shared layers), V 262,144, 35 layers: four sliding to one full, layers 15-34 reuse keys and values.
      sliding, own KV (12): q 1536·2048 + k, v 1536·256 each + o 2048·1536 = 7,077,888; q_norm, k_norm 512;
        MLP 3·1536·6144 = 28,311,552; four norms 6,144; PLE gate + projection 2·1536·256 + its norm 1536 = 787,968
        → 36,184,064
      full, own KV (3): 2·1536·4096 + 2·1536·512 + 1024 + 28,311,552 + 6,144 + 787,968 = 43,262,464
      sliding, shared (16): 2·1536·2048 + 256 + 3·1536·12288 + 6,144 + 787,968 = 63,708,928
      full, shared (4): 2·1536·4096 + 512 + 56,623,104 + 6,144 + 787,968 = 70,000,640
    decoder 12·36,184,064 + 3·43,262,464 + 16·63,708,928 + 4·70,000,640 = 1,863,341,568;
    embeddings V·h 402,653,184 + PLE table 262,144·35·256 = 2,348,810,240 + projection 1536·8960 = 13,762,560
    + its norm 256 = 2,765,226,240; final norm 1536; towers 475,728,160 (vision 167,364,608, audio 304,824,608,
    embedders 768·1536 + 1536·1536) → 5,104,297,504, tied head."""
    spec = get_model(E2B)
    shapes = {(g.count, g.head_dim, g.kv_source, g.intermediate_size, g.sliding_window): g.params
              for g in spec.layer_groups}
    assert shapes == {(12, 256, True, 6144, 512): 36_184_064, (3, 512, True, 6144, 0): 43_262_464,
                      (16, 256, False, 12288, 512): 63_708_928, (4, 512, False, 12288, 0): 70_000_640}
    assert spec.decoder_params == 1_863_341_568
    assert spec.embedding_params == 2_765_226_240 and spec.lm_head_params == 0
    assert spec.num_params == 1_863_341_568 + 2_765_226_240 + 1536 + 475_728_160 == 5_104_297_504
    assert spec.layer_params == 1_863_341_568 // 35  # the mean layer


@pytest.mark.parametrize("name", [E2B, E4B])
def test_weights_match_agilerls_measured_bytes(name):
    """bf16: 2 bytes a parameter, and AgileRL's count adds the buffers (a few KiB: clipping bounds, layer scalars,
    rotary tables, embed scales — transformers' counts in the torch test below): so 0 ≤ measured − 2Ψ < 8 KiB."""
    realised, _towers = REALISED[name]
    assert 0 <= realised - 2 * get_model(name).num_params < 8 * 1024


@functools.lru_cache(maxsize=None)
def _build(name: str, text_only: bool = False):
    """transformers' own model from the catalog config (its text model alone with ``text_only``), on the meta
    device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = get_model_config(name)
    if text_only and config["model_type"] == "gemma4":
        config = config["text_config"]
    model_type = config.pop("model_type")
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **config),
                                                             dtype=torch.bfloat16)


@pytest.mark.parametrize("name", [E2B, E4B, TINY])
def test_counts_match_transformers(name):
    model, spec = _build(name), get_model(name)
    assert spec.num_params == sum(p.numel() for p in model.parameters())
    text = model.model.language_model if hasattr(model.model, "language_model") else model.model
    config = text.config
    # each layer's count is its group's: (type, computes its own K/V) picks the group
    first_shared = config.num_hidden_layers - config.num_kv_shared_layers
    groups = {(g.sliding_window > 0, g.kv_source): g for g in spec.layer_groups}
    for i, layer in enumerate(text.layers):
        group = groups[(config.layer_types[i] == "sliding_attention", i < first_shared)]
        assert sum(p.numel() for p in layer.parameters()) == group.params, i
        weights = {n.rsplit(".", 1)[0].rsplit(".", 1)[-1]: tuple(p.shape) for n, p in layer.named_parameters()
                   if p.dim() == 2}
        assert weights == {lin.name: (lin.out_features, lin.in_features) for lin in group.linears}, i
    outside = sum(p.numel() for n, p in text.named_parameters() if not n.startswith("layers.")) - config.hidden_size
    assert outside == spec.embedding_params  # embeddings, PLE table, projection and norm; less the final norm
    if name in REALISED:
        towers = sum(p.numel() for attr in ("vision_tower", "audio_tower", "embed_vision", "embed_audio")
                     for p in getattr(model.model, attr).parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        tower_buffers = sum(b.numel() * b.element_size() for attr in ("vision_tower", "audio_tower")
                            for b in getattr(model.model, attr).buffers())
        realised, realised_towers = REALISED[name]
        assert 2 * spec.num_params + buffers == realised  # to the byte
        assert 2 * towers + tower_buffers == realised_towers


def test_lora_e2b_by_hand():
    """Rank 8, 'all-linear' (peft: every nn.Linear of the text model but the LM head): r·(in + out) per matrix.
      sliding, own KV: q 8·3584, k, v 8·1792, o 8·3584, gate, up, down 8·7680 each, PLE gate and projection
        8·1792 each → 299,008 (×12)
      full, own KV: q, o 8·5632 each, k, v 8·2048 each, MLP 184,320, PLE 28,672 → 335,872 (×3)
      sliding, shared: q, o 57,344, double-wide MLP 3·8·13,824 = 331,776, PLE 28,672 → 417,792 (×16)
      full, shared: 90,112 + 331,776 + 28,672 = 450,560 (×4)
      per_layer_model_projection 8·(1536 + 35·256) = 83,968
    → 3,588,096 + 1,007,616 + 6,684,672 + 1,802,240 + 83,968 = 13,166,592. Attention only: q, k, v, o."""
    spec = get_model(E2B)
    assert lora_params(spec, 8, "all-linear") == 13_166_592
    assert lora_params(spec, 8, "attention") == 12 * 86_016 + 3 * 122_880 + 16 * 57_344 + 4 * 90_112


@pytest.mark.parametrize("name", [E2B, TINY])
def test_lora_matches_peft(name):
    peft = pytest.importorskip("peft")
    model = _build(name, text_only=True)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    adapted.unload()  # leave the cached model as built
    assert trainable == lora_params(get_model(name), 8, "all-linear")


def test_kv_cache_by_hand():
    """Only the 15 layers computing keys and values cache them; sliding layers at most their 512-token window.
    4096 tokens, one sequence, bf16: 12 sliding · 2 (K, V) · 1 head · 256 · 512 · 2 = 6,291,456 and 3 full ·
    2 · 1 · 512 · 4096 · 2 = 25,165,824 → 31,457,280 (35 uniform layers at head dim 512 would be 293,601,280)."""
    spec = get_model(E2B)
    assert kv_cache_bytes(spec, 4096, 1, 2) == 6_291_456 + 25_165_824
    assert kv_cache_bytes(spec, 256, 1, 2) == 2 * 12 * 256 * 256 * 2 + 2 * 3 * 512 * 256 * 2  # within the window


def test_saved_bytes_of_a_shared_layer_by_hand():
    """E2B's sliding KV-shared layer, LoRA (fp32 adapters, rank 8, all-linear), frozen weights, bf16, per token:
      four norms, Gemma's fp32 upcast each: 4 · 4·1536 = 24,576
      attention: q and the output e·2·2048, k and v the producer's (nothing new), log-sum-exp 4·8; q_norm's fp32
        upcast 4·2048 → 8,192 + 32 + 8,192 = 16,416
      double-wide MLP: gate, act(gate), up 3·2·12,288 = 73,728
      PLE: the gate's output and GELU's 2·2·256, post_per_layer_input_norm 4·1536 → 7,168
    base 121,888; LoRA: inputs cast to fp32 (4·in: q 1536, o 2048, gate, up 1536, down 12,288, PLE gate 1536,
    projection 256 → 4·20,736 = 82,944) and 7 rank-8 intermediates 7·32 → 83,168."""
    view = next(v for v in layer_views(get_model(E2B)) if not v.layer_group.kv_source and v.layer_group.sliding_window)
    per = saved_bytes_per_token(view, 2, seq_len=512, weights_trainable=False, lora_rank=8)
    assert (per.base, per.lora) == (121_888, 83_168)


def test_average_layer_sums_the_groups():
    """The whole model's per-layer figure is the count-weighted mean of its groups' (L × it = their sum), and
    ``largest_layer_excess`` lifts it to the largest group's."""
    spec = get_model(E2B)
    whole = saved_bytes_per_token(spec, 2, seq_len=512, weights_trainable=False, lora_rank=8)
    parts = [(v.num_layers, saved_bytes_per_token(v, 2, seq_len=512, weights_trainable=False, lora_rank=8))
             for v in layer_views(spec)]
    assert whole.base * 35 == pytest.approx(sum(n * p.base for n, p in parts))
    assert whole.base + whole.lora + whole.largest_layer_excess == pytest.approx(max(p.base + p.lora for _, p in parts))


def test_per_layer_inputs_and_shared_kv_by_hand():
    """E2B, bf16, per token: the [L, P] per-layer inputs 2·35·256 = 17,920; needing a gradient, the projection
    norm's fp32 upcast 4·8960 = 35,840; a fp32 LoRA adapter on per_layer_model_projection 4·1536 + 4·8 = 6,176.
    The stored K/V the shared layers read: sliding 2·2·1·256 + full 2·2·1·512 = 3,072."""
    spec = get_model(E2B)
    assert per_layer_inputs_bytes_per_token(spec, 2, weights_trainable=False, grad=False) == 17_920
    assert per_layer_inputs_bytes_per_token(spec, 2, weights_trainable=False, grad=True, lora_rank=8) == (
        17_920 + 35_840 + 6_176)
    assert shared_kv_bytes_per_token(spec, 2) == 3_072


def test_refused_with_the_field_named():
    config = get_model_config(E2B)
    with pytest.raises(InputError, match="enable_moe_block"):
        spec_from_config({**config, "text_config": {**config["text_config"], "enable_moe_block": True}}, "x")
    with pytest.raises(InputError, match="num_kv_shared_layers"):
        spec_from_config({**config, "text_config": {**config["text_config"], "num_kv_shared_layers": 35}}, "x")
    with pytest.raises(InputError, match="sequence_parallel|sequence parallel"):
        memplan.estimate(model=E2B, algo="grpo", gpus="2xH100-80GB", prompt_len=256, gen_len=256, sequence_parallel=2,
                         engine="fsdp")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [dict(lora_rank=8, gradient_checkpointing=True),
                                   dict(lora_rank=0, gradient_checkpointing=False)], ids=["lora-ckpt", "full"])
def test_estimate_matches_trace(extra):
    """The tracer (fake tensors, transformers' Gemma-4 code) on memplan/tiny-gemma4, GRPO with an HF rollout that
    runs every decode step (its cache jump knows no KV-shared or sliding layers). Known gaps at this toy size:
    the rollout's prefill runs the KV-shared layers on the last token only (transformers'
    ``_maybe_slice_kv_shared_inputs``), memplan takes the largest layer (+8 % of the rollout's transients);
    parameters here are hundreds of sub-512-byte tensors, whose block rounding the states' 1 % does not allow."""
    pytest.importorskip("torch")
    from memplan.harness.accuracy import compare, table
    from memplan.harness.fake import trace_request

    request = memplan.EstimateRequest(model=TINY, algo="grpo", gpus="1xH100-80GB", prompt_len=48, gen_len=8,
                                      micro_batch_size=2, group_size=2, **extra)
    rows = compare(f"tiny-gemma4 {extra}", trace_request(request, decode_steps=None))
    for row in rows:
        limit = 0.09 if row.phase == "rollout" else 0.06
        assert abs(row.errors["total"]) <= limit, table(rows)
        assert abs(row.errors["states"]) <= 0.015, table(rows)


def test_time_model_counts_each_layer_group():
    """The time model's matmul parameters, attention width and KV bytes per token sum Gemma-4's layer groups: each
    group's linears × its layers (not the largest layer's × L), each group's heads × head dim, and only the layers
    that cache their own keys and values."""
    from memplan.specs import layer_views
    from memplan.timing import formulas as tf

    spec = get_model("google/gemma-4-E2B-it")
    views = layer_views(spec)
    assert len(views) > 1
    linears = sum(v.num_layers * sum(lin.in_features * lin.out_features * lin.count for lin in v.linears)
                  for v in views)
    assert tf.matmul_params(spec, False) == linears + spec.hidden_size
    uniform = spec.num_layers * sum(lin.in_features * lin.out_features * lin.count for lin in spec.linears)
    assert linears < uniform  # the largest layer's linears × L over-count
    assert tf.attention_width(spec) == sum(v.num_layers * v.num_heads * v.head_dim for v in views)
    caching = [v for v in views if v.layer_group.kv_source]
    assert 0 < len(caching) < len(views) or sum(v.num_layers for v in caching) < spec.num_layers
    assert tf.kv_bytes_per_token(spec, 2) == sum(2 * v.num_layers * v.num_kv_heads * v.head_dim * 2 for v in caching)
