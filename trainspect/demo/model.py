"""A tiny randomly initialised Llama with a PEFT LoRA adapter: the demo's model.

The architecture is the real `transformers` Llama (RMSNorm, RoPE, SwiGLU, tied
embeddings), only small, so everything trainspect does on a real LoRA fine-tune
(LoRA deltas per layer and block, gradients, hidden states) has the same module
names here. LoRA sits on every attention and MLP projection.

The base weights are random, so LoRA alone would learn slowly: the embedding
(tied to the LM head) is trained in full as well, through PEFT's
`modules_to_save` with `ensure_weight_tying` so the head and the embedding stay
one matrix.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from trainspect.errors import TrainspectError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the tiny Llama and its LoRA adapter."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 2
    """Decoder blocks; each gets LoRA on q/k/v/o and gate/up/down."""
    num_heads: int = 4
    """Attention heads (no grouped-query sharing: as many key/value heads)."""
    intermediate_size: int = 512
    """SwiGLU width, 4x hidden."""
    max_positions: int = 512
    """RoPE table length; longer than any demo sequence."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scale numerator: the update is scaled by alpha / r = 2."""
    train_embeddings: bool = True
    """Also train the (tied) embedding / LM head in full: makes random-base LoRA learn fast."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise TrainspectError(
                f"expected `hidden_size` to be a multiple of `num_heads` ({self.num_heads}), "
                f"got {self.hidden_size}"
            )


LORA_TARGETS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)


def llama_config(cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int
                 ) -> LlamaConfig:
    """The `transformers` config for `cfg` with the tokenizer's vocabulary and special ids."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attn_implementation="sdpa",
    )


def build_model(cfg: ModelConfig, vocab_size: int, *, pad_id: int, bos_id: int, eos_id: int,
                seed: int = 0) -> PeftModel:
    """A randomly initialised tiny Llama (weights fixed by `seed`) wrapped with LoRA."""
    torch.manual_seed(seed)  # the one global RNG transformers' init draws from
    base = LlamaForCausalLM(llama_config(cfg, vocab_size, pad_id, bos_id, eos_id))
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,  # the demo is short; dropout would only slow the visible learning
        target_modules=list(LORA_TARGETS),
        modules_to_save=["embed_tokens", "lm_head"] if cfg.train_embeddings else None,
        ensure_weight_tying=cfg.train_embeddings,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(base, lora)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts, tied matrices counted once."""
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total
