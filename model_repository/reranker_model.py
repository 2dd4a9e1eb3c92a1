"""Triton python-backend model shared by every reranker in this repository:
each `<model>/1/model.py` is a link to this file, and `config.pbtxt` says
which scorer, weights, dtype and length limits it runs.

It only adapts Triton to the scoring engine: it reads each request's tensors,
makes one engine call for the whole dynamic batch, and returns one response
per request, in order. A malformed request gets its own INVALID_ARG error and
the rest of the batch is still scored.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from rerank_engine import contract
from rerank_engine.engine import EngineConfig, load_scorer, resolve_device
from rerank_engine.inputs import InvalidRequest, decode_pairs, document_cap

INPUTS = (contract.INPUT_QUERY, contract.INPUT_DOCUMENT, contract.INPUT_INSTRUCTION)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        self.config = EngineConfig.from_parameters(params)
        device = resolve_device(args["model_instance_kind"], args["model_instance_device_id"])
        # A missing weights folder raises here, and Triton fails the load with its message.
        self.scorer = load_scorer(self.config, device)
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.config.scorer} on {device}")

    def execute(self, requests):
        responses = [None] * len(requests)
        pairs, spans = [], []
        for index, request in enumerate(requests):
            try:
                tensors = (pb_utils.get_input_tensor_by_name(request, name) for name in INPUTS)
                arrays = [None if t is None else t.as_numpy() for t in tensors]
                rows = decode_pairs(*arrays, max_document_tokens=document_cap(request.parameters()))
            except InvalidRequest as exc:
                responses[index] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            spans.append((index, len(pairs), len(pairs) + len(rows)))
            pairs.extend(rows)
        started = time.perf_counter()
        try:
            scores = self.scorer.score(pairs)
        except Exception as exc:  # e.g. out of memory: fail this batch, keep the model serving
            pb_utils.Logger.log_error(f"scoring failed for {len(pairs)} pairs: {exc!r}")
            for index, _, _ in spans:
                responses[index] = _error(f"scoring failed: {exc}", pb_utils.TritonError.INTERNAL)
            return responses
        compute_us = np.float32((time.perf_counter() - started) * 1e6)
        outputs = {
            contract.OUTPUT_SCORE: scores.score,
            contract.OUTPUT_RAW_SCORE: scores.raw_score,
            contract.OUTPUT_NUM_TOKENS: scores.num_tokens,
            contract.OUTPUT_INPUT_TOKENS: scores.input_tokens,
            contract.OUTPUT_TRUNCATED: scores.truncated,
        }
        for index, start, end in spans:
            tensors = [pb_utils.Tensor(name, values[start:end].reshape(-1, 1)) for name, values in outputs.items()]
            tensors.append(pb_utils.Tensor(contract.OUTPUT_COMPUTE_US, np.full((end - start, 1), compute_us)))
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.scorer = None


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
