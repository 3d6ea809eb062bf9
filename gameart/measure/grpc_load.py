"""TorchServe's gRPC inference API: stubs, one client call, and a closed-loop load like loadgen's.

The stubs are generated (grpcio-tools) from the .proto files inside the installed TorchServe's
own frontend jar, into a cache folder keyed by TorchServe's version, so they always describe the
server that runs; nothing generated is committed. The token goes as gRPC metadata
("authorization: Bearer ..."), which TorchServe's GRPCInterceptor checks like the HTTP header.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from gameart.measure.loadgen import StepResult
from gameart.measure.uploads import Upload

PROTO = "inference.proto"


def _jar() -> Path:
    import ts

    return Path(ts.__file__).parent / "frontend" / "model-server.jar"


def stubs(cache: Path | None = None) -> tuple[ModuleType, ModuleType]:
    """(inference_pb2, inference_pb2_grpc), generated once per TorchServe version."""
    import google.rpc
    import grpc_tools
    from grpc_tools import protoc
    from ts.version import __version__

    folder = cache or Path.home() / ".cache" / "gameart-serve" / f"ts-grpc-{__version__}"
    if not (folder / "inference_pb2_grpc.py").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_jar()) as jar:
            (folder / PROTO).write_bytes(jar.read(f"proto/{PROTO}"))
        includes = [
            str(folder),
            str(Path(grpc_tools.__file__).parent / "_proto"),  # google/protobuf/*.proto
            str(Path(next(iter(google.rpc.__path__))).parent.parent),  # google/rpc/status.proto
        ]
        outputs = [f"--python_out={folder}", f"--grpc_python_out={folder}"]
        code = protoc.main(
            ["protoc", *(f"-I{path}" for path in includes), *outputs, str(folder / PROTO)]
        )
        if code != 0:
            raise RuntimeError(f"protoc could not compile TorchServe's {PROTO} (exit {code})")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


@dataclass(frozen=True)
class GrpcTarget:
    address: str  # host:port of grpc_inference_port
    model: str
    token: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def answer_status(prediction: bytes) -> int:
    """The HTTP status the handler gave this answer. TorchServe 0.12's gRPC API answers OK even
    when the handler set a 4xx for the request (HTTP carries it as the status), so an error
    shows only in the body: our errors are JSON objects with a "code" (handler/errors.py)."""
    if not prediction.startswith(b'{"code":'):
        return 200
    try:
        return int(json.loads(prediction)["code"])
    except (ValueError, KeyError, TypeError):
        return 200


def predict(target: GrpcTarget, image: bytes, timeout: float = 30.0) -> tuple[str, bytes]:
    """One prediction: (gRPC status name, the answer's bytes or the error's message)."""
    import grpc

    pb2, pb2_grpc = stubs()
    with grpc.insecure_channel(target.address) as channel:
        stub = pb2_grpc.InferenceAPIsServiceStub(channel)
        request = pb2.PredictionsRequest(model_name=target.model, input={"data": image})
        try:
            response = stub.Predictions(request, timeout=timeout, metadata=target.metadata())
        except grpc.RpcError as error:
            return error.code().name, (error.details() or "").encode()
    return "OK", response.prediction


async def closed_loop(
    target: GrpcTarget,
    uploads: Sequence[Upload],
    concurrency: int,
    *,
    duration: float,
    timeout: float = 60.0,
) -> StepResult:
    """`concurrency` clients on one HTTP/2 channel, each sending its next request when the last
    one answers. An answer counts under the HTTP status the handler gave it (answer_status), as
    loadgen's HTTP results do; a failed call under its gRPC status name ("UNAVAILABLE", ...)."""
    import grpc

    pb2, pb2_grpc = stubs()
    result = StepResult("closed-grpc", concurrency, 0.0)
    requests = [
        pb2.PredictionsRequest(model_name=target.model, input={"data": u.body}) for u in uploads
    ]
    issued = 0
    started = time.perf_counter()
    deadline = started + duration
    async with grpc.aio.insecure_channel(target.address) as channel:
        stub = pb2_grpc.InferenceAPIsServiceStub(channel)

        async def client() -> None:
            nonlocal issued
            while time.perf_counter() < deadline:
                request = requests[issued % len(requests)]
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await stub.Predictions(
                        request, timeout=timeout, metadata=target.metadata()
                    )
                    status = str(answer_status(response.prediction))
                except grpc.aio.AioRpcError as error:
                    status = error.code().name
                result.record(status, (time.perf_counter() - sent) * 1e3)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - started
    return result
