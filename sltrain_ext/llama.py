"""A compact LLaMA decoder for pretraining, with HF LlamaForCausalLM's module
names (``model.layers.N.self_attn.q_proj``, ``mlp.gate_proj``, ...), so that
``convert`` targets it exactly as it targets the HF model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import LlamaConfig

__all__ = ["LlamaForCausalLM"]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotary_tables(seq_len: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_dim = h // self.heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(h, h, bias=False) for _ in range(4))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, s, h = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        q = apply_rotary(heads(self.q_proj(x)), cos, sin)
        k = apply_rotary(heads(self.k_proj(x)), cos, sin)
        out = F.scaled_dot_product_attention(q, k, heads(self.v_proj(x)), is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, h))


def empty_with_aligned_rows(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An empty tensor of `shape` whose rows (last dimension) start 16 bytes
    apart on a GPU: cuBLAS runs its fast kernels only on such rows, and the
    CUDA sl_matmul otherwise copies an operand into them (DESIGN.md, issue 19).
    A padded row stride, not padded values: the view has exactly `shape`."""
    width = shape[-1]
    row = (width + 7) // 8 * 8 if like.is_cuda else width
    return like.new_empty(*shape[:-1], row)[..., :width]


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up with the same bits in both directions as the two torch
    ops, but the product and both gradients laid out by
    empty_with_aligned_rows, so that down_proj's input and the gradients that
    reach gate_proj and up_proj arrive with aligned rows at any width (LLaMA-1B's
    5461), and only gate and up are saved (torch's silu and mul also keep
    silu(gate))."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return torch.mul(F.silu(gate), up, out=empty_with_aligned_rows(gate.shape, gate))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled():  # backward(create_graph=True)
            raise RuntimeError("swiglu has no second derivative: for create_graph=True, build the MLP "
                               "with F.silu(gate) * up instead")
        gate, up = ctx.saved_tensors
        grad_up = torch.mul(grad, F.silu(gate), out=empty_with_aligned_rows(up.shape, up))
        grad_gate = torch.ops.aten.silu_backward.grad_input(grad * up, gate,
                                                            grad_input=empty_with_aligned_rows(gate.shape, gate))
        return grad_gate, grad_up


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return SwiGLU.apply(gate, up)


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head_dim = config.hidden_size // config.num_attention_heads

    def forward(self, tokens: Tensor, checkpoint: bool = False) -> Tensor:
        x = self.embed_tokens(tokens)
        cos, sin = rotary_tables(tokens.shape[1], self.head_dim, tokens.device)
        for layer in self.layers:
            if checkpoint:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    """Decoder-only LLaMA: RMSNorm, rotary attention, SwiGLU MLP, untied head."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF LLaMA's initialisation: N(0, 0.02) for embeddings and projections."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: Tensor, checkpoint: bool = False) -> Tensor:
        """Logits ``[batch, seq, vocab]`` for int64 tokens ``[batch, seq]``."""
        return self.lm_head(self.model(tokens, checkpoint=checkpoint))

    def loss(self, tokens: Tensor, checkpoint: bool = False) -> Tensor:
        """Mean next-token cross-entropy over ``tokens`` (inputs and shifted targets)."""
        return causal_lm_loss(self, tokens, checkpoint)


def causal_lm_loss(model: nn.Module, tokens: Tensor, checkpoint: bool = False) -> Tensor:
    """Next-token cross-entropy of ``model`` (a LlamaForCausalLM, or a wrapper such
    as DistributedDataParallel whose forward must run) on ``tokens`` [batch, seq + 1]."""
    logits = model(tokens[:, :-1], checkpoint=checkpoint)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
