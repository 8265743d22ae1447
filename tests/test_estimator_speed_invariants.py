"""The estimator's fast path changes nothing a caller sees.

Reports are built without re-validation (``memplan.report.trusted``) and their parts are cached per request
(``memplan.estimator.CACHE_SIZE``): a report must equal its own re-validation, serialize without warnings,
keep pydantic's ``model_fields_set`` as validation would set it, and be immutable, as the same report is
handed to every caller of the same request.
"""

from __future__ import annotations

import warnings

import pytest
from pydantic import BaseModel, ValidationError

import memplan
from memplan.estimator import _cached
from memplan.report import ArchConfig, EstimateRequest, ModelReport, Report

LLAMA2_7B = "meta-llama/Llama-2-7b-hf"
REQUESTS = [
    dict(model=LLAMA2_7B, gpus="8xA100-40GB", zero_stage=2, ref_zero_stage=3, reward_zero_stage=3, offload_ref=True,
         offload_reward=True, gradient_checkpointing=True, rollout_engine="hybrid-engine"),
    dict(model="facebook/opt-1.3b", algo="grpo", gpus="4xA100-80GB", rollout_engine="vllm", zero_stage=3,
         offload="optimizer", host_ram_bytes_per_node=1 << 30),  # both notes
    dict(model=LLAMA2_7B, algo="dpo", gpus="1xA100-80GB", lora_rank=16, quantize_base="int4"),
    dict(model="Qwen/Qwen2.5-1.5B", algo="rloo", gpus="8xH100-80GB", placement="split", zero_stage=1),
    dict(model="gpt2", algo="sft", gpus="1xA100-40GB", engine="torch"),
    dict(model="meta-llama/Llama-3.1-8B", algo="remax", gpus="2x8xH100-80GB", engine="fsdp", zero_stage=3, tp=2),
    dict(model=dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, intermediate_size=4096,
                    vocab_size=32000), algo="ppo", gpus="2xL4"),
]


def _fields_set_as_validated(model, expected: set[str] | None = None) -> None:
    """Validating a dict with every key sets every field; a model's ``resident`` was given three keys."""
    assert model.model_fields_set == (expected or set(type(model).model_fields)), type(model).__name__
    for name in type(model).model_fields:
        value = getattr(model, name)
        for sub in value if isinstance(value, tuple) else [value]:
            if isinstance(sub, BaseModel) and not isinstance(sub, EstimateRequest):
                resident = isinstance(model, ModelReport) and name == "resident"
                _fields_set_as_validated(sub, {"parameter", "optstate", "buffer"} if resident else None)


@pytest.mark.parametrize("kwargs", REQUESTS, ids=lambda kw: f"{kw['algo'] if 'algo' in kw else 'ppo'}")
def test_report_equals_its_revalidation(kwargs):
    report = memplan.estimate(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a value of the wrong type would warn when serialized
        dumped = report.model_dump()
        text = report.model_dump_json()
    again = Report.model_validate(dumped)
    assert again == report
    assert again.model_dump_json() == text
    _fields_set_as_validated(report)


def test_cached_reports_are_immutable():
    request = EstimateRequest(**REQUESTS[1])
    _cached.cache_clear()
    first = memplan.estimate(request)
    text = first.model_dump_json()
    assert memplan.estimate(**REQUESTS[1]) is first  # an equal request, the same report
    # nothing a caller holds can be changed in place: frozen models, tuples
    for obj in (first, first.phases[0], first.phases[0].items[0], first.phases[0].breakdown, first.models[0]):
        with pytest.raises(ValidationError):
            setattr(obj, next(iter(type(obj).model_fields)), None)
    for seq in (first.phases, first.phases[0].items, first.notes, first.resident_items, first.deciding_terms,
                first.models):
        assert isinstance(seq, tuple)
    assert memplan.estimate(request).model_dump_json() == text


def test_inline_architectures_equal_but_set_differently_are_not_confused():
    # gpt2 ties its LM head by default: an ArchConfig that leaves tie_word_embeddings unset gets the tied model,
    # one that sets it False (the field's default value) an untied one. The two compare (and hash) equal.
    shape = dict(model_type="gpt2", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=50257, max_position_embeddings=1024)
    tied = EstimateRequest(model=ArchConfig(**shape), algo="sft")
    untied = EstimateRequest(model=ArchConfig(**shape, tie_word_embeddings=False), algo="sft")
    assert tied == untied
    a, b = memplan.estimate(tied), memplan.estimate(untied)
    assert b.models[0].num_params - a.models[0].num_params == 50257 * 768  # the separate LM head
    assert memplan.estimate(tied) == a and memplan.estimate(untied) == b
