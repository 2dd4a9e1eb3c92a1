"""`reranker`: the command line.

  reranker serve     Triton and the gateway together; Ctrl-C stops both
  reranker triton    Triton alone, on the model repository
  reranker gateway   the gateway alone, in front of a running Triton
  reranker weights   put a model's weights into the models folder
  reranker rerank    rerank a file of documents against a query, through a running gateway
  reranker eval      nDCG@10 / MRR@10 of a running gateway on a labelled JSONL file
  reranker report    markdown and PNG plots of a locust run or a bench.rerank_bench run

Every flag has an environment variable (shown in --help); flags win. The
client modes (rerank, eval) report a failure - the gateway down, a model not
loaded, a file missing - as one line on stderr and exit 1, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gateway.settings import GatewaySettings
from launcher.settings import TritonSettings
from rerank_engine import catalog

log = logging.getLogger("reranker")


def _flag(parser: argparse.ArgumentParser, settings_cls, field: str, *names: str, **kwargs) -> None:
    info = settings_cls.model_fields[field]
    env = f"RERANKER_{field.upper()}"
    parser.add_argument(*names, dest=field, default=None, help=f"{info.description} [env {env}]", **kwargs)


def _triton_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, TritonSettings, "model_repository", "--model-repository", type=Path)
    _flag(parser, TritonSettings, "models_dir", "--models-dir", type=Path)
    _flag(parser, TritonSettings, "triton_http_port", "--triton-http-port", type=int)
    _flag(parser, TritonSettings, "triton_grpc_port", "--triton-grpc-port", type=int)
    _flag(parser, TritonSettings, "triton_metrics_port", "--triton-metrics-port", type=int)
    _flag(parser, TritonSettings, "tritonserver", "--tritonserver", type=Path)
    _flag(parser, TritonSettings, "triton_bind_address", "--triton-bind-address")
    _flag(parser, TritonSettings, "triton_config_name", "--triton-config-name")
    _flag(parser, TritonSettings, "triton_trace_endpoint", "--triton-trace-endpoint")


def _gateway_flags(parser: argparse.ArgumentParser, with_triton_url: bool) -> None:
    _flag(parser, GatewaySettings, "host", "--host")
    _flag(parser, GatewaySettings, "port", "--port", type=int)
    _flag(parser, GatewaySettings, "workers", "--workers", type=int)
    _flag(parser, GatewaySettings, "default_model", "--model")
    _flag(parser, GatewaySettings, "api_keys_file", "--api-keys-file", type=Path)
    _flag(parser, GatewaySettings, "otlp_endpoint", "--otlp-endpoint")
    if with_triton_url:
        _flag(parser, GatewaySettings, "triton_url", "--triton-url")


def _given(args: argparse.Namespace, settings_cls) -> dict:
    return {k: v for k, v in vars(args).items() if k in settings_cls.model_fields and v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reranker", description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    serve = modes.add_parser("serve", help="start Triton and the gateway together")
    _triton_flags(serve)
    _gateway_flags(serve, with_triton_url=False)
    _triton_flags(modes.add_parser("triton", help="start Triton alone"))
    _gateway_flags(modes.add_parser("gateway", help="start the gateway alone"), with_triton_url=True)
    weights = modes.add_parser("weights", help="put a model's weights into the models folder")
    weights.add_argument("name", help=f"{catalog.alias_list()}, or a Triton model name")
    weights.add_argument("--source", choices=("huggingface", "modelscope"), default="huggingface")
    _flag(weights, TritonSettings, "models_dir", "--models-dir", type=Path)
    _flag(weights, TritonSettings, "model_repository", "--model-repository", type=Path)
    rerank = modes.add_parser("rerank", help="rerank documents (one per line) against a query")
    rerank.add_argument("--query", required=True)
    rerank.add_argument(
        "--documents-file", type=Path, required=True,
        help="one document per line; blank lines are skipped, and each result's index is still its 0-based line "
        "number in the file (line = index + 1)",
    )
    rerank.add_argument("--top-n", type=int)
    evaluate = modes.add_parser("eval", help="ranking quality of the running service on labelled data")
    evaluate.add_argument("--data", type=Path, required=True, help="JSONL of {query, documents, labels}")
    load_report = modes.add_parser("report", help="markdown and PNG plots of a locust or rerank_bench run")
    load_report.add_argument(
        "run", type=Path, help="locust CSV prefix (or its _stats.csv), a rerank_bench JSON, or a folder with one run"
    )
    load_report.add_argument("--out", type=Path, help="folder for the report (default: beside the run)")
    for client_mode in (rerank, evaluate):
        client_mode.add_argument("--url", default="http://localhost:8000", help="the gateway")
        client_mode.add_argument("--model", dest="model", help="a loaded model; default: the active one")
        client_mode.add_argument("--api-key", default=os.environ.get("RERANKER_API_KEY"),
                                 help="API key with the score scope [env RERANKER_API_KEY]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The client modes print JSON on stdout; only the servers narrate what they do.
    level = logging.WARNING if args.mode in ("rerank", "eval", "report") else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.mode == "weights":
        from launcher.weights import fetch_weights

        settings = TritonSettings(**_given(args, TritonSettings))
        folder = fetch_weights(args.name, settings.models_dir, settings.model_repository, args.source)
        print(folder)
        return 0
    if args.mode in ("rerank", "eval"):
        return _client_mode(args)
    if args.mode == "report":
        from launcher.report import run

        return run(args.run, args.out)
    if args.mode == "gateway":
        return _run_gateway(GatewaySettings(**_given(args, GatewaySettings)))
    triton = TritonSettings(**_given(args, TritonSettings))
    if args.mode == "triton":
        command, env = _triton_invocation(triton)
        os.execve(command[0], command, env)  # tritonserver takes over this process and its signals
    host = "127.0.0.1" if triton.triton_bind_address in ("0.0.0.0", "::") else triton.triton_bind_address
    gateway = GatewaySettings(**_given(args, GatewaySettings), triton_url=f"{host}:{triton.triton_grpc_port}")
    return _serve(triton, gateway)


def _client_mode(args: argparse.Namespace) -> int:
    import json

    import httpx

    from client import RerankerClient, RerankerError
    from client.evaluation import evaluate

    try:
        with RerankerClient(args.url, timeout=600, api_key=args.api_key) as client:
            if args.mode == "eval":
                result = evaluate(client, args.data, model=args.model).as_dict()
            else:
                result = _rerank_file(client, args)
    except RerankerError as exc:  # the gateway's own answer: no model loaded, unknown model, bad input
        return _fail(f"the gateway answered {exc.status} {exc.error_type}: {exc.message}")
    except httpx.TransportError as exc:
        return _fail(f"cannot reach the gateway at {args.url} ({type(exc).__name__}: {exc or 'no answer'}); "
                     "is 'reranker serve' running, and is --url right?")
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}")
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        path = getattr(args, "documents_file", None) or args.data
        return _fail(f"cannot use {path}: {type(exc).__name__}: {exc}")
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def _rerank_file(client, args: argparse.Namespace) -> dict:
    """Rerank the file's non-blank lines; each result's `index` is its 0-based line number, `line` the 1-based."""
    lines = args.documents_file.read_text(encoding="utf-8").splitlines()
    numbers = [number for number, line in enumerate(lines) if line.strip()]
    if not numbers:
        raise ValueError("the file has no non-blank line to rerank")
    result = client.rerank_documents(
        args.query, [lines[n] for n in numbers], model=args.model, top_n=args.top_n, return_documents=True
    )
    for item in result["results"]:
        item["index"] = numbers[item["index"]]
        item["line"] = item["index"] + 1
    return result


def _fail(message: str) -> int:
    print(f"reranker: {message}", file=sys.stderr)
    return 1


def _triton_invocation(settings: TritonSettings) -> tuple[list[str], dict[str, str]]:
    from launcher.tritonserver import (TritonOptions, find_tritonserver, resolve_config_name, triton_command,
                                       triton_environment)

    install = find_tritonserver(settings.tritonserver)
    options = TritonOptions(
        model_repository=settings.model_repository.resolve(),
        models_dir=settings.models_dir.resolve(),
        http_port=settings.triton_http_port,
        grpc_port=settings.triton_grpc_port,
        metrics_port=settings.triton_metrics_port,
        log_verbose=settings.triton_log_verbose,
        bind_address=settings.triton_bind_address,
        config_name=resolve_config_name(settings.triton_config_name),
        trace_endpoint=settings.triton_trace_endpoint or None,
        trace_rate=settings.triton_trace_rate,
    )
    if not any(options.model_repository.glob("*/config.pbtxt")):
        raise SystemExit(f"{options.model_repository} holds no Triton models (set --model-repository)")
    log.info("tritonserver %s, repository %s, models %s, listening on %s, model configs: %s, traces: %s",
             install.binary, options.model_repository, options.models_dir, options.bind_address,
             options.config_name or "config.pbtxt", options.trace_endpoint or "off")
    return triton_command(install, options), triton_environment(install, options, dict(os.environ))


def _run_gateway(settings: GatewaySettings) -> int:
    if settings.worker_count > 1:
        from launcher import workers

        return workers.run(settings)
    import uvicorn

    from gateway.app import create_app

    # access_log=False: the gateway writes its own access line (gateway.access), with the trace id and the
    # key's name, and never the key.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False)
    return 0


def _serve(triton: TritonSettings, gateway: GatewaySettings) -> int:
    from launcher.process import Supervised, wait_until_live

    command, env = _triton_invocation(triton)
    # If tritonserver dies, it is started again; the gateway then reloads its models.
    server = Supervised(command, env)
    try:
        host = gateway.triton_url.rpartition(":")[0]
        wait_until_live(f"http://{host}:{triton.triton_http_port}/v2/health/live", server.process,
                        triton.triton_startup_timeout_s)
        return _run_gateway(gateway)
    finally:
        log.info("stopping tritonserver")
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
