"""The Triton model contract: tensor names, `config.pbtxt` parameter keys and
scorer kinds. The Triton models, the gateway and the tests all import these
names from here, so the contract is spelled once.

This module must stay importable without torch: the gateway uses it.
"""

INPUT_QUERY = "query"
INPUT_DOCUMENT = "document"
INPUT_INSTRUCTION = "instruction"

OUTPUT_SCORE = "score"
"""Relevance in [0, 1] for cross-encoders (sigmoid / P(yes)); cosine for bi-encoders."""
OUTPUT_RAW_SCORE = "raw_score"
"""The logit (or yes-minus-no log-odds) before the activation; cosine for bi-encoders."""
OUTPUT_NUM_TOKENS = "num_tokens"
"""Tokens of the pair as the model saw them, after truncation."""
OUTPUT_INPUT_TOKENS = "input_tokens"
"""Tokens the pair would take uncut: with `num_tokens`, how much truncation removed."""
OUTPUT_TRUNCATED = "truncated"
"""True when the pair was longer than the model's limit (or the request's per-document limit) and was cut."""
OUTPUT_CHUNKS = "chunks"
"""Windows the document was scored in (1 unless the request asked for chunking); the score is their maximum."""
OUTPUT_COMPUTE_US = "compute_us"
"""Microseconds the engine spent on the batch this request was scored in (tokenize + forward)."""
OUTPUT_FINGERPRINT = "fingerprint"
"""What the model instance serves, as one [1, 1] string per response (`rerank_engine.fingerprint`): its
weights, tokenizer, config.pbtxt parameters, dtype and engine code. The gateway's score cache keys its
entries by it, so a score is never served under weights or settings other than those that computed it."""

SCORE_OUTPUTS = (OUTPUT_SCORE, OUTPUT_RAW_SCORE, OUTPUT_NUM_TOKENS, OUTPUT_INPUT_TOKENS, OUTPUT_TRUNCATED, OUTPUT_CHUNKS)
"""Per-pair outputs, each the engine's `Scores` field of the same name, in the order the gateway reads them."""
OUTPUTS = (*SCORE_OUTPUTS, OUTPUT_COMPUTE_US, OUTPUT_FINGERPRINT)
"""Every output a model returns (and config.pbtxt declares)."""

REQUEST_PARAM_MAX_DOCUMENT_TOKENS = "max_document_tokens"
"""Optional per-request Triton parameter: cut each document to this many tokens first."""
REQUEST_PARAM_MAX_TOKENS = "max_tokens"
"""Optional per-request Triton parameter: the most tokens of each sequence the model reads, at most the
model's `max_length` (vLLM's truncate_prompt_tokens)."""
REQUEST_PARAM_MAX_CHUNKS = "max_chunks"
"""Optional per-request Triton parameter: score a document longer than its window in up to this many
overlapping token windows, the document's score being the best window's (Cohere's max_chunks_per_doc)."""
REQUEST_PARAM_KEEP_END = "keep_end"
"""Optional per-request Triton parameter: true to cut the start of a text instead of its end
(TEI's truncation_direction "left", vLLM's truncation_side "left")."""
REQUEST_PARAM_SENT_AT_NS = "sent_at_ns"
"""Optional per-request Triton parameter: the sender's wall clock (ns) when it sent the request,
so a model's batch log can tell how long the request waited (same host clock)."""

PARAM_SCORER = "scorer"
PARAM_WEIGHTS_PATH = "weights_path"
PARAM_DTYPE = "dtype"
PARAM_MAX_LENGTH = "max_length"
PARAM_MAX_BATCH_TOKENS = "max_batch_tokens"
PARAM_CHUNK_TOKENS = "chunk_tokens"
"""The length (tokens of one sequence) of the windows a chunked document is scored in; default `max_length`.
A bi-encoder's mean-pooled window dilutes a relevant passage in what surrounds it, so one trained on short
texts does better with windows of its training length."""
PARAM_WEIGHTS_HINT = "weights_hint"
"""What to run when the weights folder is missing; the catalog's hint for the models this project ships."""
PARAM_QUANTIZATION = "quantization"
"""`none` (the default) or `fp8`: E4M3 weights and per-token activations for the linear layers."""
PARAM_BATCH_LOG = "batch_log"
"""`info` (default), `verbose` (only with tritonserver --log-verbose) or `off`: the per-batch JSON log line."""
PARAM_CUDA_GRAPHS = "cuda_graphs"
"""`true` or `false` (the default): replay each micro-batch shape from a captured CUDA graph (GPU only)."""
PARAM_PACKED = "packed"
"""`auto` (the default), `true` or `false`, cross_encoder and qwen3_reranker only: padding-free batches.
`auto` turns them on where FlashAttention's variable-length kernel runs (CUDA, float16/bfloat16)."""
PARAM_GPU_MEMORY_BUDGET_MIB = "gpu_memory_budget_mib"
"""GPU only: the most device memory (MiB) one instance's allocator may hold. At load the engine checks
its heaviest batch against it and shrinks `max_batch_tokens` until that fits, or fails the load."""
PARAM_PACKED_GRAPHS = "packed_graphs"
"""`true` or `false` (the default), cross_encoder only, GPU only, with packed batches: packed micro-batches
(more than the 16 pairs `cuda_graphs` replays padded) replay CUDA graphs captured at load per token-count
bucket (`rerank_engine.cuda_graphs.PackedGraphs`), one launch instead of ~130."""
PARAM_FUSIONS = "fusions"
"""cross_encoder only, packed batches: a comma-separated subset of `embed_norm`, `add_norm`, `gelu_epilogue`
(`rerank_engine.packed.PackedXLMRoberta`), `all`, or `none` (the default). `gelu_epilogue` computes GELU's
tanh approximation where the model's is exact."""
PARAM_COMPILE = "compile"
"""`true` or `false` (the default), cross_encoder only, packed batches: `torch.compile` of each layer's work past
attention (dynamic token count). The compilation runs at load (tens of seconds, less from inductor's cache)."""
PARAM_PIPELINE_PAIRS = "pipeline_pairs"
"""`0` (the default: off) or a number of pairs, cross_encoder only, packed batches: a call's pairs are tokenized
and launched that many at a time, all before any result is read, so the host tokenizes the next piece while the
GPU runs the last."""
PARAM_PREFIX_REUSE = "prefix_reuse"
"""`true` (the default) or `false`, qwen3_reranker only: run the prompt head shared by a query's documents once."""

DEFAULT_MAX_LENGTH = 512
"""`max_length` when config.pbtxt leaves it out."""

SCORER_CROSS_ENCODER = "cross_encoder"
SCORER_QWEN3 = "qwen3_reranker"
SCORER_BI_ENCODER = "bi_encoder"

MODELS_DIR_ENV = "RERANKER_MODELS_DIR"
"""Where relative `weights_path` values of the form `models/<folder>` are looked up."""
