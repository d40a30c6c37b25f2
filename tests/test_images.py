"""Image layers built without a Docker engine: exact digests, tar contents, config wiring."""

import gzip
import hashlib
import io
import json
import tarfile

from vlmfleet.lab import LabConfig
from vlmfleet.lab.images import Image, files_layer


def test_files_layer_is_reproducible_and_digests_match_content(tmp_path):
    cfg = LabConfig(root=tmp_path)
    files = {"usr/local/bin/hi": (b"#!/bin/sh\necho hi\n", 0o755)}
    a, b = files_layer(cfg, files), files_layer(cfg, files)
    assert a == b
    gz = a.path.read_bytes()
    assert a.digest == "sha256:" + hashlib.sha256(gz).hexdigest()
    assert a.size == len(gz)
    raw = gzip.decompress(gz)
    assert a.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert sorted(names) == ["usr", "usr/local", "usr/local/bin", "usr/local/bin/hi"]
    assert names["usr/local/bin/hi"].mode == 0o755 and names["usr"].isdir()


def test_changed_content_changes_the_digest(tmp_path):
    cfg = LabConfig(root=tmp_path)
    one = files_layer(cfg, {"a": (b"1", 0o644)})
    two = files_layer(cfg, {"a": (b"2", 0o644)})
    assert one.digest != two.digest


def test_image_config_lists_layer_diff_ids_in_order(tmp_path):
    cfg = LabConfig(root=tmp_path)
    l1 = files_layer(cfg, {"a": (b"1", 0o644)})
    l2 = files_layer(cfg, {"b": (b"2", 0o644)})
    config = json.loads(Image([l1, l2], entrypoint=["/a"], cmd=["x"], exposed_ports=[8000]).config_json())
    assert config["rootfs"] == {"type": "layers", "diff_ids": [l1.diff_id, l2.diff_id]}
    assert config["config"]["Entrypoint"] == ["/a"] and config["config"]["Cmd"] == ["x"]
    assert config["config"]["ExposedPorts"] == {"8000/tcp": {}}
