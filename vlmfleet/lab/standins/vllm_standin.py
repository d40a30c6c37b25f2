#!/usr/bin/python3
"""vLLM SERVING STAND-IN for the vlmfleet lab (no GPU, no vLLM there). Never a production image.

Built into the lab image ``<lab registry>/vlmfleet-lab/vllm-standin:<version>`` as ``/usr/local/bin/vllm``. It
takes the same command line as ``vllm serve MODEL [flags]`` and checks it against that vLLM version's real flag
table (vlmfleet/catalog/vllm-flags-<version>.json, copied beside it), refusing what vLLM would refuse. It then
"loads" the model — reads MODEL/config.json and requires a Qwen2.5-VL architecture — and serves vLLM's HTTP API:

    GET  /health /ping /version /v1/models /metrics
    POST /v1/chat/completions     text and images (data: URLs), OpenAI response format

with vLLM's behaviour where a client can see it: the port opens only after loading (VLLM_STANDIN_LOAD_SECONDS)
and profiling — memory is sized by the lab's GPU memory stand-in for this host's simulated GPUs
(VLLM_STANDIN_GPU_MEMORY_URL, vlmfleet/lab/standins/gpu_memory.py) and a start that does not fit fails with
vLLM's own messages; VLLM_STANDIN_FAIL makes every start fail with that message (a broken release);
VLLM_API_KEY makes /v1/* require ``Authorization: Bearer``, per-prompt image limits and max_model_len are
enforced, and /metrics carries the metric names of that vLLM version. Answers are canned and say they come from
a stand-in.
"""

import base64
import json
import math
import os
import signal
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))  # vlmfleet/ in a checkout
sys.path.insert(0, "/opt/vllm-standin")  # in the lab image
import vllm_flags  # noqa: E402  (copied from vlmfleet beside this script)

VERSION = os.environ.get("VLLM_STANDIN_VERSION", "0.33.0")
METRICS = {
    "0.8.2": ("vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"),
    "0.33.0": ("vllm:kv_cache_usage_perc", "vllm:inter_token_latency_seconds"),
}


def flag_table():
    for d in ("/opt/vllm-standin", HERE, os.path.join(HERE, "..", "..", "catalog")):
        path = os.path.join(d, f"vllm-flags-{VERSION}.json")
        if os.path.exists(path):
            with open(path) as fh:
                return json.load(fh)
    raise SystemExit(f"vllm stand-in: no flag table for {VERSION}")


def parse(argv):
    """argv after `vllm`: serve MODEL --flag value ... -> dict of the values the stand-in uses."""
    if not argv or argv[0] != "serve":
        raise SystemExit("usage: vllm serve MODEL [options]  (vLLM stand-in: only `serve` is implemented)")
    problems = vllm_flags.check_table(["vllm", *argv], flag_table(), VERSION)
    if problems:
        for p in problems:
            print(f"vllm: error: {p}", file=sys.stderr)
        raise SystemExit(2)
    opts = {"model": None, "host": "0.0.0.0", "port": 8000, "served": None, "max_model_len": None, "images": None,
            "tp": 1}
    args = argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        val = args[i + 1] if i + 1 < len(args) else None
        if not a.startswith("-") and opts["model"] is None:
            opts["model"] = a
        elif a == "--model":
            opts["model"] = val
        elif a == "--host":
            opts["host"] = val
        elif a == "--port":
            opts["port"] = int(val)
        elif a == "--served-model-name":
            opts["served"] = val
        elif a == "--max-model-len":
            opts["max_model_len"] = None if val in ("auto", "-1") else int(val)  # auto: the model's maximum
        elif a == "--tensor-parallel-size":
            opts["tp"] = int(val)
        elif a == "--limit-mm-per-prompt":
            limits = vllm_flags.parse_limits(val)
            opts["images"] = int(limits.get("image", 1))
        i += 1
    if not opts["model"]:
        raise SystemExit("vllm: error: the following arguments are required: model_tag")
    return opts


def load_model(path):
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"vllm stand-in: cannot load the model config at {cfg_path}: {exc}")
    archs = cfg.get("architectures") or []
    if "Qwen2_5_VLForConditionalGeneration" not in archs:
        raise SystemExit(f"vllm stand-in: {path} is not a Qwen2.5-VL checkpoint (architectures {archs})")
    return cfg


