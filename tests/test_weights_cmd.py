"""What the weights stage runs: exact commands per source, never a token in argv."""

from vlmfleet.weights import fetch_command, pip_args, revision

from cfgs import cfg


def test_huggingface_through_a_mirror():
    s = cfg(hf_endpoint="https://hf-mirror.com", hf_token_file="secrets/hf")
    assert fetch_command(s) == (
        "/opt/vlmfleet/venv/bin/python /opt/vlmfleet/bin/vlmfleet-fetch --source huggingface "
        "--repo Qwen/Qwen2.5-VL-7B-Instruct --revision main --dest /srv/models/Qwen2.5-VL-7B-Instruct "
        "--endpoint https://hf-mirror.com --verify full --token-file /etc/vlmfleet/secrets/hub-token")


def test_modelscope_and_git_lfs_use_master_and_modelscope_ids():
    ms = cfg(weights_source="modelscope")
    assert revision(ms) == "master"
    assert fetch_command(ms, check=True).endswith(
        "--revision master --dest /srv/models/Qwen2.5-VL-7B-Instruct --endpoint https://www.modelscope.cn "
        "--verify full --check")
    git = cfg(weights_source="git-lfs", weights_revision="v1.0")
    assert "--source git-lfs --repo Qwen/Qwen2.5-VL-7B-Instruct --revision v1.0" in fetch_command(git)


def test_pip_trusts_only_a_plain_http_mirror():
    assert pip_args(cfg()) == "--index-url https://pypi.org/simple"
    assert pip_args(cfg(pip_index_url="http://10.77.0.1:3141/simple")) == \
        "--index-url http://10.77.0.1:3141/simple --trusted-host 10.77.0.1"


def test_the_fetch_tool_and_the_stages_agree_on_the_manifest_name():
    import re
    from pathlib import Path

    from vlmfleet.weights import MANIFEST

    tool = (Path(__file__).resolve().parent.parent / "vlmfleet/remote/vlmfleet_fetch.py").read_text()
    assert re.search(rf'^MANIFEST = "{re.escape(MANIFEST)}"$', tool, re.M)


def test_the_units_guard_refuses_an_unverified_folder_and_accepts_any_verified_revision(tmp_path):
    """vlmfleet-fetch --check --require (the unit's ExecStartPre): exit 3 with its message unless the folder is a
    verified copy; a copy of another revision passes (a release rolled back to after a revision change)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parent.parent / "vlmfleet/remote/vlmfleet_fetch.py"
    dest = tmp_path / "Qwen2.5-VL-7B-Instruct"
    dest.mkdir()

    def guard(revision="main"):
        return subprocess.run([sys.executable, str(tool), "--source", "huggingface", "--repo", "Qwen/X", "--revision",
                               revision, "--dest", str(dest), "--endpoint", "http://hub", "--verify", "size", "--check",
                               "--require"], capture_output=True, text=True)

    missing = guard()
    assert missing.returncode == 3
    assert f"{dest} is not a verified copy of Qwen/X@main (state missing): refusing to serve it — fix: run the " \
           "weights stage" in missing.stderr
    (dest / "a.bin").write_bytes(b"1234")
    (dest / ".vlmfleet-verified.json").write_text(json.dumps({
        "source": "huggingface", "repo": "Qwen/X", "revision": "v1", "files": {"a.bin": {"size": 4, "sha256": "x"}}}))
    assert guard("main").returncode == 0 and guard("v1").returncode == 0
    (dest / "a.bin").write_bytes(b"12")  # a fetch rewriting it
    short = guard("v1")
    assert short.returncode == 3 and "(state corrupt: a.bin)" in short.stderr
