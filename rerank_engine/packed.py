"""Padding-free forward passes over a `rerank_engine.packing.Packed` batch, for
the two reranker architectures: XLM-RoBERTa sequence classifiers
(bge-reranker-base) and Qwen3 decoders (Qwen3-Reranker).

They run the checkpoint's own modules and weights, layer by layer, on a flat
`[tokens, hidden]` activation; only attention needs to know where sequences
start and end. On a GPU that is FlashAttention's variable-length kernel
(the aten op behind `torch.nn.attention.varlen`); elsewhere, or in float32, a loop of
`scaled_dot_product_attention` over the spans computes the same thing, which
is how the CPU tests check every index against the padded reference.

Compared with transformers' padded forward, beyond skipping padding:
- bge's q/k/v, Qwen3's q/k and gate/up projections are one matrix product each; the
  separate modules keep their weights as views of the fused one, so memory
  does not grow and the padded path still works;
- Qwen3's q/k RMSNorms and rotary embedding run once over the q and k heads
  together, RMSNorm is torch's fused kernel, the residual add rides in the
  output projections' matrix products (`addmm`), and the last layer's MLP
  runs for the scored tokens only;
- a row's keys are gathered after its head's (`Packed.kv_index`), so a
  query's shared prompt head runs once per micro-batch with no separate pass
  and no cache concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rerank_engine.packing import Packed

HALF = (torch.float16, torch.bfloat16)
flash_varlen = getattr(torch.ops.aten, "_flash_attention_forward", None)
"""FlashAttention-2's variable-length forward, as torch builds it in. Called as the aten op that
`torch.nn.attention.varlen.varlen_attn` (torch 2.9+) wraps: the wrapper is a Python custom op, a host
cost on each of the 12 (bge) or 36 (Qwen3) calls per forward pass where bge is host-bound, and its
keyword arguments changed between releases."""


def varlen_kernel_available(device: torch.device, dtype: torch.dtype) -> bool:
    return flash_varlen is not None and device.type == "cuda" and dtype in HALF


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: Packed, causal: bool) -> torch.Tensor:
    """Per-span attention of `q` [tokens, heads, dim] over `k`/`v` [keys, kv_heads, dim] -> [tokens, heads * dim].

    Causal spans are aligned bottom-right (FlashAttention's rule when a span
    has fewer queries than keys): a row's last query sees all its keys, the
    head's included. Fewer kv heads than query heads (GQA) need no copies.
    """
    if varlen_kernel_available(q.device, q.dtype):
        out = flash_varlen(q, k, v, batch.cu_q, batch.cu_k, batch.max_q, batch.max_k, 0.0, causal, False)[0]
        return out.reshape(q.shape[0], -1)
    out = q.new_empty(q.shape)
    for (q_at, q_len), (k_at, k_len) in zip(batch.spans_q, batch.spans_k):
        mask = None
        if causal:
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
        span = F.scaled_dot_product_attention(
            q[q_at : q_at + q_len].transpose(0, 1),
            k[k_at : k_at + k_len].transpose(0, 1),
            v[k_at : k_at + k_len].transpose(0, 1),
            attn_mask=mask,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        out[q_at : q_at + q_len] = span.transpose(0, 1)
    return out.reshape(q.shape[0], -1)


def fuse_linears(*layers: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) stacking `layers`' outputs; each layer's parameters become views of it."""
    weight = torch.cat([layer.weight.detach() for layer in layers])
    has_bias = all(layer.bias is not None for layer in layers)
    bias = torch.cat([layer.bias.detach() for layer in layers]) if has_bias else None
    at = 0
    for layer in layers:
        rows = layer.weight.shape[0]
        layer.weight = nn.Parameter(weight[at : at + rows], requires_grad=False)
        if has_bias:
            layer.bias = nn.Parameter(bias[at : at + rows], requires_grad=False)
        at += rows
    return weight, bias


def _keys(tensor: torch.Tensor, batch: Packed) -> torch.Tensor:
    return tensor if batch.kv_index is None else tensor.index_select(0, batch.kv_index)


