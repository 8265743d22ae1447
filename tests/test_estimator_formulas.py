"""Each memory component against an independent source: a paper's formula worked by hand, a traced run
(../shared/REFERENCE.md), or peft/transformers' own counts."""

import pytest

from memplan.catalog import get_model
from memplan.estimator.formulas import (
    QUANT_BYTES_PER_PARAM,
    korthikanti_layer_bytes,
    kv_cache_bytes,
    lora_params,
    saved_bytes_per_token,
)
from memplan.estimator.parallel import Sharding, trainable_states
from memplan.units import GB, GiB, KiB, MiB

LLAMA2_7B = "meta-llama/Llama-2-7b-hf"


def _ds(stage: int, n: int) -> Sharding:
    return Sharding(engine="deepspeed", zero_stage=stage, dp=n, tp=1, offload_optimizer=False,
                    offload_params=False, master_weights=True, optimizer="adamw", optimizer_impl="fused")


@pytest.mark.parametrize(
    ("stage", "paper_gb"),
    # ZeRO paper (arXiv 1910.02054), Figure 1: Ψ = 7.5B, N_d = 64, K = 12 → 120, 31.4, 16.6, 1.9 GB per GPU.
    [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)],
)
def test_model_states_match_zero_paper(stage, paper_gb):
    st = trainable_states(7_500_000_000, largest_param=0, largest_unit=0, e=2, sh=_ds(stage, 64))
    model_states = st.parameter + st.gradient + st.optstate  # the paper counts no buckets or step transients
    assert model_states / GB == pytest.approx(paper_gb, abs=0.05)  # the paper prints one decimal


def test_offloaded_optimizer_leaves_only_bf16_weights_and_buckets():
    # ZeRO-Offload (arXiv 2101.06840) §4: fp32 master, m, v and the fp32 gradients live on the CPU:
    # per GPU 16Ψ/N bytes of host RAM; the GPU keeps the 2Ψ fp16/bf16 weights.
    sh = Sharding(engine="deepspeed", zero_stage=2, dp=8, tp=1, offload_optimizer=True, offload_params=False,
                  master_weights=True, optimizer="adamw", optimizer_impl="fused")
    st = trainable_states(7_000_000_000, largest_param=0, largest_unit=0, e=2, sh=sh)
    assert st.parameter == 14_000_000_000
    assert st.optstate == 0
    assert st.host == 16 * 7_000_000_000 // 8


def test_korthikanti_formula_by_hand():
    # GPT-3 175B layer: s=2048, b=1, h=12288, a=96 → sbh·34 + 5·a·s²·b
    assert korthikanti_layer_bytes(2048, 1, 12288, 96) == 2048 * 12288 * 34 + 5 * 96 * 2048**2 * 1
    assert korthikanti_layer_bytes(2048, 1, 12288, 96) == 2_868_903_936


def test_gpt_style_layer_matches_korthikanti_without_dropout():
    # Korthikanti et al. Table 2 breakdown of the 34·sbh: attention 11 (incl. 1 for the dropout mask),
    # MLP 19 (incl. 1 for the dropout mask), two LayerNorms 4. memplan assumes dropout off (RL frameworks
    # disable it): 34 − 2 = 32·sbh for a LayerNorm + exact-GELU layer with f = 4h (GPT-NeoX/Pythia).
    spec = get_model("EleutherAI/pythia-1.4b")
    assert spec.intermediate_size == 4 * spec.hidden_size
    per = saved_bytes_per_token(spec, 2, seq_len=2048, weights_trainable=True)
    per_token_h = (per.base - 4 * spec.num_heads - 2 * 8) / spec.hidden_size  # minus fp32 LSE and LN stats
    assert per_token_h == pytest.approx(32.0, abs=1e-9)


def test_llama_layer_saves_45_5_sbh_as_traced():
    # ../shared/REFERENCE.md: traced Llama-2-7B decoder layers save about 45.5·b·s·h bytes (fp32 RMSNorm
    # upcast and SwiGLU intermediates), not the textbook 34.
    spec = get_model(LLAMA2_7B)
    per = saved_bytes_per_token(spec, 2, seq_len=2048, weights_trainable=True)
    assert per.base / spec.hidden_size == pytest.approx(45.5, rel=0.01)
    assert per.attention_scores == 0 and per.lora == 0


def test_lora_fp32_adapters_grow_activations_like_traced_peft():
    # REFERENCE.md: peft's fp32 adapters cast each adapted layer's input to fp32 and grew activations
    # 10.6 → 17.0 GiB (×1.60) at 7B against bf16 adapters.
    spec = get_model(LLAMA2_7B)
    kw = dict(seq_len=2048, weights_trainable=False, lora_rank=16)
    fp32 = saved_bytes_per_token(spec, 2, lora_dtype_bytes=4, **kw)
    bf16 = saved_bytes_per_token(spec, 2, lora_dtype_bytes=2, **kw)
    ratio = (fp32.base + fp32.lora) / (bf16.base + bf16.lora)
    assert ratio == pytest.approx(17.0 / 10.6, rel=0.03)
    # and the bf16 LoRA layer total, 32 layers × 2048 tokens, is the traced 10.6 GiB within 3 %
    assert 32 * 2048 * (bf16.base + bf16.lora) / GiB == pytest.approx(10.6, rel=0.03)


def test_kv_cache_closed_form():
    # Llama-2-7B, MHA: 2 · 32 layers · 32 heads · 128 · 2 bytes = 512 KiB per token
    assert kv_cache_bytes(get_model(LLAMA2_7B), tokens=1, sequences=1, e=2) == 512 * KiB
    assert kv_cache_bytes(get_model(LLAMA2_7B), tokens=4096, sequences=1, e=2) == 2 * GiB
    # Llama-3.1-8B, GQA with 8 KV heads: 2 · 32 · 8 · 128 · 2 = 128 KiB per token
    assert kv_cache_bytes(get_model("meta-llama/Llama-3.1-8B"), tokens=1, sequences=1, e=2) == 128 * KiB
    # tensor parallel splits KV heads: TP=8 on 8 KV heads leaves one per rank: 2·32·1·128·1024·4·2 = 64 MiB
    assert kv_cache_bytes(get_model("meta-llama/Llama-3.1-8B"), tokens=1024, sequences=4, e=2, tp=8) == 64 * MiB


def test_qlora_bits_per_weight():
    # QLoRA (arXiv 2305.14314) §2: NF4 with double quantization costs 4.127 bits per parameter.
    assert QUANT_BYTES_PER_PARAM["int4"] * 8 == pytest.approx(4.127, abs=1e-3)


@pytest.mark.parametrize(("model", "targets", "peft_targets"), [
    ("Qwen/Qwen2.5-0.5B", "all-linear", "all-linear"),
    ("Qwen/Qwen2.5-0.5B", "attention", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ("memplan/tiny-mixtral", "all-linear", "all-linear"),  # fused 3-D experts: peft's ParamWrapper
    ("memplan/tiny-qwen3-moe", "all-linear", "all-linear"),
])
def test_lora_params_equal_peft(model, targets, peft_targets):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoConfig, AutoModelForCausalLM

    from memplan.catalog import get_model_config

    config = AutoConfig.for_model(**get_model_config(model))
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    adapted = peft.get_peft_model(base, peft.LoraConfig(r=16, target_modules=peft_targets))
    trainable, _ = adapted.get_nb_trainable_parameters()
    assert lora_params(get_model(model), 16, targets) == trainable
