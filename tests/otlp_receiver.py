"""A real OTLP/HTTP trace receiver for the tests: a process that accepts
`POST /v1/traces` (protobuf, gzip or not, as the OpenTelemetry exporters and
Triton send it, or OTLP/JSON), decodes each `ExportTraceServiceRequest` with the protocol's
own messages (opentelemetry-proto), and appends every span as a JSON line to
a file. No collector installs offline here (none is packaged on PyPI, npm or
Debian), so this stands in for one: what it decodes is what a collector would.

  python -m tests.otlp_receiver --port 4318 --out spans.jsonl
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(value: AnyValue):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(value)


def decode(body: bytes, content_type: str = "application/x-protobuf") -> list[dict]:
    """The spans of one export request, flattened with their resource's service.name."""
    if content_type.startswith("application/json"):
        request = _from_json(body)
    else:
        request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "name": span.name,
                    "kind": SPAN_KINDS.get(span.kind, str(span.kind)),
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex() or None,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    "status": span.status.code,
                })
    return spans


def _from_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: protobuf's JSON mapping, except that trace and span ids are hex, not base64."""
    document = json.loads(body)
    for resource_spans in document.get("resourceSpans", document.get("resource_spans", [])):
        for scope_spans in resource_spans.get("scopeSpans", resource_spans.get("scope_spans", [])):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)


def serve(port: int, out: Path) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            try:
                spans = decode(body, self.headers.get("content-type", ""))
            except Exception as exc:  # a sender this receiver cannot read is reported, and told so
                print(f"otlp_receiver: {self.headers.get('content-type')}: {exc}: {body[:200]!r}", flush=True)
                self.send_error(400, str(exc))
                return
            with lock, out.open("a") as sink:
                sink.writelines(json.dumps(span) + "\n" for span in spans)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    return server


def read_spans(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    serve(args.port, args.out).serve_forever()


if __name__ == "__main__":
    main()
