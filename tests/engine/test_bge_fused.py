"""bge-reranker-base's faster packed paths against the model card's recipe:
the fused kernels (`fusions`), the tokenize/launch pipeline (`pipeline_pairs`),
the token buckets the packed CUDA graphs pad to, `torch.compile` of the layers,
and their config parameters. The reference is transformers' own
XLMRobertaForSequenceClassification on the tiny float32 weights, scored as the
model card does (tokenizer pairs, logits, sigmoid). On the CPU the fused
kernels run their PyTorch fallbacks in-process and the Triton kernels
themselves in a subprocess under Triton's interpreter. Speed, GPU memory and
the float16 parity on the real size are `bench.kernel_suite`'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rerank_engine.cuda_graphs import packed_buckets
from rerank_engine.engine import EngineConfig, parse_fusions
from rerank_engine.packed import BGE_FUSIONS
from rerank_engine.packing import Packed, pack
from rerank_engine.scoring import Pair
from tests.engine.samples import LONG, MEDIUM, PANDA
from tests.stack import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored when `padding`=`True`")

PAIRS = [Pair("what do pandas eat?", d) for d in (PANDA, "bamboo", LONG, MEDIUM, "x", PANDA[:40])] + [
    Pair("capital of France", d) for d in ("Paris is the capital of France.", LONG[:300], "Lyon", MEDIUM)]


def recipe_scores(folder, pairs, hidden_act: str | None = None) -> np.ndarray:
    """The model card's way: tokenizer(query, document) pairs, the classifier's logit, sigmoid."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    if hidden_act is not None:
        config.hidden_act = hidden_act
    model = AutoModelForSequenceClassification.from_pretrained(folder, config=config).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer([p.query for p in pairs], [p.document for p in pairs], padding=True, truncation=True,
                       max_length=512, return_tensors="pt")
    with torch.no_grad():
        return torch.sigmoid(model(**inputs).logits[:, 0]).numpy()


@pytest.fixture(scope="module")
def exact(bge_dir):
    return recipe_scores(bge_dir, PAIRS)


@pytest.mark.parametrize("fusions", [("embed_norm",), ("add_norm",), ("embed_norm", "add_norm")])
def test_fused_norms_score_like_the_model(make_scorer, bge_dir, exact, fusions):
    scorer = make_scorer("cross_encoder", bge_dir, max_length=512, packed="true", fusions=fusions)
    assert scorer.packed.fusions == frozenset(fusions)
    np.testing.assert_allclose(scorer.score(PAIRS).score, exact, rtol=0, atol=1e-5)


def test_gelu_epilogue_scores_like_the_model_with_tanh_gelu(make_scorer, bge_dir, exact):
    """cuBLASLt's GELU epilogue is GELU's tanh approximation: the fused path equals the model with
    `gelu_pytorch_tanh`, not with its own exact GELU (the float16 gap on the real size: bench.kernel_suite)."""
    scorer = make_scorer("cross_encoder", bge_dir, max_length=512, packed="true", fusions=BGE_FUSIONS)
    got = scorer.score(PAIRS).score
    np.testing.assert_allclose(got, recipe_scores(bge_dir, PAIRS, hidden_act="gelu_pytorch_tanh"), rtol=0, atol=1e-5)
    gap = float(np.abs(got - exact).max())
    assert 0 < gap < 1e-3, f"tanh GELU moved the tiny model's scores by {gap:.2e}"


