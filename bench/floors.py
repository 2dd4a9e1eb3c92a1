"""The two floors of a workload on a card: the matrix products' FLOPs and the
bytes a fused forward must move, per pair, counted from the models' configs
and the workload's real token counts (the engine's own tokenization).

- FLOPs: 2 per multiply-add of every linear layer, per token the layer runs on,
  plus attention's two products (QK^T and PV) over each span's keys (bge: every
  key of its sequence; Qwen3: causal, a row's keys being its query head's and its own
  up to it). Norms, activations and softmax are left out (under 1%). Qwen3's
  last layer runs its MLP for the scored tokens only; counted for all (the
  overcount is 1/36 of the MLP's share).
- Bytes: what the fused design reads and writes at least: each product reads its
  input and writes its output once, each fused element-wise kernel reads its
  inputs and writes its output once, and the weights are read once per
  micro-batch (their share per pair falls as micro-batches grow).

A figure over the card's measured dense rate (FLOPs) or copy bandwidth (bytes)
is that floor's time: the larger of the two bounds what the card can do; their sum
is a bound for kernels that do not overlap the two.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Floors:
    flops_per_pair: float
    bytes_per_pair: float
    tokens_per_pair: float  # tokens the forward computes (Qwen3: a query's head once per micro-batch)
    weight_bytes: float  # read once per micro-batch
    notes: str

    def as_dict(self) -> dict:
        return {"flops_per_pair": round(self.flops_per_pair), "gflop_per_pair": round(self.flops_per_pair / 1e9, 3),
                "bytes_per_pair": round(self.bytes_per_pair), "mb_per_pair": round(self.bytes_per_pair / 1e6, 3),
                "tokens_per_pair": round(self.tokens_per_pair, 1), "weight_mb": round(self.weight_bytes / 1e6, 1),
                "notes": self.notes}


def xlm_roberta(config, lengths: list[int], pairs_per_micro_batch: float, act_bytes: int = 2) -> Floors:
    """bge-reranker-base (any XLM-RoBERTa classifier) on sequences of `lengths` tokens."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    linear_params = layers * (h * 3 * h + h * h + 2 * h * i)
    tokens = sum(lengths)
    flops = 2 * linear_params * tokens + layers * sum(4 * n * n * h for n in lengths)
    # Per token and layer, in elements: qkv product r h w 3h; attention r 3h w h; o product r h w h;
    # bias+add+LayerNorm r 2h w h; up product with its GELU epilogue r h w i; down r i w h; add+LayerNorm r 2h w h.
    per_token_layer = (h + 3 * h) + (3 * h + h) + (h + h) + (3 * h) + (h + i) + (i + h) + (3 * h)
    embedding = 3 * h  # two table rows read, one row written (fused gathers, adds and LayerNorm)
    weight_bytes = linear_params * act_bytes
    activation = tokens * (layers * per_token_layer + embedding) * act_bytes
    pairs = len(lengths)
    return Floors(flops / pairs, activation / pairs + weight_bytes / pairs_per_micro_batch, tokens / pairs,
                  weight_bytes, f"{layers} layers, hidden {h}, intermediate {i}, {act_bytes}-byte activations")


def qwen3(config, heads: list[int], rows: list[list[int]], pairs_per_micro_batch: float, fp8: bool) -> Floors:
    """A Qwen3 reranker: `heads[k]` the length of query head k (shared prompt), `rows` per head the lengths of
    the rows (document tails) continuing it, as the packed path runs them (each head once)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    linear_params = layers * (h * (q_width + 2 * kv_width) + q_width * h + 3 * h * i)
    tokens = sum(heads) + sum(sum(r) for r in rows)
    attention = 0
    for head, tails in zip(heads, rows):
        attention += head * (head + 1) // 2  # the head's own causal keys
        attention += sum(n * head + n * (n + 1) // 2 for n in tails)
    flops = 2 * linear_params * tokens + layers * 4 * q_width * attention
    w = 1 if fp8 else 2  # product inputs (activations and weights) in E4M3 or bf16; outputs bf16
    # Per token and layer, bytes: norm (+residual) r 2h*2 w h*w + h*2; qkv r h*w w (q+2kv)*2;
    # q/k norm + rope r (q+kv)*2 w (q+kv)*2; attention r (q+2kv)*2 w q*2; quantize attention out r q*2 w q*w;
    # o r q*w w h*2; norm (+residual) again; gate|up r h*w w 2i*2; SiLU*up r 2i*2 w i*w; down r i*w w h*2.
    norm = 2 * h * 2 + h * w + h * 2
    per_token_layer = (norm + (h * w + (q_width + 2 * kv_width) * 2) + 2 * (q_width + kv_width) * 2
                       + ((q_width + 2 * kv_width) * 2 + q_width * 2) + ((q_width * 2 + q_width * w) if fp8 else 0)
                       + (q_width * w + h * 2) + norm + (h * w + 2 * i * 2) + (2 * i * 2 + i * w) + (i * w + h * 2))
    weight_bytes = linear_params * w
    pairs = sum(len(r) for r in rows)
    activation = tokens * layers * per_token_layer
    return Floors(flops / pairs, activation / pairs + weight_bytes / pairs_per_micro_batch, tokens / pairs,
                  weight_bytes, f"{layers} layers, hidden {h}, intermediate {i}, {'FP8' if fp8 else 'bf16'} products")


def silu_mul_quant_bytes(tokens: int, intermediate: int) -> int:
    """One SiLU*up quantization: bf16 gate|up read once, E4M3 values and a float32 scale per token written."""
    return tokens * (2 * intermediate * 2 + intermediate + 4)


def add_layer_norm_bytes(tokens: int, hidden: int, element: int = 2) -> int:
    """y and the residual read, the normalized row written (the [hidden] vectors stay in cache)."""
    return tokens * hidden * element * 3


def embed_layer_norm_bytes(tokens: int, hidden: int, element: int = 2) -> int:
    return tokens * (hidden * element * 3 + 16)  # two table rows read, one row written, the id and position


def gelu_bytes(tokens: int, intermediate: int, element: int = 2) -> int:
    """An unfused GELU pass: what `gelu_epilogue` saves (the product's output read and written again)."""
    return tokens * intermediate * element * 2
