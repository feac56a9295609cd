"""A small decoder-only transformer, nanoGPT-style, in standard (SP) or muP parametrization.

Everything that depends on the parametrization lives in three places: `GPT._init_weights`
(init std per tensor role), `GPT.param_groups` (Adam LR and weight decay per role) and the
forward multipliers (embedding x alpha_in, logits x alpha_out / m, attention 1/d_head,
optional depth scaling). Tensor roles are "embedding", "hidden", "readout" and "vector",
as in the muP table of docs/science.md section 7.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from scaleflow.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim)
    return nn.LayerNorm(dim, bias=cfg.bias)


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # (seq_len, head_dim / 2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of the last dim; x is (batch, heads, seq, head_dim)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.q_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else nn.Identity()
        # muP scores Q K^T / d_head so that they stay Theta(1) as width grows.
        self.scale = 1.0 / self.head_dim if cfg.parametrization == "mup" else None
        self.rotary = cfg.pos == "rope"
        if self.rotary:
            cos, sin = rotary_tables(cfg.seq_len, self.head_dim)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:  # q and k in one call: half the small ops (a tiny model's step is mostly op overhead)
            q, k = apply_rotary(torch.stack((q, k)), self.cos, self.sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        width = cfg.ff_width
        self.fc = nn.Linear(cfg.d_model, (2 if self.swiglu else 1) * width, bias=cfg.bias)
        self.proj = nn.Linear(width, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up)
        return self.proj(F.gelu(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)
        depth_scaled = cfg.parametrization == "mup" and cfg.mup.scale_depth > 0
        self.residual_scale = cfg.mup.scale_depth / math.sqrt(cfg.n_layer) if depth_scaled else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual_scale == 1.0:  # no multiply by 1: the same numbers, fewer ops
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.residual_scale * self.attn(self.norm1(x))
        return x + self.residual_scale * self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        mup = cfg.parametrization == "mup"
        self.width_mult = cfg.d_model / cfg.mup.base_width if mup else 1.0  # m in docs/science.md
        self.input_mult = cfg.mup.input_mult if mup else 1.0
        self.output_mult = cfg.mup.output_mult / self.width_mult if mup else 1.0
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.apply_init()

    # ----------------------------------------------------------------- parametrization
    def role(self, name: str, param: torch.Tensor) -> str:
        """muP tensor role of a parameter: embedding, hidden, readout or vector."""
        if param.ndim < 2:
            return "vector"
        if name.startswith(("tok_emb", "pos_emb")):
            return "embedding"
        if name.startswith("head"):
            return "readout"
        return "hidden"

    def apply_init(self) -> None:
        cfg = self.cfg
        std, m = cfg.init_std, self.width_mult
        for name, p in self.named_parameters():
            role = self.role(name, p)
            if role == "vector":
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif role == "embedding":
                nn.init.normal_(p, std=std)
            elif role == "readout":
                if cfg.parametrization == "mup" and cfg.mup.zero_readout:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=std)
            else:
                hidden_std = std / math.sqrt(m)
                if name.endswith("proj.weight"):  # residual out-projections (GPT-2)
                    hidden_std /= math.sqrt(2 * cfg.n_layer)
                nn.init.normal_(p, std=hidden_std)
        if cfg.parametrization == "mup" and cfg.mup.zero_query:
            for block in self.blocks:
                nn.init.zeros_(block.attn.qkv.weight[: cfg.d_model])

    def param_groups(self, weight_decay: float, lr_mults: dict[str, float]) -> list[dict]:
        """AdamW groups: one per (role, decayed). `lr_mult` scales the scheduled LR.

        Weight decay applies to matrices only. Under muP hidden matrices get LR / m, and with
        mup.weight_decay_scaling=width their decay x m, so that the decay per step (LR x lambda,
        as PyTorch's AdamW applies it) and so its EMA timescale stay fixed across widths.
        """
        cfg, m = self.cfg, self.width_mult
        groups: dict[str, dict] = {}
        for name, p in self.named_parameters():
            role = self.role(name, p)
            lr_mult, wd = lr_mults[role], (weight_decay if p.ndim >= 2 else 0.0)
            if cfg.parametrization == "mup" and role == "hidden":
                lr_mult /= m
                if cfg.mup.weight_decay_scaling == "width":
                    wd *= m
            group = groups.setdefault(role, {"params": [], "lr_mult": lr_mult, "weight_decay": wd, "role": role})
            group["params"].append(p)
        return list(groups.values())

    # ----------------------------------------------------------------- forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (batch, seq, vocab) and, given targets, the mean cross-entropy in nats/token."""
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        if self.input_mult != 1.0:
            x = x * self.input_mult
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm_f(x))
        if self.output_mult != 1.0:
            logits = logits * self.output_mult
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def num_params(self) -> int:
        """Unique parameters (a tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())
