"""The service's own checks, against the in-memory Triton: a model's non-finite
score is a clear error, never a NaN in a sorted result."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.errors import STATUS, ErrorKind, GatewayError
from gateway.metrics import RequestRecord
from gateway.api.protocol import RerankRequest
from gateway.serving.service import RerankService
from tests.gateway.fake_backend import FakeTriton
from tests.gateway.test_model_manager import started

pytestmark = pytest.mark.anyio


async def test_a_nan_score_is_an_error_naming_the_model_and_the_pair():
    triton = FakeTriton("a")
    models = await started(triton)
    service = RerankService(triton, models, models.settings)
    real_score = triton.score

    async def broken(model, queries, documents, *args, **kwargs):
        outputs = await real_score(model, queries, documents, *args, **kwargs)
        outputs.score[1] = np.nan
        return outputs

    triton.score = broken
    with pytest.raises(GatewayError) as failed:
        await service.rerank(RerankRequest(query="q", documents=["x", "y", "z"]), RequestRecord())
    assert failed.value.kind is ErrorKind.INVALID_MODEL_OUTPUT and STATUS[failed.value.kind] == 500
    assert "a returned a non-finite score (nan) for pair 1 (1 of 3)" in failed.value.message
