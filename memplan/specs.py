"""Resolved model architecture: the shape facts the memory model needs and exact parameter counts.

Shape letters used across memplan (Korthikanti et al. 2022, arXiv 2205.05198):

    b  micro-batch size (sequences)        s  sequence length (tokens)
    h  hidden size                         a  attention heads
    k  key/value heads (GQA)               d  head dimension
    L  decoder layers                      V  vocabulary size
    f  MLP intermediate size (per expert for MoE)

A ``ModelSpec`` is built from a config.json dictionary by ``spec_from_config`` in pure Python (no torch,
no transformers); its parameter counts equal what transformers builds from the same config on the meta
device (checked for every catalog entry in tests/test_specs.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Linear:
    """One linear layer inside a decoder layer, as LoRA sees it: ``count`` copies of an in×out matrix."""

    name: str
    """Module name as in transformers (``q_proj``, ``gate_proj``, ``fc1``, ``query_key_value`` …)."""
    in_features: int
    out_features: int
    count: int = 1
    """How many copies per layer (the number of experts for MoE expert matrices)."""
    attention: bool = False
    """True for attention projections (LoRA ``attention`` target set)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """Architecture of one causal LM, resolved from its config.json."""

    name: str
    """Catalog name (HF ``org/name``) or the path the config was read from."""
    model_type: str
    """transformers ``model_type`` (llama, qwen2, opt, gpt_neox, mixtral, gpt2 …)."""
    hidden_size: int
    """h."""
    num_layers: int
    """L."""
    num_heads: int
    """a."""
    num_kv_heads: int
    """k (equals a without GQA)."""
    head_dim: int
    """d."""
    intermediate_size: int
    """f: MLP width (per expert for MoE)."""
    vocab_size: int
    """V."""
    gated_mlp: bool
    """SwiGLU/GeGLU (gate, up, down) rather than a plain two-matrix MLP."""
    num_experts: int = 0
    """Routed experts per MoE layer; 0 for dense models."""
    experts_per_token: int = 0
    """Top-k experts each token visits (MoE)."""
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 0
    num_params: int
    """Exact parameter count of the ``AutoModelForCausalLM`` transformers builds (LM head included)."""
    embedding_params: int
    """Input embedding parameters (token and learned position embeddings, projections)."""
    lm_head_params: int
    """Separate LM head parameters; 0 when tied to the input embedding."""
    layer_params: int
    """Parameters of one decoder layer."""
    linears: tuple[Linear, ...] = ()
    """The linear layers of one decoder layer (for LoRA adapter sizes)."""

    @property
    def backbone_params(self) -> int:
        """Parameters without the LM head: what a reward model or critic keeps before its scalar head."""
        return self.num_params - self.lm_head_params
