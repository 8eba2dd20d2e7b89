# A stand-in `kubectl port-forward svc/NAME :PORT` that really forwards (tests/cluster/kind/test_kind.py).
#
# Like kubectl it picks the Service's pod once, at start: the "pod" is the TCP port written
# in the file `endpoints` next to this script (missing or empty: the pod is not running,
# kubectl's Pending error, exit 1). It then listens on 127.0.0.1:<free port>, prints
# kubectl's "Forwarding from" lines and pipes every connection to that pod's port. When the
# pod is gone (its port refuses), it prints kubectl's "an error occurred forwarding" line
# and closes that connection but keeps running, as kubectl does. Each start appends its pid
# to the file `starts`.
import contextlib
import os
import socket
import sys
import threading
from pathlib import Path

here = Path(__file__).resolve().parent
data = Path(os.environ["STAND_IN_DATA"])
with open(here / "starts", "a") as starts:
    starts.write(f"{os.getpid()}\n")
endpoints = here / "endpoints"
pod = endpoints.read_text().strip() if endpoints.exists() else ""
if not pod:
    sys.stderr.write((data / "kubectl-port-forward-pod-pending.stderr").read_text())
    sys.exit(1)

listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
forwarding = (data / "kubectl-port-forward.stdout").read_text().format(port=port).splitlines()
print(forwarding[0], flush=True)
print(forwarding[1], flush=True)


def pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def handle(client: socket.socket) -> None:
    print(forwarding[2], flush=True)  # Handling connection for PORT
    try:
        upstream = socket.create_connection(("127.0.0.1", int(pod)), timeout=5)
    except OSError:
        gone = (data / "kubectl-port-forward-pod-gone.stderr").read_text().format(port=port)
        sys.stderr.write(gone.splitlines()[0] + "\n")
        sys.stderr.flush()
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    pipe(client, upstream)


while True:
    conn, _ = listener.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
