"""The hello stage's templates, rendered exactly as pyinfra renders them and checked by systemd-analyze."""

import json
import subprocess

import pytest
from pyinfra.api.util import get_template

from vlmfleet.paths import template, templates_dir


def render(name, **values):
    return get_template(template(name)).render(values)


def test_templates_are_found_by_absolute_path_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert templates_dir().is_absolute()
    assert template("hello/index.json.j2").startswith(str(templates_dir()))


def test_identity_page_is_valid_json_with_host_and_groups():
    text = render("hello/index.json.j2", host_name="h1", groups=["lab", "qwen7b"], version="0.1.0")
    assert json.loads(text) == {"host": "h1", "groups": ["lab", "qwen7b"], "vlmfleet": "0.1.0"}


def test_unit_renders_exactly():
    text = render("hello/vlmfleet-hello.service.j2", port=9099, directory="/var/lib/vlmfleet/hello")
    assert "ExecStart=/usr/bin/python3 -m http.server --bind 0.0.0.0 --directory /var/lib/vlmfleet/hello 9099\n" in text
    assert "DynamicUser=yes\n" in text and "WantedBy=multi-user.target\n" in text


def test_unit_passes_systemd_analyze_verify_without_any_warning(tmp_path):
    unit = tmp_path / "vlmfleet-hello.service"
    unit.write_text(render("hello/vlmfleet-hello.service.j2", port=9099, directory="/var/lib/vlmfleet/hello"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    # systemd-analyze only warns (rc 0) about unknown keys and bad values: any output is a failure
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_missing_template_names_the_folder():
    with pytest.raises(FileNotFoundError, match="nope.j2 missing from"):
        template("nope.j2")
