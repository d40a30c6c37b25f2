"""The Locust file of ``vlmfleet bench``: streamed chat completions, text and image, against one or more targets.

Loaded by absolute path (``python -m locust -f .../vlmfleet/bench/locustfile.py``); ``vlmfleet bench`` writes its
settings to a JSON file named by VLMFLEET_BENCH_CONFIG:

    {"targets": [{"url": "http://10.77.0.11:8000", "model": "qwen2.5-vl-7b-instruct"}],
     "image_sizes": [[448, 448], [1280, 720]], "image_weight": 0.5, "max_tokens": 128,
     "requests": 30, "timeout_s": 120, "requests_csv": "bench-.../requests.csv"}

The API key is read from the first line of the file VLMFLEET_BENCH_KEY_FILE names (no key when unset) and sent
as ``Authorization: Bearer``; it is never in argv, the settings or the output. Users take the targets in turn
(user i the target i mod n). Each request's time to first token is measured to the first content delta of the
stream, its end-to-end time to ``data: [DONE]``; one row per request goes to requests_csv (workload.COLUMNS).
When ``requests`` have finished the runner quits (Locust has no request-count bound of its own); requests still
running when the run time ends are let finish for Locust's --stop-timeout, and those it cuts are not recorded.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import gevent
from locust import HttpUser, events, task
from locust.exception import StopUser

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # vlmfleet, by path
from vlmfleet.bench.workload import COLUMNS, Answer, chat_body, pick, png, row  # noqa: E402

SETTINGS = json.load(open(os.environ["VLMFLEET_BENCH_CONFIG"]))
COUNTS = {"users": 0, "started": 0, "finished": 0}
IMAGES: dict[tuple[int, int], bytes] = {}

__all__ = ["ChatUser", "png"]


def api_key() -> str | None:
    """The first line of the key file VLMFLEET_BENCH_KEY_FILE names; None when it names none."""
    path = os.environ.get("VLMFLEET_BENCH_KEY_FILE")
    if not path:
        return None
    with open(path) as fh:
        return fh.readline().strip() or None


def image(size: tuple[int, int]) -> bytes:
    """The PNG of one size, made once."""
    if size not in IMAGES:
        IMAGES[size] = png(*size)
    return IMAGES[size]


def write_row(values: dict) -> None:
    path = SETTINGS["requests_csv"]
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(values)


@events.test_start.add_listener
def _warm(environment, **_kw):
    for size in SETTINGS["image_sizes"]:
        image(tuple(size))


class ChatUser(HttpUser):
    """One client: streamed chat completions back to back against its target."""

    host = SETTINGS["targets"][0]["url"]

    def on_start(self) -> None:
        self.target = SETTINGS["targets"][COUNTS["users"] % len(SETTINGS["targets"])]
        COUNTS["users"] += 1
        key = api_key()
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @task
    def chat(self) -> None:
        limit = SETTINGS.get("requests")
        if limit is not None and COUNTS["started"] >= limit:
            raise StopUser()
        k = COUNTS["started"]
        COUNTS["started"] += 1
        _kind, size = pick(k, SETTINGS["image_weight"], [tuple(s) for s in SETTINGS["image_sizes"]])
        body = chat_body(self.target["model"], size, SETTINGS["max_tokens"], image(size) if size else None)
        self.send(body, size)
        COUNTS["finished"] += 1
        if limit is not None and COUNTS["finished"] >= limit:
            gevent.spawn(self.environment.runner.quit)

    def send(self, body: dict, size: tuple[int, int] | None) -> None:
        url = self.target["url"]
        name = f"image {size[0]}x{size[1]}" if size else "text"
        started, t0 = time.time(), time.perf_counter()
        ttft = e2e = None
        answer, status, error = Answer(), 0, None
        with self.client.post(f"{url}/v1/chat/completions", json=body, headers=self.headers, stream=True,
                              catch_response=True, name=name, timeout=SETTINGS["timeout_s"]) as resp:
            status = resp.status_code or 0
            try:
                if getattr(resp, "error", None) is not None and not status:
                    error = f"no answer: {resp.error.__class__.__name__}: {resp.error}"
                elif status != 200:
                    error = f"HTTP {status}: {resp.text[:200]}"
                else:
                    for line in resp.iter_lines():
                        if answer.feed(line) and ttft is None:
                            ttft = time.perf_counter() - t0
                        if answer.done or answer.error:
                            break
                    e2e = time.perf_counter() - t0
                    error = answer.problem()
            except Exception as exc:  # the stream broke off: a failed request, not a crashed user
                error = f"{exc.__class__.__name__}: {exc}"
            if error:
                resp.failure(error)
                e2e = e2e if e2e is not None else time.perf_counter() - t0
            else:
                resp.success()
        write_row(row(started, url, size, status, ttft, e2e, answer.tokens, error))
