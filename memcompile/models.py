"""Toy transformers for tests, examples and benchmarks (gpt-fast style presets).

They live in the package so that tests, the demo and ``memcompile bench --model gpt-small`` work
from any install, with nothing depending on the repository root being importable. Every factory returns ``(model, example_inputs)`` where ``model(*example_inputs)``
returns a scalar loss, so one training step is ``model(*inputs).backward()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ModelArgs", "PRESETS", "RMSNorm", "rope_cache", "apply_rope", "Attention", "MLP", "Block", "Transformer",
    "make", "gpt_tiny", "gpt_small", "gpt_24", "llama_tiny", "llama_small", "gpt_tiny_dropout",
]


@dataclass(frozen=True, kw_only=True)
class ModelArgs:
    vocab_size: int = 512
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    max_seq_len: int = 256
    batch_size: int = 8
    seq_len: int = 256
    dropout: float = 0.0
    arch: str = "gpt"  # "gpt" (LayerNorm, GELU MLP, learned positions) or "llama" (RMSNorm, SwiGLU, RoPE)

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; valid names: {sorted(PRESETS)}")
        return PRESETS[name]


PRESETS: dict[str, ModelArgs] = {
    # The figures in DESIGN.md are for "gpt-small": V=512 d=256 L=4 h=4, batch 8x256.
    "gpt-tiny": ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=16, batch_size=2, seq_len=16),
    "gpt-small": ModelArgs(),
    "gpt-24": ModelArgs(dim=128, n_layers=24, n_heads=4, batch_size=4, seq_len=128, max_seq_len=128),
    "llama-tiny": ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=16, batch_size=2, seq_len=16, arch="llama"),
    "llama-small": ModelArgs(arch="llama"),
    "gpt-tiny-dropout": ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=16, batch_size=2, seq_len=16, dropout=0.1),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cache(seq_len: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len).float(), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # (T, hd/2, 2)


def apply_rope(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); rotate pairs (x0, x1) by the cached angles
    T = x.shape[-2]
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    c = cache[:T]
    cos, sin = c[..., 0], c[..., 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 0] * sin + xs[..., 1] * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.head_dim = args.dim // args.n_heads
        self.qkv = nn.Linear(args.dim, 3 * args.dim, bias=args.arch == "gpt")
        self.proj = nn.Linear(args.dim, args.dim, bias=args.arch == "gpt")
        self.dropout = args.dropout
        self.rope = args.arch == "llama"

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.rope:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.arch = args.arch
        hidden = 4 * args.dim
        if args.arch == "llama":
            self.w_gate = nn.Linear(args.dim, hidden, bias=False)
            self.w_up = nn.Linear(args.dim, hidden, bias=False)
            self.w_down = nn.Linear(hidden, args.dim, bias=False)
        else:
            self.fc = nn.Linear(args.dim, hidden)
            self.proj = nn.Linear(hidden, args.dim)
        self.dropout = args.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "llama":
            h = F.silu(self.w_gate(x)) * self.w_up(x)
            return self.w_down(h)
        return F.dropout(self.proj(F.gelu(self.fc(x))), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        norm = RMSNorm if args.arch == "llama" else nn.LayerNorm
        self.norm1 = norm(args.dim)
        self.attn = Attention(args)
        self.norm2 = norm(args.dim)
        self.mlp = MLP(args)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Decoder-only LM returning the mean next-token cross-entropy."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_emb = nn.Embedding(args.vocab_size, args.dim)
        self.pos_emb = nn.Embedding(args.max_seq_len, args.dim) if args.arch == "gpt" else None
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim) if args.arch == "llama" else nn.LayerNorm(args.dim)
        self.head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.arch == "llama":
            self.register_buffer("rope", rope_cache(args.max_seq_len, args.dim // args.n_heads), persistent=False)
        else:
            self.rope = None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x, self.rope)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def make(name: str, *, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, (idx, targets))`` for a preset; weights and batch are seeded."""
    args = ModelArgs.from_name(name)
    torch.manual_seed(seed)
    model = Transformer(args).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=g)
    targets = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len), generator=g)
    return model, (idx.to(device), targets.to(device))


# Factories for `memcompile inspect memcompile/models.py:gpt_small` and friends (FILE.py:FACTORY).
def gpt_tiny():
    return make("gpt-tiny")


def gpt_small():
    return make("gpt-small")


def gpt_24():
    return make("gpt-24")


def llama_tiny():
    return make("llama-tiny")


def llama_small():
    return make("llama-small")


def gpt_tiny_dropout():
    return make("gpt-tiny-dropout")
