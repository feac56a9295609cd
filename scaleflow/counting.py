"""Parameter counts and FLOPs per token, each variant named (docs/science.md section 1).

Parameter counts (unit: parameters):
- non_embedding: everything but the token/position embeddings and the unembedding (Kaplan).
- with_head: non_embedding plus the unembedding matrix (vocab x d_model), counted even when
  tied, because its FLOPs are spent either way (Porian et al. 2024).
- total: the model's unique parameters, as `sum(p.numel())` counts them.

FLOPs per token (unit: FLOPs per training token, forward plus backward):
- 6n_<count>: 6 x the parameter count.
- deepseek: DeepSeek LLM's M = 72 n_layer d^2 + 12 n_layer d l_seq, with the MLP term
  generalised to the model's d_ff and MLP type (72 d^2 = 6 (4 d^2 + 8 d^2) for a 4d GELU MLP).
- chinchilla: Hoffmann et al. appendix F: embeddings, QKV, attention logits, softmax,
  attention reduction, output projection, MLP, and final logits, backward = 2 x forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from scaleflow.config import ModelConfig


@dataclass(frozen=True)
class Counts:
    params_non_embedding: int
    params_with_head: int
    params_total: int
    flops_6n_non_embedding: float
    flops_6n_with_head: float
    flops_6n_total: float
    flops_deepseek: float
    flops_chinchilla: float

    def params(self, count: str) -> int:
        """Parameters by count name: non_embedding | with_head | total."""
        return getattr(self, f"params_{count}")

    def flops_per_token(self, count: str) -> float:
        """FLOPs per training token by count name (see trainer.flop_count)."""
        return getattr(self, f"flops_{count}")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _mlp_matrix_params(cfg: ModelConfig) -> int:
    return (3 if cfg.mlp == "swiglu" else 2) * cfg.d_model * cfg.ff_width


def count(cfg: ModelConfig) -> Counts:
    """All counts for a model shape. Matches `GPT(cfg).num_params()` for `total`. A model
    given by its counts (model.params, model.flops_per_token: an external trainer's) has
    those: params for every parameter count, flops_per_token (default 6 x params) for every
    FLOP count."""
    if cfg.params is not None or cfg.flops_per_token is not None:
        return _given(cfg)
    return _counted(cfg)


def _given(cfg: ModelConfig) -> Counts:
    shape = _counted(cfg)
    n = int(cfg.params) if cfg.params is not None else None
    per_token = float(cfg.flops_per_token) if cfg.flops_per_token is not None else 6.0 * n
    params = {k: n for k in ("non_embedding", "with_head", "total")} if n is not None else {
        k: shape.params(k) for k in ("non_embedding", "with_head", "total")}
    return Counts(**{f"params_{k}": v for k, v in params.items()},
                  **{f"flops_{k}": per_token for k in ("6n_non_embedding", "6n_with_head", "6n_total", "deepseek", "chinchilla")})


def _counted(cfg: ModelConfig) -> Counts:
    d, n_layer, ff, vocab, seq = cfg.d_model, cfg.n_layer, cfg.ff_width, cfg.vocab_size, cfg.seq_len
    head_dim = d // cfg.n_head
    norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    qk_norm = 2 * head_dim * (2 if cfg.norm == "layernorm" and cfg.bias else 1) if cfg.qk_norm else 0
    attn = 4 * d * d + (4 * d if cfg.bias else 0) + qk_norm
    mlp_bias = ((2 if cfg.mlp == "swiglu" else 1) * ff + d) if cfg.bias else 0
    mlp = _mlp_matrix_params(cfg) + mlp_bias
    non_embedding = n_layer * (attn + mlp + 2 * norm) + norm
    with_head = non_embedding + vocab * d
    total = non_embedding + vocab * d
    total += seq * d if cfg.pos == "learned" else 0
    total += 0 if cfg.tie_embeddings else vocab * d

    # DeepSeek's M: matmul FLOPs of the blocks plus attention over the full sequence.
    block_matrices = 4 * d * d + _mlp_matrix_params(cfg)
    deepseek = 6 * n_layer * block_matrices + 12 * n_layer * d * seq

    # Chinchilla appendix F, forward FLOPs per token (key_size x heads = d_model here).
    embed = 2 * vocab * d
    attention = 2 * 3 * d * d + 2 * seq * d + 3 * cfg.n_head * seq + 2 * seq * d + 2 * d * d
    dense = 2 * _mlp_matrix_params(cfg)
    logits = 2 * d * vocab
    chinchilla = 3 * (embed + n_layer * (attention + dense) + logits)

    return Counts(
        params_non_embedding=non_embedding,
        params_with_head=with_head,
        params_total=total,
        flops_6n_non_embedding=6.0 * non_embedding,
        flops_6n_with_head=6.0 * with_head,
        flops_6n_total=6.0 * total,
        flops_deepseek=float(deepseek),
        flops_chinchilla=float(chinchilla),
    )
