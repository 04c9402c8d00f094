"""A third-party consumer of Nio's event feed, in Python with grpcio.

The gRPC stubs are generated from the repository's .proto files when the
script starts (grpc_tools.protoc), as any consumer in another language
would do.

  feed.py subscribe --target HOST:PORT --ca CA.pem --token T [--from N]
                    [--kinds gateway,audit] [--route R] [--data-plane D]
                    [--field gateway.status=503] [--count N] [--idle SECONDS]
      One JSON line per event received; stops after --count events, or
      after --idle seconds without one. A stream that ends with an error
      prints {"error": CODE, "details": "..."} last.
  feed.py rate --target ... --ca ... --token ... --seconds S
      Counts live events for S seconds; prints {"events": N, "perSecond": R}.
  feed.py parse-metrics < METRICS
      Parses Prometheus text format (prometheus_client's parser, strict);
      prints {"name{label=value,...}": value}.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile
import threading
import time

PROTO_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "proto", "proto")


def stubs():
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="nio-feed-")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "nio/v1/events.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (
        importlib.import_module("nio.v1.events_pb2"),
        importlib.import_module("nio.v1.events_pb2_grpc"),
    )


def channel(args):
    import grpc

    with open(args.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(args.target, creds)


def summary(e):
    kind = e.WhichOneof("kind")
    out = {"sequence": e.sequence, "kind": kind, "dataPlane": e.data_plane}
    if kind == "gateway":
        g = e.gateway
        out.update(route=g.route, status=g.status, requestId=g.request_id, traceId=g.trace_id)
    elif kind == "audit":
        a = e.audit
        out.update(action=a.action, actor=a.actor, resource=f"{a.kind}/{a.name}", status=a.status,
                   oldVersion=a.old_version, newVersion=a.new_version, sourceIp=a.source_ip)
    elif kind == "alert":
        a = e.alert
        out.update(alert=a.alert, subject=a.subject, labels=dict(a.labels), message=a.message)
    elif kind == "fleet":
        out.update(change=e.fleet.change, revision=e.fleet.revision)
    return out


def subscribe(args):
    import grpc

    pb, rpc = stubs()
    stub = rpc.EventFeedStub(channel(args))
    fields = dict(f.split("=", 1) for f in args.field)
    request = pb.SubscribeRequest(
        kinds=[k for k in args.kinds.split(",") if k],
        route=args.route,
        data_plane=args.data_plane,
        fields=fields,
        from_sequence=args.from_sequence,
    )
    stream = stub.Subscribe(request, metadata=[("authorization", f"Bearer {args.token}")])
    last = [time.monotonic()]
    done = threading.Event()

    def watchdog():
        while not done.wait(0.1):
            if time.monotonic() - last[0] > args.idle:
                stream.cancel()
                return

    threading.Thread(target=watchdog, daemon=True).start()
    seen = 0
    try:
        for e in stream:
            last[0] = time.monotonic()
            print(json.dumps(summary(e)), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:
            print(json.dumps({"error": err.code().name, "details": err.details()}), flush=True)
    finally:
        done.set()
        stream.cancel()


def rate(args):
    import grpc

    pb, rpc = stubs()
    stub = rpc.EventFeedStub(channel(args))
    stream = stub.Subscribe(pb.SubscribeRequest(kinds=["gateway"]),
                            metadata=[("authorization", f"Bearer {args.token}")])
    threading.Timer(args.seconds, stream.cancel).start()
    n, first, last = 0, None, None
    try:
        for _ in stream:
            now = time.monotonic()
            first = first or now
            last = now
            n += 1
    except grpc.RpcError:
        pass
    span = (last - first) if (first and last and last > first) else 0
    print(json.dumps({"events": n, "perSecond": (n / span) if span else 0}))


def parse_metrics(_args):
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(sys.stdin.read()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("subscribe", "rate"):
        s = sub.add_parser(name)
        s.add_argument("--target", required=True)
        s.add_argument("--ca", required=True)
        s.add_argument("--token", required=True)
        if name == "subscribe":
            s.add_argument("--from", dest="from_sequence", type=int, default=0)
            s.add_argument("--kinds", default="")
            s.add_argument("--route", default="")
            s.add_argument("--data-plane", default="")
            s.add_argument("--field", action="append", default=[])
            s.add_argument("--count", type=int, default=0)
            s.add_argument("--idle", type=float, default=5.0)
        else:
            s.add_argument("--seconds", type=float, default=10.0)
    sub.add_parser("parse-metrics")
    args = p.parse_args()
    {"subscribe": subscribe, "rate": rate, "parse-metrics": parse_metrics}[args.cmd](args)


if __name__ == "__main__":
    main()
