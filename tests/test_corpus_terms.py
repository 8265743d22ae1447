"""The terms issue 16 part 4 added from the corpus' misses, each worked by hand from its framework's source.

Model: Qwen/Qwen2.5-0.5B (transformers' config.json): L = 24, h = 896, k·d = 2·64 = 128, f = 4864,
V = 151,936 (tied), Ψ = 494,032,768 (tests/test_catalog.py checks it against transformers).

* ``idle_offload='params'`` under engine 'torch' — AgileRL 0151c660 ``_prepare_vllm_for_generation``
  (agilerl/algorithms/core/base.py:6257) calls ``move_params_to_cpu`` (agilerl/utils/llm_utils.py:1587:
  ``unwrapped_model.to("cpu")``) before ``llm.wake_up()``; ``_memory_efficient_params`` (base.py:6216) brings the
  module back for ``learn``. The adapter is synced from the host (``_move_lora_to_vllm``, base.py:5111: export to
  disk, ``add_lora``).
* vLLM's budget — vllm 0.23.0 ``Worker.determine_available_memory`` (v1/worker/gpu_worker.py:372-465): the KV cache
  is ``requested_memory`` (``ceil(total × gpu_memory_utilization)``, v1/worker/utils.py:405) less the weights,
  the profile run's torch peak (``max_num_batched_tokens`` tokens, ``profile_run``, gpu_model_runner.py:6168) and
  non-torch memory; ``memory_profiling`` (utils/mem_utils.py:191) empties torch's cache after the profile run, so
  a generation holds its own prefill's activations instead. The persistent input buffers
  (``GPUModelRunner.__init__``, gpu_model_runner.py:718-798) are torch allocations after the start-up snapshot and
  outside the CuMem pool: outside the budget, kept asleep (``CuMemAllocator.sleep``, device_allocator/cumem.py:167).
* ``ref='lora-adapter'`` — AgileRL's ``use_separate_reference_adapter`` (base.py:2766): a second, frozen LoRA
  adapter (fp32, peft's default) of the actor's size on the same base, run for the reference rows.
* QLoRA's fp32 casts — peft 0.22 ``prepare_model_for_kbit_training`` (peft/utils/other.py:232-238): every 16-bit
  parameter bitsandbytes left unquantized is cast to fp32.
* Gemma-3 and OLMoE activations — transformers 5.25 ``modeling_gemma3.py`` (gated GELU, four fp32-scaled norms,
  per-head q/k norms) and ``modeling_olmoe.py`` (q_norm over hidden_size, k_norm over k·d, Llama-style RMSNorm).
"""

from __future__ import annotations

import pytest

import memplan
from memplan.errors import InputError
from memplan.estimator.formulas import saved_bytes_per_token
from memplan.specs import spec_from_config

H, F, L, KD, PSI = 896, 4864, 24, 128, 494_032_768
LORA_R8 = 24 * 8 * ((H + H) + (H + KD) + (H + KD) + (H + H) + 3 * (H + F))  # q, k, v, o, gate, up, down
assert LORA_R8 == 4_399_104
PER_TOKEN = 3 * 2 * F + 2 * 2 * H + 4 * H  # a layer's forward: gate, up, act (3·e·f), residual + norm (2·e·h + 4h)
RUN = dict(model="Qwen/Qwen2.5-0.5B", algo="grpo", gpus="1xA100-40GB", engine="torch", reward="rule",
           gradient_checkpointing=True, logprob_kernel="chunked", lora_rank=8, micro_batch_size=4, group_size=8,
           rollout_batch_size=1, prompt_len=128, gen_len=384, rollout_engine="vllm",
           vllm_gpu_memory_utilization=0.3, ref="lora-shared")


def _phases(report) -> dict:
    return {p.phase: p for p in report.phases}


def test_torch_idle_offload_parks_the_module_during_rollout():
    """Module.to('cpu'): the bf16 base (2Ψ) and the fp32 adapter (4·P) leave the GPU while vLLM generates, come back
    for scoring and the update (unchanged there), and nothing of the actor is loaded for the adapter sync."""
    given, parked = memplan.estimate(**RUN), memplan.estimate(**RUN, idle_offload="params")
    weights = 2 * PSI + 4 * LORA_R8
    assert _phases(given)["rollout"].total_bytes - _phases(parked)["rollout"].total_bytes == weights
    for phase in ("scoring", "actor_update"):
        assert _phases(given)[phase].total_bytes == _phases(parked)[phase].total_bytes
    assert parked.models[0].host_bytes == weights
    sync = [li for li in _phases(parked)["rollout"].items if "sync" in li.note]
    assert not any("back from the CPU" in li.note for li in sync)


def test_torch_idle_offload_moves_no_optimizer_states():
    with pytest.raises(InputError) as err:
        memplan.estimate(**RUN, idle_offload="params+optimizer")
    assert err.value.field == "idle_offload" and "Module.to" in str(err.value)


