#!/usr/bin/env python3
"""A stand-in for Dragonfly's scheduler, so a real dfdaemon starts and serves its proxy here.

The real scheduler is Go and cannot be installed from the registries this project uses. A
dfdaemon refuses to start unless a scheduler answers the gRPC health check, then announces its
host and, for every task it has not finished, announces the peer and waits to be told where to
download from. This stand-in answers exactly what the first peer of a task hears from a real
scheduler: "go back to source" (NeedBackToSourceResponse). The daemon then fetches the pieces
from the origin itself, stores them, and serves later requests for the same task from its
cache, which is what scripts/p2p-check.sh checks. There is no peer-to-peer transfer between
daemons (that needs the real scheduler and more than one host).

Every call is appended to the log file as one JSON line, so the check can see which tasks
were announced.

usage: dragonfly_scheduler.py PORT LOGFILE
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

LOCK = threading.Lock()


def record(path, **event):
    with LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


class Scheduler(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, log):
        self.log = log

    def AnnounceHost(self, request, context):
        record(self.log, call="AnnounceHost", host=request.host.id)
        return empty_pb2.Empty()

    def DeleteHost(self, request, context):
        record(self.log, call="DeleteHost")
        return empty_pb2.Empty()

    def DeletePeer(self, request, context):
        record(self.log, call="DeletePeer", task=request.task_id)
        return empty_pb2.Empty()

    def DeleteTask(self, request, context):
        record(self.log, call="DeleteTask", task=request.task_id)
        return empty_pb2.Empty()

    def AnnouncePeer(self, request_iterator, context):
        for req in request_iterator:
            kind = req.WhichOneof("request")
            record(self.log, call="AnnouncePeer", kind=kind, task=req.task_id, peer=req.peer_id)
            if kind == "register_peer_request":
                d = req.register_peer_request.download
                record(
                    self.log,
                    call="RegisterPeer",
                    task=req.task_id,
                    url=d.url,
                    filtered=list(d.filtered_query_params),
                    task_content=d.content_for_calculating_task_id,
                    headers=dict(d.request_header),
                )
                yield scheduler_pb2.AnnouncePeerResponse(
                    need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse(
                        description="stand-in scheduler: every task goes back to source"
                    )
                )
            elif kind in (
                "download_peer_back_to_source_finished_request",
                "download_peer_back_to_source_failed_request",
                "download_peer_finished_request",
                "download_peer_failed_request",
            ):
                return


def main():
    port, log = int(sys.argv[1]), sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(Scheduler(log), server)
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    checker.set("scheduler.v2.Scheduler", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    record(log, call="started", port=port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