def test_pipeline_scores_equal_one_call(make_scorer, bge_dir, exact):
    whole = make_scorer("cross_encoder", bge_dir, max_length=512, packed="true")
    piped = make_scorer("cross_encoder", bge_dir, max_length=512, packed="true", pipeline_pairs=3)
    assert piped.pipelined(len(PAIRS)) and not piped.pipelined(3) and not whole.pipelined(len(PAIRS))
    want, got = whole.score(PAIRS), piped.score(PAIRS)
    np.testing.assert_allclose(got.score, exact, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.score, want.score, rtol=0, atol=1e-6)
    for field in ("num_tokens", "input_tokens", "truncated"):
        assert getattr(got, field).tolist() == getattr(want, field).tolist(), field
    assert got.truncated.any()
    assert got.run.micro_batches == -(-len(PAIRS) // 3) and want.run.micro_batches == 1
    assert got.run.tokens == want.run.tokens
    # Chunked requests keep their own path: every window of a pair scored in one call.
    chunked = [p._replace(max_chunks=3) for p in PAIRS[:4]]
    np.testing.assert_allclose(piped.score(chunked).score, whole.score(chunked).score, rtol=0, atol=1e-6)


def test_tokens_no_span_covers_change_no_row(make_scorer, bge_dir):
    """What a packed CUDA graph relies on: a bucket's tokens past the batch (stale ids, no span) and empty
    span slots change no row's score, whatever those tokens hold."""
    scorer = make_scorer("cross_encoder", bge_dir, max_length=512, packed="true", fusions=BGE_FUSIONS)
    sequences = scorer.encode(PAIRS).sequences
    batch = pack([], [(None, s) for s in sequences], torch.device("cpu"), scorer.position_start)
    want = scorer.packed(batch)
    extra, slots = 37, 5
    stale = torch.randint(0, 200, (extra,))
    offsets = [start for start, _ in batch.spans_q] + [batch.tokens] * (slots + 1)
    padded = Packed(
        ids=torch.cat([batch.ids, stale]), positions=torch.cat([batch.positions, stale % 60 + 2]),
        cu_q=torch.tensor(offsets, dtype=torch.int32), cu_k=torch.tensor(offsets, dtype=torch.int32),
        max_q=512, max_k=512, kv_index=None, first=torch.cat([batch.first, torch.zeros(slots, dtype=torch.long)]),
        last=torch.cat([batch.last, torch.zeros(slots, dtype=torch.long)]),
        spans_q=batch.spans_q + [(batch.tokens, 0)] * slots, spans_k=batch.spans_k + [(batch.tokens, 0)] * slots,
    )
    got = scorer.packed(padded)
    assert got.shape == (len(sequences) + slots,)
    torch.testing.assert_close(got[: len(sequences)], want, rtol=0, atol=1e-6)


def test_packed_buckets_cover_every_token_count_with_bounded_waste():
    buckets = packed_buckets(32768)
    assert buckets[0] == 512 and buckets[-1] == 32768 and buckets == sorted(set(buckets))
    assert all(b - a <= 2048 for a, b in zip(buckets, buckets[1:]))
    # Past 16,384 tokens (the issue-6 micro-batches hold ~18k) a batch pads by under an eighth.
    assert all((b - a) / a <= 1 / 8 for a, b in zip(buckets, buckets[1:]) if a >= 16384)
    assert packed_buckets(20000)[-1] >= 20000 and packed_buckets(600)[-1] == 1024


@pytest.mark.slow
def test_fused_kernels_in_the_packed_forward_under_the_interpreter(bge_dir, exact):
    """The Triton kernels themselves (not their fallbacks) inside the packed forward, on the CPU."""
    code = (
        "import json, sys, torch\n"
        "from rerank_engine.engine import EngineConfig, load_scorer\n"
        "from rerank_engine import kernels\n"
        "from tests.engine.test_bge_fused import PAIRS\n"
        "assert kernels.available(torch.device('cpu'), fp8=False)\n"
        "config = EngineConfig(scorer='cross_encoder', weights_path=sys.argv[1], max_length=512, packed='true',\n"
        "                      fusions=('embed_norm', 'add_norm'))\n"
        "print(json.dumps(load_scorer(config, torch.device('cpu')).score(PAIRS).score.tolist()))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(bge_dir)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 0, run.stderr[-4000:]
    np.testing.assert_allclose(json.loads(run.stdout.strip().splitlines()[-1]), exact, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compiled_layers_score_like_the_model(make_scorer, bge_dir, exact):
    pytest.importorskip("torch._inductor")
    scorer = make_scorer("cross_encoder", bge_dir, max_length=512, packed="true", compile=True,
                         fusions=("embed_norm",))
    np.testing.assert_allclose(scorer.score(PAIRS).score, exact, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scorer.score(PAIRS[:5]).score, exact[:5], rtol=0, atol=1e-5)  # another token count


def test_the_fast_path_parameters():
    base = {"scorer": "cross_encoder", "weights_path": "models/x"}
    config = EngineConfig.from_parameters(base)
    assert (config.fusions, config.packed_graphs, config.compile, config.pipeline_pairs) == ((), False, False, 0)
    config = EngineConfig.from_parameters({**base, "fusions": "add_norm,embed_norm", "packed_graphs": "true",
                                           "pipeline_pairs": "48"})
    assert config.fusions == ("embed_norm", "add_norm") and config.packed_graphs and config.pipeline_pairs == 48
    assert EngineConfig.from_parameters({**base, "fusions": "all"}).fusions == BGE_FUSIONS
    assert parse_fusions("none") == ()
    with pytest.raises(ValueError, match="subset of embed_norm, add_norm, gelu_epilogue"):
        EngineConfig.from_parameters({**base, "fusions": "add_norm,softmax"})
    with pytest.raises(ValueError, match="choose one"):
        EngineConfig.from_parameters({**base, "fusions": "add_norm", "compile": "true"})
    with pytest.raises(ValueError, match="'pipeline_pairs' must be 0 or a positive integer"):
        EngineConfig.from_parameters({**base, "pipeline_pairs": "-3"})
    for key, value in (("fusions", "all"), ("packed_graphs", "true"), ("compile", "false"), ("pipeline_pairs", "8")):
        with pytest.raises(ValueError, match=f"'{key}' applies to cross_encoder only"):
            EngineConfig.from_parameters({"scorer": "qwen3_reranker", "weights_path": "models/x", key: value})