@pytest.mark.parametrize("batched", [None, 4096, 65_536])
def test_vllm_generation_holds_its_prefill_not_its_profile_run(batched):
    """u·capacity − T·(per-token) + min(8 seqs × 128 prompt tokens, T)·(per-token), beside the persistent input
    buffers T·(4 + 8 + 8 + 1 + 8 + 2h) kept in every phase (T = max_num_batched_tokens, default 8192)."""
    report = memplan.estimate(**RUN, idle_offload="params", vllm_max_num_batched_tokens=batched)
    t = batched or 8192
    reserved = int(0.3 * 42_404_806_656)  # the catalog's A100-40GB: torch total_memory (AgileRL's device.total_bytes)
    rollout = _phases(report)["rollout"]
    own = {li.note.split(": ", 1)[1]: li.bytes for li in rollout.items if li.note.startswith("sampled rollout: ")}
    assert own["vLLM reserves gpu_memory_utilization × GPU memory (its weights + KV cache), less its profile run's "
               "activations, freed after it"] == reserved - t * PER_TOKEN
    assert own["vLLM's prefill of the generation's prompts (one layer's intermediates)"] == min(8 * 128, t) * PER_TOKEN
    buffers = t * (4 + 8 + 8 + 1 + 8 + 2 * H)
    for phase in report.phases:
        assert [li.bytes for li in phase.items if "persistent input buffers" in li.note] == [buffers]


def test_a_second_reference_adapter():
    """ref 'lora-adapter': +4·P resident (fp32, frozen: no gradient, no AdamW state); the reference forward runs
    with adapters on its MLP (as the actor's), and a base without LoRA is refused."""
    shared, second = memplan.estimate(**RUN), memplan.estimate(**{**RUN, "ref": "lora-adapter"})
    for phase in ("rollout", "scoring", "actor_update"):
        assert _phases(second)[phase].total_bytes - _phases(shared)[phase].total_bytes == 4 * LORA_R8
    reference = next(m for m in second.models if m.role == "reference")
    assert reference.resident.parameter == 4 * LORA_R8 and reference.resident.optstate == 0
    parked = memplan.estimate(**{**RUN, "ref": "lora-adapter"}, idle_offload="params")  # parked with the module
    assert parked.models[0].host_bytes + reference.resident.parameter == 2 * PSI + 4 * LORA_R8 + 4 * LORA_R8
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**RUN, "ref": "lora-adapter", "lora_rank": 0})
    assert err.value.field == "ref"


def test_qlora_keeps_the_unquantized_parameters_in_fp32():
    """The 136,206,208 parameters bitsandbytes leaves 16-bit in Qwen2.5-0.5B (embedding 151,936·896, 49 norms of
    896, q/k/v biases 24·1,152) go bf16 → fp32: +2 bytes each on the actor."""
    linear = L * (H * H + 2 * H * KD + H * H + 3 * H * F)
    rest = PSI - linear
    assert rest == 151_936 * H + 49 * H + 24 * (H + 2 * KD)
    report = memplan.estimate(**{**RUN, "quantize_base": "int4"})
    actor = report.models[0]
    nf4 = linear * (0.5 + 0.127 / 8)  # QUANT_BYTES_PER_PARAM['int4']
    assert abs(actor.resident.parameter - (nf4 + 4 * rest + 4 * LORA_R8)) <= 1


def _layer(model_type: str, **config) -> float:
    spec = spec_from_config({"model_type": model_type, **config}, model_type)
    return saved_bytes_per_token(spec, 2, seq_len=512, weights_trainable=False, lora_rank=0).base


def test_gemma3_layer_by_hand():
    """Gemma-3 text decoder, frozen weights, bf16, h = 1152, a = 4, k = 1, d = 256, f = 6912: four fp32 norms
    (4h each; the two pre-norms' outputs are read by frozen linears: nothing more), attention q, k, v, out
    e·(2·a·d + 2·k·d) + 4a, per-head q/k norms 4·(a + k)·d, gated GELU 3·e·f."""
    got = _layer("gemma3_text", hidden_size=1152, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                 intermediate_size=6912, num_hidden_layers=26, vocab_size=262_144)
    a, k, d, h, f = 4, 1, 256, 1152, 6912
    assert got == 4 * 4 * h + 2 * (2 * a * d + 2 * k * d) + 4 * a + 4 * (a + k) * d + 3 * 2 * f


def test_olmoe_attention_norms_by_hand():
    """OLMoE's q_norm (over h = a·d) and k_norm (over k·d) keep their fp32 upcast: (a + k)·d·4 bytes more per token
    than the same layer without them (compared against OLMoE's own layer, model_type switched to Mixtral's)."""
    cfg = dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=16, intermediate_size=1024,
               num_hidden_layers=16, vocab_size=50_304, num_experts=64, num_experts_per_tok=8)
    olmoe = spec_from_config({"model_type": "olmoe", **cfg}, "olmoe")
    plain = saved_bytes_per_token(olmoe, 2, seq_len=512, weights_trainable=False).base
    from dataclasses import replace

    without = saved_bytes_per_token(replace(olmoe, model_type="mixtral"), 2, seq_len=512, weights_trainable=False)
    assert plain - without.base == 4 * (16 + 16) * 128


