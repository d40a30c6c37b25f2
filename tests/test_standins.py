"""The lab's stand-ins speak the real protocols: run them here and talk to them as clients do.

The vLLM serving stand-in: vLLM's endpoints, auth, limits and metric names (checked by the real promtool);
it refuses a command line the real vLLM would refuse. The hub stand-in: the Hugging Face and ModelScope APIs and
byte ranges (the lab tier runs the real huggingface_hub, modelscope and git-lfs clients against it).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from vlmfleet.catalog import vllm_version
from vlmfleet.lab import LabConfig
from vlmfleet.lab.hub import build

PKG = Path(__file__).resolve().parent.parent / "vlmfleet"
PNG = (PKG / "assets/health-check.png").read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, deadline: float = 15) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"stand-in exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("stand-in did not listen")


def start_vllm(tmp_path: Path, version: str = "0.33.0", flags: tuple = (), **env: str):
    """The serving stand-in as a local process (no GPU memory stand-in): ``(process, base URL)``; key sk-test.

    + flags: more `vllm serve` flags, e.g. ``("--max-num-seqs", "1")``
    + env: more environment, e.g. ``VLLM_STANDIN_TOKENS_PER_S="2000"``
    """
    model = tmp_path / "Qwen2.5-VL-7B-Instruct"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"],
                                                   "model_type": "qwen2_5_vl"}))
    port = free_port()
    limit = "image=2,video=0" if version == "0.8.2" else '{"image":2,"video":0}'
    proc = subprocess.Popen(
        [sys.executable, str(PKG / "lab/standins/vllm_standin.py"), "serve", str(model), "--served-model-name", "q7",
         "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--limit-mm-per-prompt", limit,
         *flags],
        env={"VLLM_STANDIN_VERSION": version, "VLLM_API_KEY": "sk-test", "VLLM_STANDIN_LOAD_SECONDS": "0.2",
             "PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(params=["0.8.2", "0.33.0"])
def vllm(request, tmp_path):
    proc, url = start_vllm(tmp_path, request.param)
    yield request.param, url
    proc.terminate()
    proc.wait(10)


def chat(url, content, key="sk-test", model="q7"):
    return requests.post(f"{url}/v1/chat/completions", timeout=10, headers={"Authorization": f"Bearer {key}"},
                         json={"model": model, "messages": [{"role": "user", "content": content}]})


def test_vllm_endpoints_and_auth(vllm):
    version, url = vllm
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    assert requests.get(f"{url}/version", timeout=5).json() == {"version": version}
    assert requests.get(f"{url}/v1/models", timeout=5).status_code == 401
    models = requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-test"}, timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["q7"] and models["data"][0]["max_model_len"] == 4096
    assert chat(url, "hello", key="wrong").status_code == 401


def test_vllm_chat_text_and_image(vllm):
    _, url = vllm
    r = chat(url, "are you ready?")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert "stand-in" in body["choices"][0]["message"]["content"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}
    r = chat(url, [{"type": "text", "text": "what is this?"}, image])
    assert r.status_code == 200 and "64x48" in r.json()["choices"][0]["message"]["content"]
    assert r.json()["usage"]["prompt_tokens"] > 4  # 64x48 -> 2x2 = 4 image tokens + text
    assert chat(url, [image, image, image]).status_code == 400  # over the per-prompt image limit
    assert chat(url, "x", model="other").status_code == 404


def test_vllm_metrics_names_per_version_pass_promtool(vllm):
    version, url = vllm
    chat(url, "count me")
    text = requests.get(f"{url}/metrics", timeout=5).text
    for name in vllm_version(version).metrics:
        assert f"# TYPE {name} " in text, name
    assert ("vllm:gpu_cache_usage_perc" in text) == (version == "0.8.2")
    assert ("vllm:kv_cache_usage_perc" in text) == (version == "0.33.0")
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    # vLLM's own names use ':' (Prometheus reserves it for recording rules): promtool lints that, as it does on a
    # real vLLM's /metrics. Any other finding — a parse error, a missing HELP, a counter without _total — fails.
    findings = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    other = [f for f in findings if not f.endswith("metric names should not contain ':'")]
    assert other == [], other
    assert len(findings) == len(vllm_version(version).metrics)


def stream(url, content, **extra):
    """A streamed chat completion read as the OpenAI client reads it: ``(events, raw lines, seconds to the first
    content delta)``; events are the parsed JSON of each ``data:`` line, ``"[DONE]"`` for the end marker."""
    t0 = time.monotonic()
    r = requests.post(f"{url}/v1/chat/completions", timeout=30, stream=True, headers={"Authorization": "Bearer sk-test"},
                      json={"model": "q7", "messages": [{"role": "user", "content": content}], "stream": True,
                            **extra})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream"), r.text
    events, lines, first = [], [], None
    for line in r.iter_lines(decode_unicode=True):
        lines.append(line)
        if not line:
            continue
        assert line.startswith("data: "), line  # SSE: every event is one data: line, events split by blank lines
        data = line[len("data: "):]
        events.append("[DONE]" if data == "[DONE]" else json.loads(data))
        if first is None and data != "[DONE]" and any(c["delta"].get("content") for c in events[-1]["choices"]):
            first = time.monotonic() - t0
    return events, lines, first


def test_vllm_streams_server_sent_events_like_vllm(vllm):
    _, url = vllm
    events, lines, _ = stream(url, "stream to me", max_tokens=5, ignore_eos=True,
                              stream_options={"include_usage": True})
    assert events[-1] == "[DONE]" and lines[-1] == "" and all(lines[i] == "" for i in range(1, len(lines), 2))
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(content) == 5 and content[0].startswith("[vLLM") and all(t.startswith(" ") for t in content[1:])
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])  # include_usage: null on every chunk but the last
    # without ignore_eos the canned answer ends by itself; max_completion_tokens cuts it
    events, _, _ = stream(url, "hi")
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and "usage" not in events[-2]
    events, _, _ = stream(url, "hi", max_completion_tokens=3)
    assert sum(1 for e in events[1:-2] if e["choices"][0]["delta"].get("content")) == 3
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    body = requests.post(f"{url}/v1/chat/completions", timeout=10, headers={"Authorization": "Bearer sk-test"},
                         json={"model": "q7", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).json()
    assert body["usage"]["completion_tokens"] == 4 and len(body["choices"][0]["message"]["content"].split()) == 4
    too_long = requests.post(f"{url}/v1/chat/completions", timeout=10, headers={"Authorization": "Bearer sk-test"},
                             json={"model": "q7", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4096})
    assert too_long.status_code == 400 and "maximum context length is 4096" in too_long.text
    zero = requests.post(f"{url}/v1/chat/completions", timeout=10, headers={"Authorization": "Bearer sk-test"},
                         json={"model": "q7", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})
    assert zero.status_code == 400 and "at least 1" in zero.text


def gauge(url, name):
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_vllm_runs_max_num_seqs_and_queues_the_rest(tmp_path):
    """Two requests at once with --max-num-seqs 1: one runs, one waits; the gauges and histograms say so."""
    import threading

    proc, url = start_vllm(tmp_path, flags=("--max-num-seqs", "1"), VLLM_STANDIN_TOKENS_PER_S="20")
    try:
        firsts = []
        threads = [threading.Thread(target=lambda: firsts.append(stream(url, "slow", max_tokens=16,
                                                                         ignore_eos=True)[2])) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.4)
        running, waiting = gauge(url, "vllm:num_requests_running"), gauge(url, "vllm:num_requests_waiting")
        usage = gauge(url, "vllm:kv_cache_usage_perc")
        for t in threads:
            t.join(30)
        assert (running, waiting) == (1.0, 1.0)
        assert 0 < usage < 0.01  # ~20 tokens held of 1 x 4096 (max_num_seqs x max_model_len, no GPU stand-in)
        firsts.sort()
        assert firsts[0] < 0.3 and firsts[1] > 0.7  # the second waited for the first's 16 tokens at 20/s (0.75 s)
        assert (gauge(url, "vllm:num_requests_running"), gauge(url, "vllm:num_requests_waiting")) == (0.0, 0.0)
        text = requests.get(f"{url}/metrics", timeout=5).text
        assert 'vllm:time_to_first_token_seconds_count{model_name="q7"} 2' in text
        assert 'vllm:time_to_first_token_seconds_bucket{model_name="q7",le="0.25"} 1' in text  # one did not wait
        assert 'vllm:inter_token_latency_seconds_count{model_name="q7"} 30' in text  # 15 gaps per request
        assert 'vllm:inter_token_latency_seconds_bucket{model_name="q7",le="0.025"} 0' in text  # gaps of 0.05 s
        assert 'vllm:inter_token_latency_seconds_bucket{model_name="q7",le="0.075"} 30' in text
        assert 'vllm:e2e_request_latency_seconds_bucket{model_name="q7",le="1.0"} 1' in text
        assert 'vllm:e2e_request_latency_seconds_bucket{model_name="q7",le="2.0"} 2' in text
        assert 'vllm:e2e_request_latency_seconds_bucket{model_name="q7",le="7680.0"} 2' in text  # 0.33's buckets
        assert 'vllm:request_success_total{finished_reason="length",model_name="q7"} 2.0' in text
        assert 'vllm:generation_tokens_total{model_name="q7"} 32.0' in text
    finally:
        proc.terminate()
        proc.wait(10)


def test_vllm_prefill_time_grows_with_the_image(tmp_path):
    from vlmfleet.bench.workload import png

    proc, url = start_vllm(tmp_path, VLLM_STANDIN_PREFILL_TOKENS_PER_S="2000")
    try:
        def ttft(size):
            data = base64.b64encode(png(*size)).decode()
            image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
            return stream(url, [{"type": "text", "text": "what?"}, image], max_tokens=1)[2]

        small, big = ttft((224, 224)), ttft((1288, 728))  # 64 and 46 x 26 = 1196 image tokens
        assert small < 0.2 and 0.55 < big < 1.5, (small, big)
    finally:
        proc.terminate()
        proc.wait(10)


def test_vllm_standin_refuses_bad_rates(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    bad = subprocess.run([sys.executable, str(PKG / "lab/standins/vllm_standin.py"), "serve", str(model), "--port",
                          str(free_port())], capture_output=True, text=True, timeout=30,
                         env={"VLLM_STANDIN_LOAD_SECONDS": "0", "VLLM_STANDIN_TOKENS_PER_S": "fast",
                              "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 1 and "VLLM_STANDIN_TOKENS_PER_S='fast': must be a number" in bad.stderr


def test_vllm_standin_refuses_what_vllm_refuses(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    run = lambda *a, v="0.33.0": subprocess.run(  # noqa: E731
        [sys.executable, str(PKG / "lab/standins/vllm_standin.py"), *a], capture_output=True, text=True,
        env={"VLLM_STANDIN_VERSION": v, "VLLM_STANDIN_LOAD_SECONDS": "0", "PATH": "/usr/bin:/bin"}, timeout=30)
    bad = run("serve", str(tmp_path), "--limit-mm-per-prompt", "image=5,video=5")
    assert bad.returncode == 2 and "expects JSON" in bad.stderr
    assert run("serve", str(tmp_path), "--swap-space", "4").returncode == 2
    wrong_model = run("serve", str(tmp_path), "--port", str(free_port()))
    assert wrong_model.returncode == 1 and "is not a Qwen2.5-VL checkpoint" in wrong_model.stderr


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = build(LabConfig(root=tmp_path_factory.mktemp("lab")))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vlmfleet.lab.standins.hub_standin", "--root", str(root), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_port(port, proc)
    yield f"http://127.0.0.1:{port}", json.loads((root / "index.json").read_text())
    proc.terminate()
    proc.wait(10)


REPO = "Qwen/Qwen2.5-VL-7B-Instruct"


def test_hub_repo_info_tree_and_resolve(hub):
    url, index = hub
    commit = index[REPO]["commit"]
    info = requests.get(f"{url}/api/models/{REPO}/revision/main", timeout=5).json()
    assert info["sha"] == commit and {s["rfilename"] for s in info["siblings"]} == set(index[REPO]["files"])
    tree = {e["path"]: e for e in requests.get(f"{url}/api/models/{REPO}/tree/{commit}?recursive=true", timeout=5).json()}
    shard = "model-00001-of-00002.safetensors"
    assert tree[shard]["lfs"]["oid"] == index[REPO]["files"][shard]["sha256"]
    assert "lfs" not in tree["config.json"] and tree["config.json"]["oid"] == index[REPO]["files"]["config.json"]["blob_id"]
    head = requests.head(f"{url}/{REPO}/resolve/main/{shard}", timeout=5)
    assert head.headers["X-Repo-Commit"] == commit
    assert head.headers["X-Linked-Etag"] == f'"{index[REPO]["files"][shard]["sha256"]}"'
    part = requests.get(f"{url}/{REPO}/resolve/main/{shard}", headers={"Range": "bytes=100-"}, timeout=5)
    assert part.status_code == 206 and part.headers["Content-Range"].startswith("bytes 100-")
    config = requests.get(f"{url}/{REPO}/resolve/main/config.json", timeout=5).json()
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"] and config["hidden_size"] == 3584
    missing = requests.get(f"{url}/api/models/Qwen/nope/revision/main", timeout=5)
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "RepoNotFound"


def test_hub_modelscope_api_and_lfs_batch(hub):
    url, index = hub
    files = requests.get(f"{url}/api/v1/models/{REPO}/repo/files?Revision=master&Recursive=True", timeout=5).json()
    listed = {f["Path"]: f["Sha256"] for f in files["Data"]["Files"]}
    assert listed == {n: m["sha256"] for n, m in index[REPO]["files"].items()}
    body = requests.get(f"{url}/api/v1/models/{REPO}/repo?Revision=master&FilePath=config.json", timeout=5).content
    assert json.loads(body)["model_type"] == "qwen2_5_vl"
    oid = index[REPO]["files"]["model-00002-of-00002.safetensors"]["sha256"]
    batch = requests.post(f"{url}/{REPO}.git/info/lfs/objects/batch", timeout=5,
                          json={"operation": "download", "objects": [{"oid": oid, "size": 1}]}).json()
    href = batch["objects"][0]["actions"]["download"]["href"]
    import hashlib

    assert hashlib.sha256(requests.get(href, timeout=5).content).hexdigest() == oid
    log = requests.get(f"{url}/_standin/log", timeout=5).json()
    assert any(e["path"].startswith("/lfs/objects/") for e in log)
