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


@pytest.fixture(params=["0.8.2", "0.33.0"])
def vllm(request, tmp_path):
    version = request.param
    model = tmp_path / "Qwen2.5-VL-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"],
                                                   "model_type": "qwen2_5_vl"}))
    port = free_port()
    limit = "image=2,video=0" if version == "0.8.2" else '{"image":2,"video":0}'
    proc = subprocess.Popen(
        [sys.executable, str(PKG / "lab/standins/vllm_standin.py"), "serve", str(model), "--served-model-name", "q7",
         "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--limit-mm-per-prompt", limit],
        env={"VLLM_STANDIN_VERSION": version, "VLLM_API_KEY": "sk-test", "VLLM_STANDIN_LOAD_SECONDS": "0.2",
             "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_port(port, proc)
    yield version, f"http://127.0.0.1:{port}"
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
