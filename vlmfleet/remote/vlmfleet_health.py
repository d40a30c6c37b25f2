#!/usr/bin/python3
"""vlmfleet-health: is a vLLM server really serving? Installed on each host by the service stage.

    vlmfleet-health --url http://127.0.0.1:8000 --served qwen2.5-vl-7b-instruct --deadline 900 \\
        --unit vllm-qwen7b.service --image /opt/vlmfleet/share/health-check.png \\
        --metrics vllm:num_requests_running,... [--auth-file /etc/vlmfleet/secrets/vllm-qwen7b.auth] [--quick]

Waits (up to --deadline seconds) for /health to answer 200 and /v1/models to list the served name, then sends a
real chat completion with text and one with an image, and reads /metrics for the version's metric names.
Prints one JSON line on success (time to healthy, completion latencies). On failure says what failed, where and
for how long, then the unit's last journal lines, and exits 1. --quick: one attempt at /health and /v1/models.
The API key is read from --auth-file (a root-only "Authorization: Bearer ..." line), never from argv.
"""

import argparse
import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request


def request(url, auth, body=None, timeout=10.0):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read()


def since_unit_start(unit):
    """Seconds since systemd last entered 'active' for the unit, or None."""
    try:
        out = subprocess.run(["systemctl", "show", "-P", "ActiveEnterTimestampMonotonic", unit],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        usec = int(out)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if usec <= 0:
        return None
    return time.clock_gettime(time.CLOCK_MONOTONIC) - usec / 1e6


def journal(unit, lines=30):
    try:
        return subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"],
                              capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(journalctl failed: {exc})"


def fail(args, message):
    print(f"{args.unit or args.url}: {message}", file=sys.stderr)
    if args.unit:
        print(f"--- last journal lines of {args.unit}:", file=sys.stderr)
        print(journal(args.unit).rstrip(), file=sys.stderr)
    sys.exit(1)


def wait_ready(args, auth):
    start = time.monotonic()
    last = "no attempt yet"
    while True:
        try:
            status, _ = request(f"{args.url}/health", None, timeout=5)
            if status == 200:
                status, body = request(f"{args.url}/v1/models", auth, timeout=10)
                ids = [m.get("id") for m in json.loads(body).get("data", [])]
                if args.served in ids:
                    return
                last = f"/v1/models lists {ids}, not {args.served!r}"
            else:
                last = f"/health answered {status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} from {exc.url}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = f"{getattr(exc, 'reason', exc)}"
        waited = time.monotonic() - start
        if args.quick or waited >= args.deadline:
            fail(args, f"not healthy at {args.url} after {waited:.0f}s of {args.deadline}s (last: {last})")
        time.sleep(args.interval)


def chat(args, auth, content):
    body = {"model": args.served, "messages": [{"role": "user", "content": content}], "max_tokens": 32,
            "temperature": 0}
    t0 = time.monotonic()
    try:
        status, raw = request(f"{args.url}/v1/chat/completions", auth, body, timeout=args.completion_timeout)
    except urllib.error.HTTPError as exc:
        fail(args, f"chat completion at {args.url} failed: HTTP {exc.code} {exc.read()[:300]!r}")
    except (urllib.error.URLError, OSError) as exc:
        fail(args, f"chat completion at {args.url} failed: {getattr(exc, 'reason', exc)}")
    latency = time.monotonic() - t0
    try:
        text = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        fail(args, f"chat completion at {args.url} returned no message: {raw[:300]!r}")
    if not text or not text.strip():
        fail(args, f"chat completion at {args.url} returned an empty answer")
    return latency, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--served", required=True)
    ap.add_argument("--deadline", type=float, default=900)
    ap.add_argument("--interval", type=float, default=2)
    ap.add_argument("--completion-timeout", type=float, default=120)
    ap.add_argument("--unit")
    ap.add_argument("--image")
    ap.add_argument("--metrics", default="")
    ap.add_argument("--auth-file")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    auth = None
    if args.auth_file:
        try:
            with open(args.auth_file) as fh:
                auth = fh.read().strip().partition(":")[2].strip() or None
        except OSError as exc:
            fail(args, f"cannot read the health check's credentials {args.auth_file} ({exc.strerror}): no release "
                       "with an API key was installed on this host yet — fix: run deploys/vlm.py")
    wait_ready(args, auth)
    ready_after = since_unit_start(args.unit) if args.unit else None
    if args.quick:
        print(json.dumps({"healthy": True, "quick": True}))
        return 0
    text_latency, answer = chat(args, auth, "Reply with one word: are you ready?")
    image_latency = None
    if args.image:
        with open(args.image, "rb") as fh:
            data_url = "data:image/png;base64," + base64.b64encode(fh.read()).decode()
        image_latency, _ = chat(args, auth, [{"type": "text", "text": "What is in this image?"},
                                             {"type": "image_url", "image_url": {"url": data_url}}])
    missing = []
    if args.metrics:
        _, raw = request(f"{args.url}/metrics", None)
        text = raw.decode(errors="replace")
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
        families = {n[: -len(suffix)] for n in names for suffix in ("_bucket", "_sum", "_count") if n.endswith(suffix)}
        missing = [m for m in args.metrics.split(",") if m and m not in names and m not in families]
        if missing:
            fail(args, f"/metrics at {args.url} lacks {', '.join(missing)}")
    print(json.dumps({"healthy": True, "time_to_healthy_s": round(ready_after, 1) if ready_after else None,
                      "text_latency_s": round(text_latency, 3),
                      "image_latency_s": round(image_latency, 3) if image_latency is not None else None,
                      "answer": answer[:120]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
