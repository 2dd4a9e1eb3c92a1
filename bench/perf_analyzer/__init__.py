"""perf_analyzer against Triton directly: input data for every model of
model_repository/ (generate.py builds data/), and run.sh to drive it."""
