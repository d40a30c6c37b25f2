"""What a bench user sends and how it reads the answer — pure Python, no Locust, so it is tested by value.

Requests are chat completions in OpenAI's format, streamed (``"stream": true``) so that the time to the first
token can be seen, with ``stream_options.include_usage`` so that the server counts the output tokens, and vLLM's
``ignore_eos`` so that every answer is ``max_tokens`` long (as vLLM's own serving benchmark does). Image messages
carry a PNG of the asked size as a ``data:`` URL; the PNG is made here with zlib and struct.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from dataclasses import dataclass

#: the per-request CSV's columns, in order (requests.csv)
COLUMNS = ("time", "target", "kind", "image", "ok", "status", "ttft_s", "e2e_s", "output_tokens", "error")
TEXT_PROMPT = "Write a short paragraph about load testing a vision language model server."
IMAGE_PROMPT = "Describe this image in detail."


class WorkloadError(ValueError):
    """A workload option that cannot be used: the message names the option, the value and an example."""


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Image sizes from ``--image-sizes``.

    + text: e.g. ``"448x448,1280x720"`` -> ``[(448, 448), (1280, 720)]``; each side 1..8192 pixels
    """
    sizes = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", part)
        if not m or not (1 <= int(m[1]) <= 8192 and 1 <= int(m[2]) <= 8192):
            raise WorkloadError(f"--image-sizes {text!r}: {part.strip()!r} is not WIDTHxHEIGHT with sides of 1 to "
                                "8192 pixels (e.g. --image-sizes 448x448,1280x720)")
        sizes.append((int(m[1]), int(m[2])))
    return sizes


def png(width: int, height: int) -> bytes:
    """An RGB PNG of ``width`` x ``height`` pixels (a colour gradient), e.g. ``png(448, 448)``."""
    def box(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    line = bytearray(1 + 3 * width)  # filter byte 0 (none), then R G B per pixel
    line[1::3] = bytes(x * 255 // max(1, width - 1) for x in range(width))
    line[3::3] = b"\x80" * width
    rows = bytearray()
    for y in range(height):
        line[2::3] = bytes([y * 255 // max(1, height - 1)]) * width
        rows += line
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + box(b"IHDR", header) + box(b"IDAT", zlib.compress(bytes(rows), 6)) + box(b"IEND", b"")


def pick(k: int, image_weight: float, sizes: list[tuple[int, int]]) -> tuple[str, tuple[int, int] | None]:
    """The ``k``-th request's kind (0-based): ``"image"`` for a share ``image_weight`` of the requests, spread evenly
    (not at random, so that a short run has every kind), image sizes in turn.

    + image_weight: e.g. 0.5: every other request has an image; 0: text only; 1: images only
    + sizes: e.g. ``[(448, 448), (1280, 720)]``
    E.g. ``pick(1, 0.5, [(448, 448)]) == ("image", (448, 448))``, ``pick(0, 0.5, ...) == ("text", None)``.
    """
    images_before = int(k * image_weight + 1e-9)
    if not sizes or int((k + 1) * image_weight + 1e-9) == images_before:
        return "text", None
    return "image", sizes[images_before % len(sizes)]


def size_label(size: tuple[int, int] | None) -> str:
    """``(448, 448)`` -> ``"448x448"``; None -> ``""``."""
    return f"{size[0]}x{size[1]}" if size else ""


def chat_body(model: str, size: tuple[int, int] | None, max_tokens: int, image: bytes | None = None) -> dict:
    """The JSON body of one streamed chat completion.

    + model: the served name, e.g. ``"qwen2.5-vl-7b-instruct"``
    + size: the image's size, None for a text message
    + max_tokens: e.g. 128: every answer is that long (``ignore_eos``)
    + image: the PNG (default: made here at ``size``)
    """
    if size is None:
        content: str | list = TEXT_PROMPT
    else:
        data = base64.b64encode(image if image is not None else png(*size)).decode()
        content = [{"type": "text", "text": IMAGE_PROMPT},
                   {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


@dataclass
class Answer:
    """What a streamed answer told, read line by line: :meth:`feed` each line, then :attr:`done`."""

    content_chunks: int = 0
    usage_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False
    error: str | None = None

    def feed(self, line: str | bytes) -> bool:
        """Read one line of the event stream; True when it carried the first content of the answer.

        + line: e.g. ``'data: {"choices": [{"delta": {"content": "Hi"}}]}'``, ``"data: [DONE]"`` or ``""``
        """
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        if not line.startswith("data:"):
            return False  # blank separators, comments (": ping"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return False
        try:
            event = json.loads(data)
        except ValueError:
            self.error = f"not JSON in the event stream: {data[:80]!r}"
            return False
        if "error" in event:
            self.error = str(event["error"].get("message") if isinstance(event["error"], dict) else event["error"])
            return False
        if event.get("usage"):
            self.usage_tokens = int(event["usage"].get("completion_tokens") or 0)
        first = False
        for choice in event.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                first = self.content_chunks == 0
                self.content_chunks += 1
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return first

    @property
    def tokens(self) -> int:
        """Output tokens: the server's count when it sent usage, else the content chunks (one token each)."""
        return self.usage_tokens if self.usage_tokens is not None else self.content_chunks

    def problem(self) -> str | None:
        """Why the answer is not a complete one, None when it is."""
        if self.error:
            return self.error
        if not self.done:
            return "the event stream ended without data: [DONE]"
        if self.content_chunks == 0:
            return "the answer had no content"
        return None


def row(time_s: float, target: str, size: tuple[int, int] | None, status: int, ttft_s: float | None,
        e2e_s: float | None, tokens: int, error: str | None) -> dict:
    """One requests.csv row (see COLUMNS).

    + time_s: when the request started, seconds since the epoch, e.g. 1767225600.25
    + target: the base URL, e.g. ``"http://10.77.0.11:8000"``
    + status: the HTTP status, 0 when there was no answer
    + error: why it failed (one line), None when it succeeded
    """
    return {"time": f"{time_s:.6f}", "target": target, "kind": "image" if size else "text", "image": size_label(size),
            "ok": 0 if error else 1, "status": status, "ttft_s": "" if ttft_s is None else f"{ttft_s:.6f}",
            "e2e_s": "" if e2e_s is None else f"{e2e_s:.6f}", "output_tokens": tokens,
            "error": " ".join(str(error or "").split())[:300]}
