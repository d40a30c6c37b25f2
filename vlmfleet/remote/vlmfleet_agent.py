#!/usr/bin/python3
"""vlmfleet-agent: HAProxy's agent check for this replica (installed by vlmfleet; stdlib only).

Every gateway's HAProxy connects to this port once a second (``agent-check``) and reads one line: the word in
the state file — ``ready`` (take new requests) or ``drain`` (finish what runs, take nothing new), written by
vlmfleet-release around a restart in a rollout batch. A missing or unreadable state file means ``ready``: the
regular health check on /health still decides whether the replica is up.

    vlmfleet-agent --port 9101 --state /run/vlmfleet/gateway-agent
"""

import argparse
import socketserver
import sys

WORDS = ("ready", "drain", "maint", "down", "up")


def answer(state_file):
    """The line HAProxy reads: the state file's first word when it is one HAProxy knows, else ``ready``."""
    try:
        with open(state_file) as fh:
            word = (fh.read().split() or ["ready"])[0]
    except OSError:
        word = "ready"
    return (word if word in WORDS else "ready") + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--bind", default="0.0.0.0")
    args = ap.parse_args(argv)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                self.request.sendall(answer(args.state).encode())
            except OSError:
                pass

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    with socketserver.ThreadingTCPServer((args.bind, args.port), Handler) as server:
        print(f"vlmfleet-agent: answering on {args.bind}:{args.port} from {args.state}", file=sys.stderr, flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
