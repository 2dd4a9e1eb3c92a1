"""Long documents scored in overlapping token windows (Cohere's max_chunks_per_doc),
and the per-request cuts TEI and vLLM clients ask for: a sequence limit under the
model's (truncate_prompt_tokens) and cuts from the start (truncation_direction
"left"). References: Hugging Face's own tokenizer truncation, and each window run
through the Hugging Face model by hand, from the model cards' formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from rerank_engine.pairs import Pair
from rerank_engine.tokens import windows
from tests.engine.samples import LONG, MEDIUM, PANDA, PARIS

QUERY = "where do giant pandas live?"
# The relevant passage sits at the end of a long text about something else.
NEEDLE_DOCUMENT = LONG + PANDA


def test_windows_overlap_by_a_quarter_and_end_at_the_end():
    assert windows(10, 16, 5) == [(0, 10)]  # fits: one window, the whole text
    # size 8: stride 6 (a quarter, 2 tokens, shared); the last window ends at 20, so it starts at 12.
    assert windows(20, 8, 9) == [(0, 8), (6, 14), (12, 20)]
    assert windows(20, 8, 2) == [(0, 8), (6, 14)]  # the first ones; 6 tokens at the end are left out
    assert windows(20, 8, 2, from_end=True) == [(6, 14), (12, 20)]
    assert windows(0, 8, 3) == [(0, 0)]
    spans = windows(5000, 254, 100)
    assert all(end - start == 254 for start, end in spans) and spans[-1][1] == 5000
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # no gap between neighbours


def _hand_windows(ids: list[int], size: int) -> list[list[int]]:
    """The windowing rule written out: a quarter shared, the last window flush with the end."""
    stride = size - size // 4
    starts = list(range(0, len(ids) - size, stride)) + [len(ids) - size]
    return [ids[start : start + size] for start in starts]


def test_a_cross_encoder_scores_a_long_document_by_its_best_window(bge, bge_dir):
    tokenizer = AutoTokenizer.from_pretrained(bge_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bge_dir).eval()
    query = tokenizer(QUERY, add_special_tokens=False).input_ids
    document = tokenizer(NEEDLE_DOCUMENT, add_special_tokens=False).input_ids
    size = 512 - 4 - len(query)  # <s> query </s></s> window </s>
    reference = []
    with torch.inference_mode():
        for window in _hand_windows(document, size):
            cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
            ids = [cls, *query, sep, sep, *window, sep]
            reference.append(torch.sigmoid(model(input_ids=torch.tensor([ids])).logits[0, 0]).item())
    chunked = bge.score([Pair(QUERY, NEEDLE_DOCUMENT, max_chunks=50), Pair(QUERY, PANDA, max_chunks=50)])
    assert len(reference) > 1 and chunked.chunks.tolist() == [len(reference), 1]
    assert chunked.score[0] == pytest.approx(max(reference), abs=1e-5)
    assert chunked.num_tokens[0] == len(reference) * 512  # every window is full, and every one is counted
    assert not chunked.truncated[0]
    single = bge.score([Pair(QUERY, PANDA)])
    assert chunked.score[1] == pytest.approx(single.score[0], abs=1e-6)  # a short document is one window


def test_windows_past_max_chunks_are_left_out_and_reported(bge, bge_dir):
    tokenizer = AutoTokenizer.from_pretrained(bge_dir)
    document = len(tokenizer(NEEDLE_DOCUMENT, add_special_tokens=False).input_ids)
    size = 512 - 4 - len(tokenizer(QUERY, add_special_tokens=False).input_ids)
    whole = bge.score([Pair(QUERY, NEEDLE_DOCUMENT, max_chunks=50)])
    first_two = bge.score([Pair(QUERY, NEEDLE_DOCUMENT, max_chunks=2)])
    assert first_two.chunks[0] == 2 and first_two.truncated[0] and not whole.truncated[0]
    assert first_two.num_tokens[0] == 2 * 512
    # What was left unscored: the tokens after the second window (which starts three quarters of a window in).
    unscored = document - (size + size - size // 4)
    assert unscored > 0 and first_two.input_tokens[0] - first_two.num_tokens[0] == unscored
    last_two = bge.score([Pair(QUERY, NEEDLE_DOCUMENT, max_chunks=2, keep_end=True)])
    # The best of a subset of the windows is never above the best of all of them.
    assert max(first_two.score[0], last_two.score[0]) <= whole.score[0] + 1e-6
    assert last_two.score[0] != pytest.approx(first_two.score[0], abs=1e-6)  # other windows were scored


def test_a_bi_encoder_chunk_is_embedded_as_sentence_transformers_does(minilm, minilm_dir):
    # The real all-MiniLM-L6-v2: mean-pooled, normalised embeddings of each window; cosine with the query's.
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()

    def embed(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([[tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]]))
        return torch.nn.functional.normalize(hidden.last_hidden_state[0].mean(dim=0), dim=0)

    document = tokenizer(NEEDLE_DOCUMENT, add_special_tokens=False).input_ids
    query = embed(tokenizer(QUERY, add_special_tokens=False).input_ids)
    reference = [float(query @ embed(window)) for window in _hand_windows(document, 254)]
    chunked = minilm.score([Pair(QUERY, NEEDLE_DOCUMENT, max_chunks=50)])
    assert chunked.chunks[0] == len(reference) > 1
    assert chunked.score[0] == pytest.approx(max(reference), abs=1e-5)
    assert chunked.score[0] > minilm.score([Pair(QUERY, NEEDLE_DOCUMENT)]).score[0]  # the panda passage is found


def test_chunk_tokens_sets_the_window_length(make_scorer, minilm_dir):
    short_windows = make_scorer("bi_encoder", minilm_dir, max_length=256, chunk_tokens=128)
    scores = short_windows.score([Pair(QUERY, NEEDLE_DOCUMENT, max_chunks=50)])
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    document_tokens = len(tokenizer(NEEDLE_DOCUMENT, add_special_tokens=False).input_ids)
    query_tokens = len(tokenizer(QUERY).input_ids)
    assert scores.chunks[0] == len(windows(document_tokens, 126, 50))  # 128 tokens less [CLS] and [SEP]
    # Each window's pair counts its 128 tokens and the query's sequence, as an unchunked pair does.
    assert scores.num_tokens[0] == scores.chunks[0] * (128 + query_tokens)


@pytest.mark.parametrize("keep_end", [False, True])
@pytest.mark.parametrize("max_tokens", [None, 64])
def test_cuts_equal_hugging_faces_truncation(bge, bge_dir, keep_end, max_tokens):
    # TEI's truncation_direction and vLLM's truncate_prompt_tokens are the tokenizer's own options.
    tokenizer = AutoTokenizer.from_pretrained(bge_dir, truncation_side="left" if keep_end else "right")
    for query, document in [(QUERY, LONG), (MEDIUM, LONG), (LONG, QUERY)]:
        expected = tokenizer(query, document, truncation="longest_first", max_length=max_tokens or 512).input_ids
        pair = Pair(query, document, max_tokens=max_tokens, keep_end=keep_end)
        assert bge.encode([pair]).sequences[0] == expected


def test_a_bi_encoder_cuts_each_text_at_the_request_limit(minilm, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir, truncation_side="left")
    encoded = minilm.encode([Pair(PARIS * 3, LONG, max_tokens=20, keep_end=True)])
    expected = [tokenizer(text, truncation=True, max_length=20).input_ids for text in (PARIS * 3, LONG)]
    assert [encoded.sequences[row] for row in encoded.rows[0]] == expected
    assert encoded.num_tokens[0] == 40 and encoded.truncated[0]


def test_a_limit_too_small_for_the_template_is_refused_before_batching(bge, minilm, qwen):
    with pytest.raises(ValueError, match="at least 6 tokens"):  # 4 special tokens, one of each text
        bge.check([Pair(QUERY, PANDA, max_tokens=5)])
    bge.check([Pair(QUERY, PANDA, max_tokens=6)])
    with pytest.raises(ValueError, match="at least 3 tokens"):
        minilm.check([Pair(QUERY, PANDA, max_tokens=2)])
    with pytest.raises(ValueError, match="Qwen3 prompt with this instruction needs at least"):
        qwen.check([Pair(QUERY, PANDA, max_tokens=40)])
    qwen.check([Pair(QUERY, PANDA, max_tokens=200)])


def test_chunked_and_plain_pairs_share_one_batch(bge):
    pairs = [Pair(QUERY, NEEDLE_DOCUMENT, max_chunks=50), Pair(QUERY, LONG), Pair(QUERY, PANDA, max_tokens=32)]
    together = bge.score(pairs)
    alone = [bge.score([pair]) for pair in pairs]
    assert together.chunks.tolist() == [a.chunks[0] for a in alone]
    assert together.score == pytest.approx(np.array([a.score[0] for a in alone]), abs=1e-5)
    assert together.truncated.tolist() == [False, True, False]
