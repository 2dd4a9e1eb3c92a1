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
  runs for the scored tokens only; bge can fuse its embeddings, bias + add +
  LayerNorm and bias + GELU (`PackedXLMRoberta.FUSIONS`);
- a row's keys are gathered after its head's (`Packed.kv_index`), so a
  query's shared prompt head runs once per micro-batch with no separate pass
  and no cache concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rerank_engine import kernels
from rerank_engine.fp8 import Fp8Linear, Fp8Weight, fp8_linear
from rerank_engine.packing import Packed

HALF = (torch.float16, torch.bfloat16)
flash_varlen = getattr(torch.ops.aten, "_flash_attention_forward", None)
"""FlashAttention-2's variable-length forward, as torch builds it in. Called as the aten op that
`torch.nn.attention.varlen.varlen_attn` (torch 2.9+) wraps: the wrapper is a Python custom op, a host
cost on each of the 12 (bge) or 36 (Qwen3) calls per forward pass where bge is host-bound, and its
keyword arguments changed between releases."""


BGE_FUSIONS = ("embed_norm", "add_norm", "gelu_epilogue")
"""`PackedXLMRoberta`'s fused kernels, as config.pbtxt's `fusions` parameter names them."""


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
    q, k and v are one product (`fuse_linears`).

    `fusions` (a subset of FUSIONS; none is the reference path, as first shipped):
    - `embed_norm`: the embeddings' gathers, adds and LayerNorm as one kernel (`kernels.embed_layer_norm`);
    - `add_norm`: each output projection a plain `mm`, its bias, the residual add and LayerNorm one
      kernel after it (`kernels.add_layer_norm`); the sum is not rounded before the norm;
    - `gelu_epilogue`: the up-projection's bias and GELU in cuBLASLt's epilogue
      (`torch._addmm_activation`), which computes GELU's tanh approximation, not the model's exact
      (erf) GELU; off CUDA the same tanh GELU runs after the product, so the CPU computes what the GPU does.
    `compile`: the layers after attention (projection to LayerNorm, twice) through `torch.compile`
    (dynamic token count), which fuses their element-wise work itself; not combined with `add_norm`.
    """

    FUSIONS = BGE_FUSIONS

    def __init__(self, model: nn.Module, fusions: tuple[str, ...] | frozenset[str] = (), compile: bool = False) -> None:
        unknown = set(fusions) - set(self.FUSIONS)
        if unknown:
            raise ValueError(f"unknown bge fusions {sorted(unknown)}; expected some of {', '.join(self.FUSIONS)}")
        if compile and "add_norm" in fusions:
            raise ValueError("compile and the add_norm fusion both fuse the add and LayerNorm: choose one")
        self.model = model
        self.fusions = frozenset(fusions)
        embeddings = model.roberta.embeddings
        self.position_start = embeddings.padding_idx + 1
        self.heads = model.config.num_attention_heads
        self.width = (model.config.hidden_size,)
        exact_gelu = model.config.hidden_act == "gelu"
        if "gelu_epilogue" in self.fusions and not exact_gelu:
            raise ValueError(f"gelu_epilogue replaces GELU, but this model's activation is {model.config.hidden_act}")
        self.layers = []
        for layer in model.roberta.encoder.layer:
            own, mixed, out = layer.attention.self, layer.attention.output, layer.output
            act = layer.intermediate.intermediate_act_fn
            # Tensors and floats only past q/k/v: torch.compile guards on a module argument's identity, and
            # twelve LayerNorm modules would cost twelve compilations.
            self.layers.append((
                *fuse_linears(own.query, own.key, own.value),
                mixed.dense.weight, mixed.dense.bias, mixed.LayerNorm.weight, mixed.LayerNorm.bias, mixed.LayerNorm.eps,
                layer.intermediate.dense.weight, layer.intermediate.dense.bias,
                F.gelu if exact_gelu else act,
                out.dense.weight, out.dense.bias, out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps,
            ))
        self._after_attention = self._after_attention_eager
        if compile:
            self._after_attention = torch.compile(self._after_attention_eager, dynamic=True)

    @torch.inference_mode()
    def __call__(self, batch: Packed) -> torch.Tensor:
        x = self._embed(batch)
        tokens = x.shape[0]
        for qkv_w, qkv_b, *rest in self.layers:
            q, k, v = F.linear(x, qkv_w, qkv_b).view(tokens, 3, self.heads, -1).unbind(1)
            context = attention(q, _keys(k, batch), _keys(v, batch), batch, causal=False)
            x = self._after_attention(context, x, *rest)
        return self.model.classifier(x[batch.first].unsqueeze(1))[:, 0]

    def _embed(self, batch: Packed) -> torch.Tensor:
        embeddings = self.model.roberta.embeddings
        if "embed_norm" in self.fusions:
            norm = embeddings.LayerNorm
            return kernels.embed_layer_norm(batch.ids, batch.positions, embeddings.word_embeddings.weight,
                                            embeddings.position_embeddings.weight,
                                            embeddings.token_type_embeddings.weight[0], norm.weight, norm.bias,
                                            norm.eps)
        x = embeddings.word_embeddings(batch.ids) + embeddings.token_type_embeddings.weight[0]
        return embeddings.LayerNorm(x + embeddings.position_embeddings(batch.positions))

    def _after_attention_eager(self, context, x, o_w, o_b, n1_w, n1_b, n1_eps, up_w, up_b, act, down_w, down_b,
                               n2_w, n2_b, n2_eps):
        """Attention's output projection, add & norm, the MLP, add & norm: everything of a layer past attention."""
        if "add_norm" in self.fusions:
            x = kernels.add_layer_norm(torch.mm(context, o_w.t()), x, n1_w, n1_b, n1_eps, bias=o_b)
        else:
            x = F.layer_norm(F.linear(context, o_w, o_b) + x, self.width, n1_w, n1_b, n1_eps)
        if "gelu_epilogue" in self.fusions:
            h = _linear_tanh_gelu(x, up_w, up_b)
        else:
            h = act(F.linear(x, up_w, up_b))
        if "add_norm" in self.fusions:
            return kernels.add_layer_norm(torch.mm(h, down_w.t()), x, n2_w, n2_b, n2_eps, bias=down_b)
        return F.layer_norm(F.linear(h, down_w, down_b) + x, self.width, n2_w, n2_b, n2_eps)


