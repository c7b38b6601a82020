#!/usr/bin/env python3
"""A Hubble API client that no Rust code of flow-agent touched: its stubs are
generated here, from proto/hubble/, with grpcio-tools, as any Hubble client
would generate them from Cilium's api/v1.

    hubble_client.py PROTO_DIR STUB_DIR PLAN

PLAN is JSON: {"calls": [CALL, ...]}, each CALL
    {"name": str, "address": "IP:port", "method": "Observer/GetFlows" |
     "Observer/ServerStatus" | "Observer/GetNodes" | "Observer/GetNamespaces" |
     "Observer/GetAgentEvents" | "Observer/GetDebugEvents" | "Peer/Notify" |
     "Health/Check", "request": {protobuf JSON}, "token": str (optional),
     "deadline": seconds (optional), "background": bool (optional)}.
Background calls run at once, each in its own thread; the others run in
order after them. Prints one JSON object per line, each with "call":
{"event": "started"} once the server has answered a streaming call's headers,
{"event": "message", "message": {...}} per response (protobuf JSON with the
.proto field names), then {"event": "end", "code": "OK" | status name,
"details": str}.
"""

import importlib
import json
import sys
import threading

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

from importlib.resources import files

LOCK = threading.Lock()


def generate(proto_dir, stub_dir):
    include = str(files("grpc_tools") / "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={stub_dir}",
        f"--grpc_python_out={stub_dir}",
        f"{proto_dir}/flow/flow.proto",
        f"{proto_dir}/relay/relay.proto",
        f"{proto_dir}/observer/observer.proto",
        f"{proto_dir}/peer/peer.proto",
    ])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, stub_dir)
    modules = {}
    for name in ["observer.observer_pb2", "observer.observer_pb2_grpc",
                 "peer.peer_pb2", "peer.peer_pb2_grpc"]:
        modules[name] = importlib.import_module(name)
    return modules


def emit(call, **event):
    with LOCK:
        print(json.dumps({"call": call, **event}, sort_keys=True), flush=True)


def as_json(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def method(modules, channel, name):
    """(stub method, request class, streams) for "Service/Method"."""
    service, rpc = name.split("/")
    if service == "Health":
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check, health_pb2.HealthCheckRequest, False
    if service == "Peer":
        stub = modules["peer.peer_pb2_grpc"].PeerStub(channel)
        return stub.Notify, modules["peer.peer_pb2"].NotifyRequest, True
    stub = modules["observer.observer_pb2_grpc"].ObserverStub(channel)
    observer = modules["observer.observer_pb2"]
    streams = rpc in ("GetFlows", "GetAgentEvents", "GetDebugEvents")
    return getattr(stub, rpc), getattr(observer, f"{rpc}Request"), streams


def run(modules, call):
    name = call["name"]
    channel = grpc.insecure_channel(call["address"])
    rpc, request_class, streams = method(modules, channel, call["method"])
    request = json_format.ParseDict(call.get("request", {}), request_class())
    metadata = []
    if "token" in call:
        metadata.append(("authorization", f"Bearer {call['token']}"))
    try:
        if streams:
            responses = rpc(request, metadata=metadata, timeout=call.get("deadline"))
            responses.initial_metadata()
            emit(name, event="started")
            for response in responses:
                emit(name, event="message", message=as_json(response))
        else:
            response = rpc(request, metadata=metadata, timeout=call.get("deadline", 10))
            emit(name, event="message", message=as_json(response))
        emit(name, event="end", code="OK", details="")
    except grpc.RpcError as error:
        emit(name, event="end", code=error.code().name, details=error.details() or "")
    finally:
        channel.close()


def main():
    proto_dir, stub_dir, plan = sys.argv[1:4]
    modules = generate(proto_dir, stub_dir)
    calls = json.loads(plan)["calls"]
    background = [threading.Thread(target=run, args=(modules, call))
                  for call in calls if call.get("background")]
    for thread in background:
        thread.start()
    for call in calls:
        if not call.get("background"):
            run(modules, call)
    for thread in background:
        thread.join()


if __name__ == "__main__":
    main()