class PackedXLMRoberta:
    """XLMRobertaForSequenceClassification over packed pairs: one logit per row, from its `<s>` token.

    The layers run as plain functional calls on tensors fetched once: bge is
    host-bound, and each module call costs host time the GPU then waits for.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        embeddings = model.roberta.embeddings
        self.position_start = embeddings.padding_idx + 1
        self.heads = model.config.num_attention_heads
        self.width = (model.config.hidden_size,)
        self.layers = []
        for layer in model.roberta.encoder.layer:
            own, mixed, out = layer.attention.self, layer.attention.output, layer.output
            act = layer.intermediate.intermediate_act_fn
            self.layers.append((
                *fuse_linears(own.query, own.key, own.value),
                mixed.dense.weight, mixed.dense.bias, mixed.LayerNorm,
                layer.intermediate.dense.weight, layer.intermediate.dense.bias,
                F.gelu if model.config.hidden_act == "gelu" else act,
                out.dense.weight, out.dense.bias, out.LayerNorm,
            ))

    @torch.inference_mode()
    def __call__(self, batch: Packed) -> torch.Tensor:
        embeddings = self.model.roberta.embeddings
        x = embeddings.word_embeddings(batch.ids) + embeddings.token_type_embeddings.weight[0]
        x = embeddings.LayerNorm(x + embeddings.position_embeddings(batch.positions))
        tokens = x.shape[0]
        for qkv_w, qkv_b, o_w, o_b, norm1, up_w, up_b, act, down_w, down_b, norm2 in self.layers:
            q, k, v = F.linear(x, qkv_w, qkv_b).view(tokens, 3, self.heads, -1).unbind(1)
            context = attention(q, _keys(k, batch), _keys(v, batch), batch, causal=False)
            x = F.layer_norm(F.linear(context, o_w, o_b) + x, self.width, norm1.weight, norm1.bias, norm1.eps)
            h = act(F.linear(x, up_w, up_b))
            x = F.layer_norm(F.linear(h, down_w, down_b) + x, self.width, norm2.weight, norm2.bias, norm2.eps)
        return self.model.classifier(x[batch.first].unsqueeze(1))[:, 0]


class PackedQwen3:
    """Qwen3 decoder over packed rows: each row's last hidden state, after the final norm."""

    def __init__(self, decoder: nn.Module) -> None:
        config = decoder.config
        if getattr(config, "use_sliding_window", False):
            raise ValueError("packed attention does not implement Qwen3's sliding window")
        self.decoder = decoder
        self.q_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            # q and k in one product, v in another: the q/k normalization then reads a contiguous tensor.
            qk_weight, qk_bias = fuse_linears(attn.q_proj, attn.k_proj)
            gate_up, _ = fuse_linears(mlp.gate_proj, mlp.up_proj)
            qk_norm = torch.cat(
                [attn.q_norm.weight.detach().expand(self.q_heads, -1), attn.k_norm.weight.detach().expand(self.kv_heads, -1)]
            )
            self.layers.append((layer, qk_weight, qk_bias, qk_norm, gate_up))

    @torch.inference_mode()
    def __call__(self, batch: Packed) -> torch.Tensor:
        decoder = self.decoder
        x = decoder.embed_tokens(batch.ids)
        cos, sin = (t[0].unsqueeze(1) for t in decoder.rotary_emb(x, batch.positions.unsqueeze(0)))
        half = cos.shape[-1] // 2
        # rotate_half(t) * sin == roll(t, half) * sin with its first half negated: one kernel instead of three.
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        tokens, qk_heads, last_layer = x.shape[0], self.q_heads + self.kv_heads, len(self.layers) - 1
        for index, (layer, qk_weight, qk_bias, qk_norm, gate_up) in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = _rms_norm(layer.input_layernorm, x)
            qk = F.linear(h, qk_weight, qk_bias).view(tokens, qk_heads, -1)
            v = attn.v_proj(h).view(tokens, self.kv_heads, -1)
            # q_norm and k_norm share epsilon and differ only in weight: one normalization, one weight row per head.
            qk = F.rms_norm(qk, (qk.shape[-1],), eps=attn.q_norm.variance_epsilon) * qk_norm
            qk = torch.addcmul(qk * cos, qk.roll(half, dims=-1), sin)
            q, k = qk[:, : self.q_heads], qk[:, self.q_heads :]
            context = attention(q, _keys(k, batch), _keys(v, batch), batch, causal=True)
            if index == last_layer:
                # Past the last attention only the scored tokens matter: the rest skip the last MLP.
                context, x = context[batch.last], x[batch.last]
            x = _residual_linear(x, context, attn.o_proj)
            gate, up = F.linear(_rms_norm(layer.post_attention_layernorm, x), gate_up).chunk(2, dim=-1)
            x = _residual_linear(x, F.silu(gate) * up, mlp.down_proj)
        return _rms_norm(decoder.norm, x)


def _residual_linear(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """residual + linear(x), the addition done by the matrix product itself."""
    out = torch.addmm(residual, x, linear.weight.t())
    return out if linear.bias is None else out + linear.bias


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)

