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

Serving is simulated in time so that a load test (``vlmfleet bench``) measures something: ``"stream": true`` answers
with Server-Sent Events as vLLM does (``chat.completion.chunk`` deltas, a last chunk with ``finish_reason``, a usage
chunk under ``stream_options.include_usage``, then ``data: [DONE]``); a non-streamed request takes the same time.
At most ``--max-num-seqs`` requests run at once (vLLM's default for the version when the flag is absent); the rest
wait in a first-come queue. A running request first "prefills" its prompt (text words + image tokens, as Qwen2.5-VL
counts 28x28 pixels per token) at VLLM_STANDIN_PREFILL_TOKENS_PER_S (default 4000), so the time to the first token
grows with the image, then writes one word per token at VLLM_STANDIN_TOKENS_PER_S (default 50). ``max_tokens`` /
``max_completion_tokens`` cut the canned answer (finish_reason ``length``); vLLM's ``ignore_eos`` makes it write
exactly max_tokens. What is NOT simulated: a GPU's batching — each running request keeps its own rates however
many run beside it (a real GPU's per-request rate falls as the batch grows), no preemption, no prefix cache.
/metrics reports what happened: ``num_requests_running`` / ``num_requests_waiting`` from the queue, the KV cache
gauge as the tokens running requests hold over the KV capacity (the "GPU KV cache size" the GPU memory stand-in
computed, else max_num_seqs x max_model_len), and histograms of the measured time to first token (from arrival,
queueing included), time between tokens and end-to-end latency, with vLLM's bucket boundaries.
"""

import base64
import collections
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
#: vLLM's histogram bucket boundaries (vllm/v1/metrics/loggers.py), seconds: 0.33's lists reach further
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TOKEN = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
BUCKETS = {
    "0.8.2": {"ttft": _TTFT, "token": _TOKEN, "e2e": _E2E},
    "0.33.0": {"ttft": _TTFT + (20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
               "token": _TOKEN + (5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
               "e2e": _E2E + (120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)},
}
#: vLLM's --max-num-seqs when the command line has none (0.8.2 V1; 0.33 on GPUs under 70 GiB)
DEFAULT_MAX_NUM_SEQS = {"0.8.2": 1024, "0.33.0": 256}
FILLER = "and the stand-in keeps writing because it was asked to ignore the end of its answer".split()


def env_rate(name, default):
    """A positive number of tokens per second from the environment, e.g. ``env_rate("VLLM_STANDIN_TOKENS_PER_S",
    50.0)``; a bad value stops the start with a message naming the variable."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else float(default)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SystemExit(f"vllm stand-in: {name}={raw!r}: must be a number of tokens per second > 0 (e.g. {default})")
    return value


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
            "tp": 1, "max_num_seqs": None}
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
        elif a == "--max-num-seqs":
            opts["max_num_seqs"] = int(val)
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


class Engine:
    """The simulated scheduler: at most ``max_num_seqs`` requests run, the rest wait first come first served; a
    running request holds KV tokens (its prompt, then each token it writes) out of ``kv_capacity``.

    + max_num_seqs: e.g. 256 (``--max-num-seqs``)
    + kv_capacity: KV cache tokens, e.g. 120000; a request is admitted only when its prompt fits beside the others
    + tokens_per_s: decode rate of one request, e.g. 50.0
    + prefill_tokens_per_s: prompt processing rate of one request, e.g. 4000.0
    """

    def __init__(self, max_num_seqs, kv_capacity, tokens_per_s, prefill_tokens_per_s):
        self.max_num_seqs, self.kv_capacity = max_num_seqs, kv_capacity
        self.tokens_per_s, self.prefill_tokens_per_s = tokens_per_s, prefill_tokens_per_s
        self.cond = threading.Condition()
        self.queue = collections.deque()
        self.running = self.held = 0

    def _admit(self, prompt):
        ticket = object()
        with self.cond:
            self.queue.append(ticket)
            while not (self.queue[0] is ticket and self.running < self.max_num_seqs
                       and self.held + prompt <= self.kv_capacity):
                self.cond.wait()
            self.queue.popleft()
            self.running += 1
            self.held += prompt
            self.cond.notify_all()  # the next in line may fit too

    def _hold(self, tokens):
        with self.cond:
            self.held += tokens

    def _release(self, tokens):
        with self.cond:
            self.running -= 1
            self.held -= tokens
            self.cond.notify_all()

    def generate(self, prompt, n):
        """Yield the time (time.monotonic) of each of ``n`` output tokens as the simulated GPU makes it: after the
        queue and the prefill of ``prompt`` tokens, then one every 1/tokens_per_s. Closing the generator early (a
        client gone) frees its place."""
        self._admit(prompt)
        made = 0
        try:
            time.sleep(prompt / self.prefill_tokens_per_s)
            first = time.monotonic()
            for i in range(n):
                delay = first + i / self.tokens_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._hold(1)
                made += 1
                yield time.monotonic()
        finally:
            self._release(prompt + made)

    def gauges(self):
        """(running, waiting, KV cache usage in [0, 1])."""
        with self.cond:
            return self.running, len(self.queue), min(1.0, self.held / self.kv_capacity)


class State:
    def __init__(self, opts, cfg, kv_tokens=None):
        self.opts, self.cfg = opts, cfg
        self.served = opts["served"] or opts["model"]
        self.max_len = opts["max_model_len"] or int(cfg.get("max_position_embeddings", 128000))
        self.limit_images = opts["images"] if opts["images"] is not None else (1 if VERSION == "0.8.2" else 999)
        self.api_key = os.environ.get("VLLM_API_KEY") or None
        seqs = opts["max_num_seqs"] or DEFAULT_MAX_NUM_SEQS.get(VERSION, 256)
        capacity = max(kv_tokens or seqs * self.max_len, self.max_len)
        self.engine = Engine(seqs, capacity, env_rate("VLLM_STANDIN_TOKENS_PER_S", 50.0),
                             env_rate("VLLM_STANDIN_PREFILL_TOKENS_PER_S", 4000.0))
        self.lock = threading.Lock()
        self.prompt_tokens = self.generation_tokens = 0
        self.finished = collections.Counter()  # finish_reason -> requests
        self.ttft, self.token_gaps, self.e2e = [], [], []

    def record(self, arrival, prompt, times, finish_reason, end):
        """One request served: its arrival, prompt tokens, the time of each output token, why it finished, its
        end (all time.monotonic)."""
        with self.lock:
            self.prompt_tokens += prompt
            self.generation_tokens += len(times)
            self.finished[finish_reason] += 1
            if times:
                self.ttft.append(times[0] - arrival)
            self.token_gaps.extend(b - a for a, b in zip(times, times[1:]))
            self.e2e.append(end - arrival)


def output_words(answer, max_tokens, ignore_eos):
    """The words (one per token) a request gets and its finish_reason: the canned answer cut at ``max_tokens``, or
    with ``ignore_eos`` exactly max_tokens words. E.g. ``output_words("a b c", 2, False) == (["a", "b"],
    "length")``."""
    words = answer.split()
    if ignore_eos:
        while len(words) < max_tokens:
            words.append(FILLER[len(words) % len(FILLER)])
    if len(words) > max_tokens:
        return words[:max_tokens], "length"
    return words, "length" if ignore_eos else "stop"


def chunk(rid, created, model, delta=None, finish=None, usage=None, with_usage=False):
    """One ``chat.completion.chunk`` as vLLM streams it; ``delta`` None and ``usage`` set: the usage chunk."""
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                   "finish_reason": finish}]}
    if with_usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


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
        max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
        if max_tokens is None:
            max_tokens = st.max_len - prompt
        elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return self._error(400, f"max_tokens must be at least 1, got {max_tokens}.")
        elif prompt + max_tokens > st.max_len:
            return self._error(400, f"This model's maximum context length is {st.max_len} tokens. However, you "
                                    f"requested {prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} "
                                    "in the completion). Please reduce the length of the messages or completion.")
        seen = ", ".join(f"{w}x{h}" for w, h in images)
        answer = (f"[vLLM stand-in {VERSION}, {st.cfg.get('model_type')}] I read {words} words"
                  + (f" and {len(images)} image(s): {seen}." if images else "."))
        out, finish = output_words(answer, max_tokens, req.get("ignore_eos") is True)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        gen = st.engine.generate(prompt, len(out))
        if req.get("stream") is True:
            usage = (req.get("stream_options") or {}).get("include_usage") is True
            return self._stream(gen, out, finish, prompt, t0, (rid, created, st.served), usage)
        try:
            times = list(gen)
        finally:
            gen.close()
        st.record(t0, prompt, times, finish, time.monotonic())
        return self._send(200, {
            "id": rid, "object": "chat.completion", "created": created, "model": st.served,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(out)},
                         "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(out), "total_tokens": prompt + len(out)},
        })

    def _stream(self, gen, out, finish, prompt, t0, ident, include_usage):
        """Server-Sent Events as vLLM writes them, one token per chunk as ``gen`` makes it; HTTP/1.0, so the body
        ends when the connection closes. A client that leaves frees its place and is not counted as served."""
        st = self.state
        times = []
        one = lambda delta=None, fin=None, usage=None: chunk(*ident, delta, fin, usage, include_usage)  # noqa: E731
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for i, t in enumerate(gen):
                times.append(t)
                if i == 0:
                    self.wfile.write(one({"role": "assistant", "content": ""}))
                self.wfile.write(one({"content": out[i] if i == 0 else " " + out[i]}))
            if not times:
                self.wfile.write(one({"role": "assistant", "content": ""}))
            self.wfile.write(one({}, finish))
            if include_usage:
                self.wfile.write(one(usage={"prompt_tokens": prompt, "completion_tokens": len(times),
                                            "total_tokens": prompt + len(times)}))
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            return None
        finally:
            gen.close()
        st.record(t0, prompt, times, finish, time.monotonic())
        return None

    def metrics(self):
        st = self.state
        label = f'model_name="{st.served}"'
        cache_metric, token_time_metric = METRICS.get(VERSION, METRICS["0.33.0"])
        lines = []

        def add(name, kind, help_text, samples):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)

        def histogram(name, help_text, values, buckets):
            samples = [f'{name}_bucket{{{label},le="{b}"}} {sum(1 for v in values if v <= b)}' for b in buckets]
            samples.append(f'{name}_bucket{{{label},le="+Inf"}} {len(values)}')
            samples += [f"{name}_sum{{{label}}} {sum(values)}", f"{name}_count{{{label}}} {len(values)}"]
            add(name, "histogram", help_text, samples)

        running, waiting, usage = st.engine.gauges()
        buckets = BUCKETS.get(VERSION, BUCKETS["0.33.0"])
        with st.lock:
            add("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
                [f"vllm:num_requests_running{{{label}}} {float(running)}"])
            add("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
                [f"vllm:num_requests_waiting{{{label}}} {float(waiting)}"])
            add(cache_metric, "gauge", "KV-cache usage. 1 means 100 percent usage.", [f"{cache_metric}{{{label}}} {usage}"])
            name = "vllm:prompt_tokens"
            add(name + "_total", "counter", "Number of prefill tokens processed.",
                [f"{name}_total{{{label}}} {float(st.prompt_tokens)}"])
            name = "vllm:generation_tokens"
            add(name + "_total", "counter", "Number of generation tokens processed.",
                [f"{name}_total{{{label}}} {float(st.generation_tokens)}"])
            name = "vllm:request_success"
            reasons = sorted({"stop", *st.finished})
            add(name + "_total", "counter", "Count of successfully processed requests.",
                [f'{name}_total{{finished_reason="{r}",{label}}} {float(st.finished[r])}' for r in reasons])
            histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", st.ttft,
                      buckets["ttft"])
            histogram(token_time_metric, "Histogram of time per output token in seconds.", st.token_gaps,
                      buckets["token"])
            histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
                      st.e2e, buckets["e2e"])
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
        return None
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
    return kv_cache_tokens(answer.get("log", []))


