#!/usr/bin/env python3
"""A Python client of the pipeline service, on the stubs `make proto-gen` writes to gen/python.

Usage: python_client.py HOST:PORT

Validates the calculator example, streams three requests through it (one of them a
division by zero) and checks every answer; exits non-zero on any difference. It shows
that the contract works from another language: field names, oneofs, the error detail.
It stays on the raw stubs on purpose; applications use the typed client in clients/python
(examples/python has the same calls on it).
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen" / "python"))

import grpc  # noqa: E402
from flowplane.data.v1 import data_pb2  # noqa: E402
from flowplane.streaming.v1 import streaming_pb2, streaming_pb2_grpc  # noqa: E402

MANIFEST = streaming_pb2.PipelineManifest(
    name="python-calculator",
    nodes=[streaming_pb2.NodeSpec(id="calc", processor="json.calculator")],
    inputs=[streaming_pb2.PipelineInput(name="requests", targets=[streaming_pb2.PortRef(node="calc")])],
    outputs=[streaming_pb2.PipelineOutput(name="results", source=streaming_pb2.PortRef(node="calc"))],
)

REQUESTS = [
    {"op": "add", "operands": [1, 2, 3]},
    {"op": "div", "operands": [1, 0]},
    {"op": "mul", "operands": [6, 7]},
]


def requests():
    yield streaming_pb2.StreamPipelineRequest(init=streaming_pb2.StreamInit(manifest=MANIFEST))
    for sequence, body in enumerate(REQUESTS):
        chunk = data_pb2.DataChunk(
            sequence=sequence,
            input="requests",
            buffer=data_pb2.DataBuffer(json=data_pb2.JsonData(json=json.dumps(body))),
        )
        yield streaming_pb2.StreamPipelineRequest(chunk=chunk)
    yield streaming_pb2.StreamPipelineRequest(
        control=streaming_pb2.StreamControl(command=streaming_pb2.CONTROL_COMMAND_CLOSE)
    )


def main(address):
    with grpc.insecure_channel(address) as channel:
        stub = streaming_pb2_grpc.StreamingPipelineServiceStub(channel)
        problems = stub.ValidatePipeline(streaming_pb2.ValidatePipelineRequest(manifest=MANIFEST)).problems
        assert not problems, f"the manifest should be valid: {problems}"
        results, errors, closed = {}, {}, False
        for response in stub.StreamPipeline(requests(), timeout=30):
            kind = response.WhichOneof("response")
            if kind == "result":
                results[response.result.input_sequence] = json.loads(response.result.buffer.json.json)
            elif kind == "error":
                errors[response.error.sequence] = response.error
            elif kind == "closed":
                closed = True
        assert closed, "the session should end with closed"
        assert results == {0: {"result": 6}, 2: {"result": 42}}, results
        assert list(errors) == [1], errors
        assert errors[1].node_id == "calc" and errors[1].reason == "DIVISION_BY_ZERO", errors[1]
        assert errors[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0], errors[1]
    print("python client: 2 results and 1 per-chunk error, exactly as expected")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
