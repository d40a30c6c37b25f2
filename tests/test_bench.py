"""`vlmfleet bench`: the report's maths by value, the PNGs it makes and draws, the workload's framing, target
resolution from an inventory, one-line errors, and one short run against the serving stand-in here."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image
from test_standins import start_vllm

from vlmfleet.bench import report, run, workload
from vlmfleet.bench.workload import Answer
from vlmfleet.fleet import Member

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows_of(*specs):
    """Rows as report.read_rows gives them: (time, kind, image, ok, ttft, e2e, tokens)."""
    return [{"time": t, "target": "http://x:8000", "kind": k, "image": i, "ok": ok, "status": 200 if ok else 500,
             "ttft_s": ttft, "e2e_s": e2e, "output_tokens": n, "error": "" if ok else "HTTP 500"}
            for t, k, i, ok, ttft, e2e, n in specs]


ROWS = rows_of(
    (100.0, "text", "", True, 0.1, 1.1, 11),
    (100.5, "image", "448x448", True, 0.2, 2.2, 21),
    (101.0, "text", "", True, 0.3, 1.3, 11),
    (101.5, "image", "1280x720", True, 0.5, 3.5, 31),
    (102.0, "text", "", False, None, 0.4, 0),
)


def test_percentile_interpolates_between_ranks():
    assert report.percentile([4, 1, 3, 2], 50) == 2.5
    assert report.percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert report.percentile([1, 2, 3, 4], 0) == 1 and report.percentile([1, 2, 3, 4], 100) == 4
    assert report.percentile([7], 99) == 7 and report.percentile([], 50) is None


def test_summary_by_group_exact_values():
    table = {r["group"]: r for r in report.summary(ROWS)}
    assert list(table) == ["all", "text", "image", "image 448x448", "image 1280x720"]
    a = table["all"]
    assert report.wall_time(ROWS) == 5.0  # 100.0 .. 101.5 + 3.5
    assert (a["requests"], a["ok"], a["errors"], a["error_rate"]) == (5, 4, 1, 0.2)
    assert a["ttft_p50_s"] == pytest.approx(0.25) and a["ttft_p90_s"] == pytest.approx(0.44)
    assert a["e2e_p50_s"] == pytest.approx(1.75) and a["e2e_p99_s"] == pytest.approx(3.461)  # 2.2 + 0.97 x 1.3
    assert a["output_tokens"] == 74 and a["output_tokens_per_s"] == pytest.approx(74 / 5)
    assert a["mean_decode_tokens_per_s"] == pytest.approx(10.0)  # (11-1)/1, (21-1)/2, (11-1)/1, (31-1)/3
    t = table["text"]
    assert (t["requests"], t["errors"], t["error_rate"]) == (3, 1, pytest.approx(1 / 3))
    assert t["ttft_p50_s"] == pytest.approx(0.2) and t["output_tokens_per_s"] == pytest.approx(22 / 5)
    big = table["image 1280x720"]
    assert (big["requests"], big["ttft_p99_s"], big["e2e_p50_s"]) == (1, 0.5, 3.5)
    only_errors = report.summary(rows_of((0.0, "text", "", False, None, 1.0, 0)))[0]
    assert only_errors["ttft_p50_s"] is None and only_errors["mean_decode_tokens_per_s"] is None
    assert only_errors["error_rate"] == 1.0


def test_throughput_bins_spread_tokens_over_the_decode():
    assert report.throughput_bins(rows_of((0.0, "text", "", True, 0.0, 2.0, 10))) == [5.0, 5.0]
    bins = report.throughput_bins(rows_of((0.0, "text", "", True, 0.5, 1.5, 10), (1.0, "text", "", True, 0.0, 1.0, 4)))
    assert bins == pytest.approx([5.0, 9.0])


def test_summary_csv_text_table_and_plot(tmp_path):
    table = report.summary(ROWS)
    report.write_summary(tmp_path / "summary.csv", table)
    with open(tmp_path / "summary.csv") as fh:
        written = list(csv.DictReader(fh))
    assert [r["group"] for r in written] == ["all", "text", "image", "image 448x448", "image 1280x720"]
    assert written[0]["error_rate"] == "0.2" and written[0]["ttft_p50_s"] == "0.25"
    assert written[0]["output_tokens"] == "74" and float(written[0]["output_tokens_per_s"]) == 14.8
    text = report.text_table(table)
    assert text.splitlines()[0].split()[:3] == ["GROUP", "REQS", "ERR"]
    assert text.splitlines()[1].split()[:9] == ["all", "5", "1", "250", "/", "470", "/", "494", "1750"]
    report.plot(tmp_path / "plot.png", ROWS, table)
    data = (tmp_path / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.size == (1620, 495) and len(img.convert("L").getcolors(1 << 16)) > 10  # drawn, not blank


def test_read_rows_types_the_csv(tmp_path):
    path = tmp_path / "requests.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=workload.COLUMNS)
        w.writeheader()
        w.writerow(workload.row(100.25, "http://x:8000", (448, 448), 200, 0.125, 1.5, 16, None))
        w.writerow(workload.row(101.0, "http://x:8000", None, 0, None, 0.01, 0, "no answer:\nConnectionError"))
    a, b = report.read_rows(path)
    assert (a["time"], a["kind"], a["image"], a["ok"], a["ttft_s"], a["e2e_s"], a["output_tokens"]) == \
        (100.25, "image", "448x448", True, 0.125, 1.5, 16)
    assert (b["kind"], b["ok"], b["status"], b["ttft_s"], b["error"]) == \
        ("text", False, 0, None, "no answer: ConnectionError")
    assert report.read_rows(tmp_path / "missing.csv") == []


@pytest.mark.parametrize("size", [(1, 1), (448, 448), (1280, 720), (3, 700)])
def test_png_decodes_at_the_asked_size(size):
    img = Image.open(io.BytesIO(workload.png(*size)))
    img.load()  # decodes every row (a bad CRC, filter or length raises)
    assert img.size == size and img.mode == "RGB"
    if size[0] > 1:
        assert img.getpixel((0, 0)) == (0, 0, 128) and img.getpixel((size[0] - 1, size[1] - 1))[0] == 255


def test_the_locustfile_uses_this_png_generator():
    text = open(run.LOCUSTFILE).read()
    assert "from vlmfleet.bench.workload import" in text and " png" in text and os.path.isabs(run.LOCUSTFILE)


def test_image_sizes_and_the_request_mix():
    assert workload.parse_sizes("448x448, 1280X720") == [(448, 448), (1280, 720)]
    for bad in ("448", "0x10", "448x448,", "10x9000", "axb"):
        with pytest.raises(workload.WorkloadError, match="--image-sizes"):
            workload.parse_sizes(bad)
    sizes = [(448, 448), (1280, 720)]
    mix = [workload.pick(k, 0.5, sizes) for k in range(8)]
    assert [kind for kind, _ in mix] == ["text", "image"] * 4
    assert [s for _, s in mix if s] == [(448, 448), (1280, 720)] * 2
    assert sum(workload.pick(k, 0.3, sizes)[0] == "image" for k in range(100)) == 30
    assert {workload.pick(k, 0.0, sizes)[0] for k in range(10)} == {"text"}
    assert {workload.pick(k, 1.0, sizes)[0] for k in range(10)} == {"image"}


def test_chat_body_streams_with_usage_and_a_data_url():
    body = workload.chat_body("q7", (2, 2), 64)
    assert (body["stream"], body["stream_options"], body["max_tokens"], body["ignore_eos"]) == \
        (True, {"include_usage": True}, 64, True)
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert workload.chat_body("q7", None, 8)["messages"][0]["content"] == workload.TEXT_PROMPT


def test_answer_reads_an_event_stream():
    a = Answer()
    lines = ['data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}', "",
             'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}', "", ": keep-alive",
             'data: {"choices": [{"index": 0, "delta": {"content": " there"}}]}', "",
             'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}', "", ]
    firsts = [a.feed(line) for line in lines]
    assert firsts.index(True) == 2 and firsts.count(True) == 1  # the first content, not the role chunk
    assert (a.tokens, a.finish_reason, a.problem()) == (2, "length", "the event stream ended without data: [DONE]")
    a.feed('data: {"choices": [], "usage": {"completion_tokens": 3}}')
    a.feed(b"data: [DONE]")
    assert (a.done, a.tokens, a.problem()) == (True, 3, None)  # the server's count wins
    bad = Answer()
    bad.feed('data: {"error": {"message": "boom", "code": 500}}')
    assert bad.problem() == "boom"
    empty = Answer()
    empty.feed("data: [DONE]")
    assert empty.problem() == "the answer had no content"


def member(name, groups, profile=None, **data):
    return Member(name, data.pop("ssh_hostname", name), tuple(groups), profile, {"vlm_profile": profile, **data})


FLEET = [member("h1", ["qwen7b"], "qwen7b", ssh_hostname="10.0.0.1", api_key_file="secrets/k"),
         member("h2", ["qwen7b"], "qwen7b", ssh_hostname="10.0.0.2", api_key_file="secrets/k"),
         member("h3", ["qwen72b_awq"], "qwen72b_awq", ssh_hostname="10.0.0.3", api_port=8001,
                served_model_name="big"),
         member("ops", ["monitoring", "gateway"], ssh_hostname="10.0.0.9", gateway_ports={"qwen7b": 9000})]


def test_inventory_targets_host_group_and_fleet():
    (h,) = run.inventory_targets(FLEET, "inv.py", "h3", None, False)
    assert (h.url, h.model, h.what) == ("http://10.0.0.3:8001", "big", "h3")
    (g,) = run.inventory_targets(FLEET, "inv.py", None, "qwen7b", False)
    assert (g.url, g.model, g.what, g.key_file) == ("http://10.0.0.9:9000", "qwen2.5-vl-7b-instruct",
                                                    "group qwen7b at gateway ops", "secrets/k")
    every = run.inventory_targets(FLEET, "inv.py", None, None, True)  # qwen72b_awq has no gateway port: its host
    assert [t.url for t in every] == ["http://10.0.0.3:8001", "http://10.0.0.9:9000"]
    no_gateway = FLEET[:3]
    assert [t.what for t in run.inventory_targets(no_gateway, "inv.py", None, None, True)] == ["h3", "h1", "h2"]
    with pytest.raises(run.BenchUsageError, match="no host in group 'gateway'.*add one and run deploys/gateway.py"):
        run.inventory_targets(no_gateway, "inv.py", None, "qwen7b", False)
    with pytest.raises(run.BenchUsageError, match="gives no port to qwen72b_awq: add 'qwen72b_awq': <port>"):
        run.inventory_targets(FLEET, "inv.py", None, "qwen72b_awq", False)
    with pytest.raises(run.BenchUsageError, match=r"--host h9: no such host in inv.py \(hosts: h1, h2, h3, ops\)"):
        run.inventory_targets(FLEET, "inv.py", "h9", None, False)
    with pytest.raises(run.BenchUsageError, match="--host ops: serves no model"):
        run.inventory_targets(FLEET, "inv.py", "ops", None, False)
    with pytest.raises(run.BenchUsageError, match=r"--group nope: .*\(profiles served: qwen72b_awq, qwen7b\)"):
        run.inventory_targets(FLEET, "inv.py", None, "nope", False)
    assert run.base_url("fd00::1", 8000) == "http://[fd00::1]:8000"


def test_key_file_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k").write_text("sk-1\nignored\n")
    (tmp_path / "empty").write_text("\n")
    t = [run.Target("http://x", None, "h1", "k")]
    assert run.key_file(None, t) == str(tmp_path / "k")  # from the data, relative to the current folder
    assert run.key_file(None, [run.Target("http://x", None, "h1")]) is None
    with pytest.raises(run.BenchUsageError, match="--api-key-file nope: no such file on this machine"):
        run.key_file("nope", t)
    with pytest.raises(run.BenchUsageError, match=r"api_key_file \(host data\) empty: its first line is empty"):
        run.key_file(None, [run.Target("http://x", None, "h1", "empty")])
    with pytest.raises(run.BenchUsageError, match="different api_key_file"):
        run.key_file(None, [*t, run.Target("http://y", None, "h2", "empty")])


def test_parse_duration():
    assert [run.parse_duration(t) for t in ("60s", "2m", "1h", "90", "1.5s")] == [60, 120, 3600, 90, 1.5]
    for bad in ("0s", "-1", "fast", "25h", ""):
        with pytest.raises(run.BenchUsageError, match="--duration"):
            run.parse_duration(bad)


def bench_cli(*args, cwd=REPO, timeout=90):
    return subprocess.run([sys.executable, "-m", "vlmfleet.cli", "bench", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    ((), "no target: give --url URL, or INVENTORY"),
    (("--url", "http://127.0.0.1:9", "inventories/prod.py"), "--url and an INVENTORY"),
    (("inventories/prod.py",), "give exactly one of --host NAME, --group PROFILE, --fleet"),
    (("--url", "10.0.0.1:8000"), "--url '10.0.0.1:8000': must be a base URL"),
    (("--url", "http://127.0.0.1:9", "--image-weight", "2"), "--image-weight 2: must be between 0 and 1"),
    (("--url", "http://127.0.0.1:9", "--duration", "soon"), "--duration 'soon'"),
    (("--url", "http://127.0.0.1:9", "--api-key-file", "no/such/key"), "--api-key-file no/such/key: no such file"),
    (("nope.py", "--fleet"), "inventory 'nope.py' is not a file"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    proc = bench_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("vlmfleet bench: error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_refused_connection_is_one_line_exit_1(tmp_path):
    from test_standins import free_port

    proc = bench_cli("--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "r"))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "connection refused — is the server up" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def standin(tmp_path):
    proc, url = start_vllm(tmp_path, flags=("--max-num-seqs", "8"), VLLM_STANDIN_TOKENS_PER_S="1000",
                           VLLM_STANDIN_PREFILL_TOKENS_PER_S="4000")
    yield url
    proc.terminate()
    proc.wait(10)


def test_a_wrong_key_is_one_line_exit_1(standin, tmp_path):
    (tmp_path / "key").write_text("sk-wrong\n")
    proc = bench_cli("--url", standin, "--api-key-file", str(tmp_path / "key"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 1 and "401 Unauthorized to the key from the key file" in proc.stderr, proc.stderr


def test_bench_against_the_standin_writes_the_report(standin, tmp_path):
    (tmp_path / "key").write_text("sk-test\n")
    out = tmp_path / "report"
    proc = bench_cli("--url", standin, "--api-key-file", str(tmp_path / "key"), "--duration", "15s", "--requests",
                     "20", "--users", "4", "--max-tokens", "40", "--image-sizes", "224x224,1288x728", "--out",
                     str(out), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sk-test" not in proc.stdout + proc.stderr + (out / "locust.log").read_text()
    assert "sk-test" not in (out / "settings.json").read_text()
    rows = report.read_rows(out / "requests.csv")
    assert len(rows) == 20 and all(r["ok"] and r["status"] == 200 for r in rows), [r["error"] for r in rows]
    assert all(0 < r["ttft_s"] < r["e2e_s"] and r["output_tokens"] == 40 for r in rows)
    assert sorted({r["image"] for r in rows}) == ["", "1288x728", "224x224"]
    assert {r["kind"] for r in rows} == {"text", "image"}
    with open(out / "summary.csv") as fh:
        table = {r["group"]: r for r in csv.DictReader(fh)}
    assert list(table) == ["all", "text", "image", "image 224x224", "image 1288x728"]
    assert table["all"]["requests"] == "20" and table["all"]["errors"] == "0"
    assert int(table["all"]["output_tokens"]) == 800
    assert float(table["image 1288x728"]["ttft_p50_s"]) > float(table["image 224x224"]["ttft_p99_s"]) + 0.15
    decode = float(table["all"]["mean_decode_tokens_per_s"])
    assert 500 < decode <= 1100, decode  # the stand-in's 1000 tokens/s, less the client's overhead
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert proc.stdout.splitlines()[1].split()[:3] == ["GROUP", "REQS", "ERR"]
    assert json.loads((out / "settings.json").read_text())["requests"] == 20


def test_an_error_rate_over_the_bound_exits_1(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    with open(folder / "requests.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=workload.COLUMNS)
        w.writeheader()
        w.writerow(workload.row(1.0, "http://x", None, 200, 0.1, 0.5, 8, None))
        w.writerow(workload.row(1.1, "http://x", None, 503, None, 0.01, 0, "HTTP 503: busy"))
    assert run.finish(folder, 0, 60, 0.5) == 0
    assert run.finish(folder, 0, 60, 0.1) == 1
    (folder / "locust.log").write_text("boom\n")
    (folder / "requests.csv").unlink()
    with pytest.raises(run.BenchError, match="no request was recorded .*Locust exited 1: boom"):
        run.finish(folder, 1, 60, 0.0)


def test_the_cli_registers_bench():
    from vlmfleet.cli import build_parser

    args = build_parser().parse_args(["bench", "--url", "http://x:1", "--requests", "5"])
    assert isinstance(args, argparse.Namespace) and args.requests == 5 and args.func.__name__ == "_bench"
