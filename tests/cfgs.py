"""Checked configurations for tests: ``cfg(api_port=8001)`` is host h1 in profile qwen7b with an API key file
(not read: check_files is off) plus the given data."""

from vlmfleet.config import config_for

BASE = {"vlm_profile": "qwen7b", "api_key_file": "/k"}


def cfg(host: str = "h1", **data):
    return config_for(host, {**BASE, **data}, check_files=False)
