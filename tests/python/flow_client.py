#!/usr/bin/env python3
"""A flow API client that no Rust code of flow-agent touched: its stubs are
generated here, from proto/, with grpcio-tools.

    flow_client.py ADDRESS PROTO_DIR STUB_DIR FOLLOW_SECONDS

Prints one JSON object per line: the health of the server, its status, a
follow stream (from "subscribed" until FOLLOW_SECONDS pass), a replay of the
buffer, and the answers to invalid requests.
"""

import importlib
import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

try:
    from importlib.resources import files
except ImportError:  # Python < 3.9
    files = None


def generate(proto_dir, stub_dir):
    include = str(files("grpc_tools") / "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={stub_dir}",
        f"--grpc_python_out={stub_dir}",
        f"{proto_dir}/flowagent/v1/flow.proto",
    ])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, stub_dir)
    return (
        importlib.import_module("flowagent.v1.flow_pb2"),
        importlib.import_module("flowagent.v1.flow_pb2_grpc"),
    )


def emit(**event):
    print(json.dumps(event, sort_keys=True), flush=True)


def endpoint(end):
    return {
        "ip": end.ip,
        "port": end.port,
        "kind": end.kind,
        "namespace": end.namespace,
        "pod": end.pod,
        "workload": f"{end.workload.kind}/{end.workload.name}" if end.HasField("workload") else "",
        "tenant": end.tenant,
    }


def flow(message):
    return {
        "source": endpoint(message.source),
        "destination": endpoint(message.destination),
        "protocol": message.protocol,
        "packets": message.packets,
        "bytes": message.bytes,
        "is_reply": message.is_reply,
        "sequence": message.sequence,
        "cross_tenant": message.cross_tenant if message.HasField("cross_tenant") else None,
    }


def main():
    address, proto_dir, stub_dir, follow_seconds = sys.argv[1:5]
    pb, rpc = generate(proto_dir, stub_dir)
    channel = grpc.insecure_channel(address)

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "flowagent.v1.FlowService"]:
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        emit(event="health", service=service,
             status=health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    stub = rpc.FlowServiceStub(channel)
    status = stub.ServerStatus(pb.ServerStatusRequest(), timeout=10)
    emit(event="status", node=status.node_name, interfaces=list(status.interfaces),
         buffer_capacity=status.buffer_capacity)

    live = stub.GetFlows(pb.GetFlowsRequest(follow=True), timeout=float(follow_seconds))
    live.initial_metadata()  # the server has registered the subscription
    emit(event="subscribed")
    try:
        for response in live:
            if response.HasField("flow"):
                emit(event="flow", flow=flow(response.flow))
            else:
                emit(event="lost", count=response.lost_records.count)
    except grpc.RpcError as error:
        emit(event="follow-ended", code=error.code().name)

    for response in stub.GetFlows(pb.GetFlowsRequest(number=100000), timeout=10):
        if response.HasField("flow"):
            emit(event="replay", flow=flow(response.flow))

    bad = [
        ("negative number", pb.GetFlowsRequest(number=-1)),
        ("bad cidr", pb.GetFlowsRequest(
            number=1, allow=[pb.FlowFilter(source=pb.EndpointFilter(ip=["10.0.0.0/40"]))])),
        ("unknown protocol", pb.GetFlowsRequest(
            number=1, deny=[pb.FlowFilter(protocol=["tcp", "carrier-pigeon"])])),
    ]
    for name, request in bad:
        try:
            list(stub.GetFlows(request, timeout=10))
            emit(event="invalid", case=name, code="OK", details="")
        except grpc.RpcError as error:
            emit(event="invalid", case=name, code=error.code().name, details=error.details())


if __name__ == "__main__":
    main()
