"""Build the resident models of a run from configs (random weights, nothing downloaded).

* actor and reference: ``AutoModelForCausalLM``;
* critic and reward model: ``AutoModelForSequenceClassification`` with ``num_labels=1`` — the backbone plus a
  bias-free ``Linear(h, 1)``, as DeepSpeed-Chat's and OpenRLHF's value/reward heads;
* LoRA (peft) on the trained models; the reference is then the actor with its adapter disabled
  (``ref_mode='lora-shared'``) and no second copy of the base exists.

Dropout is set to 0 in every config (TRL's ``disable_dropout``, DeepSpeed-Chat's ``--disable_actor_dropout``):
RL fine-tuning turns it off, and dropout masks would otherwise be saved for backward.

Under fake tensors the models are built on the meta device (peft included) and each parameter and buffer
is then replaced by an empty fake CPU tensor of the same shape and dtype (``materialize_fake``); ties
(``lm_head.weight is embed_tokens.weight``) are kept. On CPU or CUDA they are built in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memplan.harness.setup import VARLEN, Setup

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DROPOUT_KEYS = (
    "attention_dropout", "dropout", "hidden_dropout", "activation_dropout", "resid_pdrop", "embd_pdrop",
    "attn_pdrop", "summary_first_dropout", "classifier_dropout", "layerdrop", "attention_probs_dropout_prob",
    "hidden_dropout_prob",
)
ATTENTION_MODULES = (
    r".*\.(self_attn|attn|attention)\.(q_proj|k_proj|v_proj|o_proj|out_proj|qkv_proj|c_attn|c_proj"
    r"|query_key_value|dense)"
)
"""peft ``target_modules`` regex for ``lora_targets='attention'`` (Llama/Qwen/Mistral/Gemma/Phi-3, OPT,
GPT-2, GPT-NeoX attention projections)."""


@dataclass
class Models:
    """The resident models of one run; ``reference`` is None when absent or shared with the LoRA actor."""

    actor: nn.Module
    critic: nn.Module | None = None
    reference: nn.Module | None = None
    reward: nn.Module | None = None
    shared_reference: bool = False

    def roles(self) -> list[tuple[str, nn.Module]]:
        pairs = [("actor", self.actor), ("critic", self.critic), ("reference", self.reference),
                 ("reward", self.reward)]
        return [(role, m) for role, m in pairs if m is not None]


def hf_config(raw: dict, setup: Setup, scalar_head: bool = False):  # noqa: ANN201 (transformers config)
    """A transformers config from a config.json dict, with dropout off and the run's attention kernel."""
    from transformers import AutoConfig

    fields = {k: v for k, v in raw.items() if k not in ("model_type", "quantization_config", "auto_map")}
    cfg = AutoConfig.for_model(raw["model_type"], **fields)
    for key in _DROPOUT_KEYS:
        if isinstance(getattr(cfg, key, None), (int, float)):
            setattr(cfg, key, 0.0)
    cfg._attn_implementation = setup.attention
    if scalar_head:
        cfg.num_labels = 1
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = 0  # sequence classification finds the last non-pad token
    return cfg


def build_model(raw: dict, setup: Setup, *, scalar_head: bool, device: str) -> nn.Module:
    """One model from its config on ``device`` ('meta', 'cpu', 'cuda'), in the run's dtype, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if scalar_head else AutoModelForCausalLM
    if setup.attention == VARLEN:  # packed micro batches: the varlen stand-in (harness.packing)
        from memplan.harness.packing import register

        register()
    cfg = hf_config(raw, setup, scalar_head)
    with torch.device(device):
        model = cls.from_config(cfg, dtype=TORCH_DTYPES[setup.dtype], attn_implementation=setup.attention)
    return model.eval()


def add_lora(model: nn.Module, setup: Setup, scalar_head: bool) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters (rank r, alpha 2r, no dropout; adapters fp32, peft's default)."""
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if setup.lora_targets == "all-linear" else ATTENTION_MODULES
    config = LoraConfig(
        r=setup.lora_rank, lora_alpha=2 * setup.lora_rank, lora_dropout=0.0, target_modules=targets,
        task_type="SEQ_CLS" if scalar_head else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def materialize_fake(model: nn.Module, fake_mode) -> None:  # noqa: ANN001
    """Replace every meta parameter and buffer of ``model`` by an empty fake CPU tensor (ties kept)."""
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(meta) -> (meta kept alive, fake)

    def fake_of(t: torch.Tensor, param: bool) -> torch.Tensor:
        if id(t) not in memo:
            with fake_mode:
                new = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            memo[id(t)] = (t, nn.Parameter(new, requires_grad=t.requires_grad) if param else new)
        return memo[id(t)][1]

    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = fake_of(p, True)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = fake_of(b, False)


def autocast_forward(model: nn.Module, dtype: torch.dtype) -> None:
    """Run ``model``'s forwards under ``torch.autocast`` (PyTorch AMP over fp32 weights)."""
    inner = model.forward
    device_type = next(model.parameters()).device.type
    device_type = "cpu" if device_type == "meta" else device_type

    def forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with torch.autocast(device_type, dtype=dtype):
            return inner(*args, **kwargs)

    model.forward = forward


def build_models(setup: Setup, device: str, fake_mode=None) -> Models:  # noqa: ANN001
    """Every resident model of ``setup`` on ``device``; with ``fake_mode``, built on meta then made fake.

    Trained models follow their engine (``steps.optim.engine_kind``): DeepSpeed casts the whole module to the
    run's dtype at ``deepspeed.initialize`` (``engine.py::_configure_distributed_model``: ``module.bfloat16()``),
    so peft's fp32 adapters become 16-bit; PyTorch AMP keeps the trained model in fp32 and autocasts its
    forwards; otherwise peft's fp32 adapters stay fp32.
    """
    from memplan.harness.steps.optim import engine_kind

    where = "meta" if fake_mode is not None else device
    kind = engine_kind(setup)

    def make(raw: dict, scalar_head: bool, trains: bool) -> nn.Module:
        model = build_model(raw, setup, scalar_head=scalar_head, device=where)
        model.requires_grad_(trains)
        if trains and setup.lora_rank:
            model = add_lora(model, setup, scalar_head)
        if trains and kind.startswith("deepspeed"):
            model.to(TORCH_DTYPES[setup.dtype])
        if trains and kind == "autocast":
            model.float()
            autocast_forward(model, TORCH_DTYPES[setup.dtype])
        if trains and setup.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if fake_mode is not None:
            materialize_fake(model, fake_mode)
        return model.eval()

    models = Models(actor=make(setup.actor_config, False, True))
    if setup.critic_config is not None:
        models.critic = make(setup.critic_config, True, True)
    if setup.ref_mode == "separate":
        models.reference = make(setup.actor_config, False, False)
    models.shared_reference = setup.ref_mode == "lora-shared"
    if setup.reward_config is not None:
        models.reward = make(setup.reward_config, True, False)
    return models
