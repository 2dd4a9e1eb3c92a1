"""Triton python-backend model shared by every reranker in this repository:
each `<model>/1/model.py` is a link to this file, and `config.pbtxt` says
which scorer, weights, dtype and length limits it runs.

It only adapts Triton to the scoring engine: it reads each request's tensors,
makes one engine call for the whole dynamic batch, and returns one response
per request, in order. A malformed request gets its own INVALID_ARG error and
the rest of the batch is still scored.
"""

import json

import triton_python_backend_utils as pb_utils

from rerank_engine import contract
from rerank_engine.engine import EngineConfig, load_scorer, resolve_device
from rerank_engine.inputs import InvalidRequest, decode_pairs


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        self.config = EngineConfig.from_parameters(params)
        device = resolve_device(args["model_instance_kind"], args["model_instance_device_id"])
        # A missing weights folder raises here, and Triton fails the load with its message.
        self.scorer = load_scorer(self.config, device)
        self.logger = pb_utils.Logger
        self.logger.log_info(f"{args['model_name']}: {self.config.scorer} on {device}")

    def execute(self, requests):
        responses = [None] * len(requests)
        pairs, spans = [], []
        for index, request in enumerate(requests):
            try:
                rows = decode_pairs(*(self._input(request, name) for name in self._INPUTS))
            except InvalidRequest as exc:
                responses[index] = self._error(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            spans.append((index, len(pairs), len(pairs) + len(rows)))
            pairs.extend(rows)
        try:
            scores = self.scorer.score(pairs)
        except Exception as exc:  # e.g. out of memory: fail this batch, keep the model serving
            self.logger.log_error(f"scoring failed for {len(pairs)} pairs: {exc!r}")
            for index, _, _ in spans:
                responses[index] = self._error(f"scoring failed: {exc}", pb_utils.TritonError.INTERNAL)
            return responses
        for index, start, end in spans:
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(contract.OUTPUT_SCORE, scores.score[start:end].reshape(-1, 1)),
                    pb_utils.Tensor(contract.OUTPUT_RAW_SCORE, scores.raw_score[start:end].reshape(-1, 1)),
                    pb_utils.Tensor(contract.OUTPUT_NUM_TOKENS, scores.num_tokens[start:end].reshape(-1, 1)),
                    pb_utils.Tensor(contract.OUTPUT_TRUNCATED, scores.truncated[start:end].reshape(-1, 1)),
                ]
            )
        return responses

    def finalize(self):
        self.scorer = None

    _INPUTS = (contract.INPUT_QUERY, contract.INPUT_DOCUMENT, contract.INPUT_INSTRUCTION)

    @staticmethod
    def _input(request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    @staticmethod
    def _error(message, code):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
