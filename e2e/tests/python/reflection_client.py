"""The stock Python gRPC reflection client against a coordinator.

grpcio-reflection (1.85) speaks only the v1alpha reflection protocol: this
lists the services it sees at ADDRESS and fetches the descriptors of
cobble.v1.WorkerService, as Python tools discovering the API do.
Usage: reflection_client.py HOST:PORT
"""

import sys

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def ask(stub, request):
    return list(stub.ServerReflectionInfo(iter([request]), timeout=10))


def main():
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        for response in ask(stub, reflection_pb2.ServerReflectionRequest(list_services="")):
            for service in response.list_services_response.service:
                print("service", service.name)
        symbol = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="cobble.v1.WorkerService"
        )
        for response in ask(stub, symbol):
            files = response.file_descriptor_response.file_descriptor_proto
            print("descriptors", len(files))


if __name__ == "__main__":
    main()