def png_size(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def image_tokens(w, h, max_pixels=12845056):
    f = 28
    hh, ww = max(f, round(h / f) * f), max(f, round(w / f) * f)
    if hh * ww > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hh, ww = math.floor(h / beta / f) * f, math.floor(w / beta / f) * f
    return (hh // f) * (ww // f)


class State:
    def __init__(self, opts, cfg):
        self.opts, self.cfg = opts, cfg
        self.served = opts["served"] or opts["model"]
        self.max_len = opts["max_model_len"] or int(cfg.get("max_position_embeddings", 128000))
        self.limit_images = opts["images"] if opts["images"] is not None else (1 if VERSION == "0.8.2" else 999)
        self.api_key = os.environ.get("VLLM_API_KEY") or None
        self.lock = threading.Lock()
        self.prompt_tokens = self.generation_tokens = self.success = 0
        self.latencies = []


class Handler(BaseHTTPRequestHandler):
    server_version = "vllm-standin"
    state: State = None

    def log_message(self, fmt, *args):  # access log to stderr like uvicorn, without request bodies
        sys.stderr.write("INFO %s \"%s\" %s\n" % (self.address_string(), self.requestline, args[1] if len(args) > 1 else ""))

    def _send(self, code, body=b"", ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code, message, etype="BadRequestError"):
        self._send(code, {"error": {"message": message, "type": etype, "param": None, "code": code}})

    def _authorized(self):
        key = self.state.api_key
        if key is None:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {key}":
            return True
        self._send(401, {"error": "Unauthorized"})
        return False

    def do_GET(self):
        st = self.state
        if self.path in ("/health", "/ping"):
            return self._send(200, b"", "text/plain")
        if self.path == "/version":
            return self._send(200, {"version": VERSION})
        if self.path == "/metrics":
            return self._send(200, self.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if self.path == "/v1/models":
            if not self._authorized():
                return None
            return self._send(200, {"object": "list", "data": [{
                "id": st.served, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                "root": st.opts["model"], "parent": None, "max_model_len": st.max_len, "permission": []}]})
        return self._error(404, f"Not Found: {self.path}", "NotFoundError")

    def do_POST(self):
        st = self.state
        if self.path != "/v1/chat/completions":
            return self._error(404, f"Not Found: {self.path}", "NotFoundError")
        if not self._authorized():
            return None
        t0 = time.monotonic()
        try:
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        except ValueError:
            return self._error(400, "request body is not JSON")
        if req.get("model") != st.served:
            return self._error(404, f"The model `{req.get('model')}` does not exist.", "NotFoundError")
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages must be a non-empty list")
        words, images = 0, []
        for m in messages:
            content = m.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
            for part in parts:
                if part.get("type") == "text":
                    words += len(str(part.get("text", "")).split())
                elif part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    if not url.startswith("data:image/"):
                        return self._error(400, "the stand-in has no network: send images as data: URLs")
                    try:
                        data = base64.b64decode(url.split(",", 1)[1])
                    except (IndexError, ValueError):
                        return self._error(400, "the image data URL is not valid base64")
                    size = png_size(data)
                    if size is None:
                        return self._error(400, "the stand-in decodes PNG images only")
                    images.append(size)
        if len(images) > st.limit_images:
            return self._error(400, f"At most {st.limit_images} image(s) may be provided in one request.")
        prompt = words + 10 + sum(image_tokens(w, h) for w, h in images)
        if prompt > st.max_len:
            return self._error(400, f"This model's maximum context length is {st.max_len} tokens. However, you "
                                    f"requested {prompt} tokens in the messages.")
        seen = ", ".join(f"{w}x{h}" for w, h in images)
        answer = (f"[vLLM stand-in {VERSION}, {st.cfg.get('model_type')}] I read {words} words"
                  + (f" and {len(images)} image(s): {seen}." if images else "."))
        completion = len(answer.split())
        with st.lock:
            st.prompt_tokens += prompt
            st.generation_tokens += completion
            st.success += 1
            st.latencies.append(time.monotonic() - t0)
        return self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": st.served,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        })

    def metrics(self):
        st = self.state
        label = f'model_name="{st.served}"'
        cache_metric, token_time_metric = METRICS.get(VERSION, METRICS["0.33.0"])
        lines = []

        def add(name, kind, help_text, samples):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)

        def histogram(name, help_text, values):
            buckets = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
            samples = [f'{name}_bucket{{{label},le="{b}"}} {sum(1 for v in values if v <= b)}' for b in buckets]
            samples.append(f'{name}_bucket{{{label},le="+Inf"}} {len(values)}')
            samples += [f"{name}_sum{{{label}}} {sum(values)}", f"{name}_count{{{label}}} {len(values)}"]
            add(name, "histogram", help_text, samples)

        with st.lock:
            add("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
                [f"vllm:num_requests_running{{{label}}} 0.0"])
            add("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
                [f"vllm:num_requests_waiting{{{label}}} 0.0"])
            add(cache_metric, "gauge", "KV-cache usage. 1 means 100 percent usage.", [f"{cache_metric}{{{label}}} 0.0"])
            name = "vllm:prompt_tokens"
            add(name + "_total", "counter", "Number of prefill tokens processed.",
                [f"{name}_total{{{label}}} {float(st.prompt_tokens)}"])
            name = "vllm:generation_tokens"
            add(name + "_total", "counter", "Number of generation tokens processed.",
                [f"{name}_total{{{label}}} {float(st.generation_tokens)}"])
            name = "vllm:request_success"
            add(name + "_total", "counter", "Count of successfully processed requests.",
                [f'{name}_total{{finished_reason="stop",{label}}} {float(st.success)}'])
            histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", st.latencies)
            histogram(token_time_metric, "Histogram of time per output token in seconds.", st.latencies)
            histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                      st.latencies)
        return "\n".join(lines) + "\n"


def engine_failed(message):
    print("ERROR [core.py] EngineCore failed to start.", file=sys.stderr)
    print("Traceback (most recent call last):\n  (vLLM stand-in)", file=sys.stderr)
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(1)


def profile_memory(argv, cfg):
    """Ask the lab's GPU memory stand-in what vLLM's profiler would find; fail as vLLM fails when it does not fit."""
    url = os.environ.get("VLLM_STANDIN_GPU_MEMORY_URL")
    if not url:
        print("WARNING vLLM stand-in: VLLM_STANDIN_GPU_MEMORY_URL unset: GPU memory is not simulated",
              file=sys.stderr, flush=True)
        return
    body = json.dumps({"argv": ["vllm", *argv], "config": cfg, "version": VERSION}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        engine_failed(f"RuntimeError: vLLM stand-in: the lab's GPU memory stand-in at {url} answered {exc.code}: "
                      f"{exc.read()[:300]!r}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        engine_failed(f"RuntimeError: vLLM stand-in: the lab's GPU memory stand-in at {url} did not answer "
                      f"({getattr(exc, 'reason', exc)}): no simulated GPU to profile")
    for line in answer.get("log", []):
        print(f"INFO [gpu_worker.py] {line}", file=sys.stderr, flush=True)
    if not answer.get("ok"):
        engine_failed(answer.get("error") or "RuntimeError: profiling failed")


def main(argv):
    opts = parse(argv)
    print(f"INFO vLLM stand-in {VERSION}: vllm serve {opts['model']} (tp {opts['tp']})", file=sys.stderr, flush=True)
    cfg = load_model(opts["model"])
    time.sleep(float(os.environ.get("VLLM_STANDIN_LOAD_SECONDS", "3")))  # "loading": the port is not open yet
    if os.environ.get("VLLM_STANDIN_FAIL"):
        engine_failed(os.environ["VLLM_STANDIN_FAIL"])
    profile_memory(argv, cfg)
    Handler.state = State(opts, cfg)
    server = ThreadingHTTPServer((opts["host"], opts["port"]), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"INFO Started server process; Uvicorn running on http://{opts['host']}:{opts['port']}", file=sys.stderr,
          flush=True)
    server.serve_forever()
    print("INFO Shutting down", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
