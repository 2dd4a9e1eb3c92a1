"""The FastAPI gateway: JSON in, Triton requests out, model switching through
Triton's repository API. It never imports torch."""