def test_row_chunked_lm_head_by_hand():
    """AgileRL's row-chunked LM head (fused_logprobs.py:103, 162; chunk_rows auto-tuned to a 256 MiB fp32 tile,
    agilerl/memory/formulas.py:248): Qwen2.5's V = 151,936 gives 2^28 // (4·V) = 441 rows. Every position is
    scored (4 sequences × 512 = 2,048). Training, in backward: the recomputed 16-bit tile and its gradient
    (2·441·V·2), the hidden states' gradient (2,048·h·2) and, for 4 sequences, the contiguous copies of the
    ``[:, :-1]`` slices (2,048·(2h + 8)); scoring: one tile, the 16-bit result per position and the copies."""
    from memplan.estimator.formulas import row_chunk_rows

    assert row_chunk_rows(151_936) == 441 and row_chunk_rows(32_000) == 2_097 and row_chunk_rows(1_000) == 4_096
    report = memplan.estimate(**{**RUN, "logprob_kernel": "row-chunked"})
    n, tile, copies = 4 * 512, 441 * 151_936 * 2, 4 * 512 * (2 * H + 8)
    items = {li.note: li.bytes for p in report.phases for li in p.items if li.category == "logits"}
    backward = next(b for note, b in items.items() if "row-chunked LM head's backward" in note)
    assert backward == 2 * tile + n * 2 * H + copies
    scoring = next(b for note, b in items.items() if note.endswith("row-chunked LM head: log-probs"))
    assert scoring == tile + n * 2 + copies
    from memplan.estimator.formulas import row_chunked_logprob_bytes

    assert row_chunked_logprob_bytes(n, 4, 151_936, H, 2, rows=row_chunk_rows(151_936, 128), training=True,
                                     head_trains=False) == 2 * 128 * 151_936 * 2 + n * 2 * H + copies
    assert row_chunked_logprob_bytes(300, 1, 151_936, H, 2, rows=441, training=False,
                                     head_trains=False) == 300 * 151_936 * 2 + 300 * 2  # one sequence: views
    memplan.estimate(**{**RUN, "logprob_kernel": "row-chunked", "logprob_chunk_rows": 128})  # accepted
    with pytest.raises(InputError) as err:
        memplan.estimate(**{**RUN, "logprob_chunk_rows": 128})  # RUN's kernel is TRL's 'chunked'
    assert err.value.field == "logprob_chunk_rows"


def test_bitsandbytes_dequantizes_one_weight_at_a_time():
    """QLoRA's matmul workspace: the largest quantized weight in bf16, Qwen2.5-0.5B's gate/up/down 4,864 × 896 · 2 B
    (bitsandbytes 0.50 ``_dequant_linear_fallback`` in forward, ``MatMul4Bit.backward``'s ``dequantize_4bit``);
    only on the quantized roles' forwards and training moments."""
    from memplan.estimator.formulas import dequantized_weight_bytes

    qwen = spec_from_config({"model_type": "qwen2", "hidden_size": H, "intermediate_size": F, "num_hidden_layers": L,
                             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151_936}, "q")
    assert dequantized_weight_bytes(qwen, 2) == 4_864 * 896 * 2
    report = memplan.estimate(**{**RUN, "quantize_base": "int4"})
    plain = memplan.estimate(**RUN)
    workspace = [li.bytes for p in report.phases for li in p.items if "dequantizes" in li.note]
    assert workspace and set(workspace) == {4_864 * 896 * 2}
    assert not [li for p in plain.phases for li in p.items if "dequantizes" in li.note]


def test_qlora_residual_stream_is_fp32_at_the_checkpoints():
    """peft's kbit preparation casts the embedding and the norms to fp32, and bitsandbytes' ``Linear4bit`` casts its
    output back to its input's dtype: every checkpointed layer input is fp32, 4·h bytes per token where a bf16
    base keeps 2·h. GRPO at micro batch 4 of 128 + 384 tokens: 2,048 tokens × 24 layers × 896."""
    tokens = 4 * (128 + 384)

    def checkpointed(report) -> int:
        items = [li.bytes for li in _phases(report)["actor_update"].items if li.note.endswith(": checkpointed layer inputs")]
        assert len(items) == 1
        return items[0]

    assert checkpointed(memplan.estimate(**RUN)) == tokens * L * 2 * H
    assert checkpointed(memplan.estimate(**{**RUN, "quantize_base": "int4"})) == tokens * L * 4 * H == 176_160_768