def _linear_tanh_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation) of x @ weight.T + bias: on CUDA one cuBLASLt product with its GELU_BIAS
    epilogue; elsewhere the product, then tanh GELU (CPU `_addmm_activation` computes the exact GELU)."""
    if x.device.type == "cuda":
        return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


class PackedQwen3:
    """Qwen3 decoder over packed rows: each row's last hidden state, after the final norm.

    In bf16 its linear layers are the checkpoint's; where `rerank_engine.fp8.quantize_linears` (or an
    FP8 checkpoint) made them `Fp8Linear`s, the products run in FP8 and every activation they read is
    quantized by the kernel that produces it (`rerank_engine.kernels`): the norms, SiLU*up, and one
    per-token pass over attention's output.
    """

    def __init__(self, decoder: nn.Module) -> None:
        config = decoder.config
        if getattr(config, "use_sliding_window", False):
            raise ValueError("packed attention does not implement Qwen3's sliding window")
        self.decoder = decoder
        self.q_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.fp8 = isinstance(decoder.layers[0].self_attn.q_proj, Fp8Linear)
        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qk_norm = torch.cat(
                [attn.q_norm.weight.detach().expand(self.q_heads, -1), attn.k_norm.weight.detach().expand(self.kv_heads, -1)]
            )
            if self.fp8:
                # q, k and v in one product: the q/k norm kernel reads the q|k heads of it through strides.
                qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
                qkv_bias = torch.cat([p.bias for p in qkv]) if all(p.bias is not None for p in qkv) else None
                self.layers.append((layer, fuse_fp8_linears(*qkv), qkv_bias, qk_norm,
                                    fuse_fp8_linears(mlp.gate_proj, mlp.up_proj)))
                continue
            # q and k in one product, v in another: the q/k normalization then reads a contiguous tensor.
            qk_weight, qk_bias = fuse_linears(attn.q_proj, attn.k_proj)
            gate_up, _ = fuse_linears(mlp.gate_proj, mlp.up_proj)
            self.layers.append((layer, qk_weight, qk_bias, qk_norm, gate_up))

    @torch.inference_mode()
    def __call__(self, batch: Packed) -> torch.Tensor:
        return self._fp8(batch) if self.fp8 else self._bf16(batch)

    def _rotary(self, x: torch.Tensor, batch: Packed) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [tokens, head_dim] of each token's position."""
        cos, sin = self.decoder.rotary_emb(x, batch.positions.unsqueeze(0))
        return cos[0], sin[0]

    def _bf16(self, batch: Packed) -> torch.Tensor:
        decoder = self.decoder
        x = decoder.embed_tokens(batch.ids)
        cos, sin = self._rotary(x, batch)
        fused = kernels.available(x.device, fp8=False)
        half = cos.shape[-1] // 2
        # rotate_half(t) * sin == roll(t, half) * sin with its first half negated: one kernel instead of three.
        cos_b, sin_b = cos.unsqueeze(1), torch.cat([-sin[..., :half], sin[..., half:]], dim=-1).unsqueeze(1)
        tokens, qk_heads, last_layer = x.shape[0], self.q_heads + self.kv_heads, len(self.layers) - 1
        for index, (layer, qk_weight, qk_bias, qk_norm, gate_up) in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            h = _rms_norm(layer.input_layernorm, x)
            qk = F.linear(h, qk_weight, qk_bias).view(tokens, qk_heads, -1)
            v = attn.v_proj(h).view(tokens, self.kv_heads, -1)
            eps = attn.q_norm.variance_epsilon
            if fused:
                qk = kernels.qk_norm_rope(qk, qk_norm, cos, sin, eps)
            else:
                # q_norm and k_norm share epsilon and differ only in weight: one normalization, one weight row per head.
                qk = F.rms_norm(qk, (qk.shape[-1],), eps=eps) * qk_norm
                qk = torch.addcmul(qk * cos_b, qk.roll(half, dims=-1), sin_b)
            q, k = qk[:, : self.q_heads], qk[:, self.q_heads :]
            context = attention(q, _keys(k, batch), _keys(v, batch), batch, causal=True)
            if index == last_layer:
                # Past the last attention only the scored tokens matter: the rest skip the last MLP.
                context, x = context[batch.last], x[batch.last]
            x = _residual_linear(x, context, attn.o_proj)
            gate_up_out = F.linear(_rms_norm(layer.post_attention_layernorm, x), gate_up)
            if fused:
                hidden = kernels.silu_mul(gate_up_out)
            else:
                gate, up = gate_up_out.chunk(2, dim=-1)
                hidden = F.silu(gate) * up
            x = _residual_linear(x, hidden, mlp.down_proj)
        return _rms_norm(decoder.norm, x)

    def _fp8(self, batch: Packed) -> torch.Tensor:
        decoder = self.decoder
        x = decoder.embed_tokens(batch.ids)
        cos, sin = self._rotary(x, batch)
        tokens, qk_heads, last_layer = x.shape[0], self.q_heads + self.kv_heads, len(self.layers) - 1
        dtype = x.dtype  # the products write the model's activation dtype (bf16 on a GPU)
        first = self.layers[0][0].input_layernorm
        h_q, h_scale = kernels.rms_norm_quant(x, first.weight, first.variance_epsilon)
        for index, (layer, qkv_weight, qkv_bias, qk_norm, gate_up) in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qkv = fp8_linear(h_q, h_scale, qkv_weight, qkv_bias, dtype).view(tokens, qk_heads + self.kv_heads, -1)
            qk = kernels.qk_norm_rope(qkv[:, :qk_heads], qk_norm, cos, sin, attn.q_norm.variance_epsilon)
            q, k, v = qk[:, : self.q_heads], qk[:, self.q_heads :], qkv[:, qk_heads:]
            context = attention(q, _keys(k, batch), _keys(v, batch), batch, causal=True)
            if index == last_layer:
                context, x = context[batch.last], x[batch.last]
            attended = attn.o_proj(context)  # per-token quantization of attention's output, then the product
            norm = layer.post_attention_layernorm
            g_q, g_scale, x = kernels.rms_norm_quant(attended, norm.weight, norm.variance_epsilon, residual=x)
            m_q, m_scale = kernels.silu_mul_quant(fp8_linear(g_q, g_scale, gate_up, out_dtype=dtype))
            down = fp8_linear(m_q, m_scale, mlp.down_proj.fp8_weight, mlp.down_proj.bias, dtype)
            if index == last_layer:
                x = x + down
            else:
                nxt = self.layers[index + 1][0].input_layernorm
                h_q, h_scale, x = kernels.rms_norm_quant(down, nxt.weight, nxt.variance_epsilon, residual=x)
        return _rms_norm(decoder.norm, x)


def fuse_fp8_linears(*layers: Fp8Linear) -> Fp8Weight:
    """One FP8 weight stacking `layers`' outputs (exact: scales are per output channel); each layer's
    buffers become views of it, so memory does not grow and the layers still work on their own."""
    fused = Fp8Weight.cat(layer.fp8_weight for layer in layers)
    at = 0
    for layer in layers:
        rows = layer.out_features
        layer.weight, layer.weight_scale = fused.weight[at : at + rows], fused.scale[at : at + rows]
        at += rows
    return fused


def _residual_linear(residual: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """residual + linear(x), the addition done by the matrix product itself."""
    out = torch.addmm(residual, x, linear.weight.t())
    return out if linear.bias is None else out + linear.bias


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)