def kv_cache_tokens(log):
    """The KV cache size a profile's log states, e.g. ``kv_cache_tokens(["GPU KV cache size: 1,024 tokens"]) ==
    1024``; None when it states none."""
    for line in log:
        head, sep, rest = line.partition("GPU KV cache size: ")
        if sep and rest.endswith(" tokens"):
            try:
                return int(rest[: -len(" tokens")].replace(",", ""))
            except ValueError:
                return None
    return None


def main(argv):
    opts = parse(argv)
    print(f"INFO vLLM stand-in {VERSION}: vllm serve {opts['model']} (tp {opts['tp']})", file=sys.stderr, flush=True)
    cfg = load_model(opts["model"])
    time.sleep(float(os.environ.get("VLLM_STANDIN_LOAD_SECONDS", "3")))  # "loading": the port is not open yet
    if os.environ.get("VLLM_STANDIN_FAIL"):
        engine_failed(os.environ["VLLM_STANDIN_FAIL"])
    kv_tokens = profile_memory(argv, cfg)
    Handler.state = State(opts, cfg, kv_tokens)
    server = ThreadingHTTPServer((opts["host"], opts["port"]), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"INFO Started server process; Uvicorn running on http://{opts['host']}:{opts['port']}", file=sys.stderr,
          flush=True)
    server.serve_forever()
    print("INFO Shutting down", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
