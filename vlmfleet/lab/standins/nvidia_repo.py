"""NVIDIA CUDA apt repository STAND-IN for the vlmfleet lab (NVIDIA's repository cannot be reached from the lab,
and its driver cannot run without a GPU).

Builds a flat apt repository laid out like NVIDIA's, ``<www>/compute/cuda/repos/{debian12,debian13}/x86_64/``
with ``Packages``, ``Packages.gz``, ``Release``, ``InRelease``, ``Release.gpg``, the ``.deb`` files and the
signing key as ``3bf863cc.pub`` (NVIDIA's file name; the content is the lab's own key, generated once with gpg
and kept in the lab cache). ``vlmfleet lab up`` serves it on the bridge address (services.py) and group_data/lab.py
points ``nvidia_cuda_repo_url``, ``nvidia_cuda_repo_key_url`` and ``nvidia_cuda_repo_key_fingerprint`` at it.

The packages carry NVIDIA's names and versions, for two branches (BRANCHES), and stand-ins instead of a driver:

    cuda-drivers-<B>            the metapackage: the three below at *at least* its version (``>=``, as NVIDIA's:
                                without a pin apt takes the newest branch's); conflicts with (and replaces) the
                                other branch's, so installing one branch moves the host off the other
    cuda-drivers                the same, unversioned (the latest branch unless pinned)
    nvidia-driver-pinning-<B>   /etc/apt/preferences.d/nvidia-driver-pin: every driver package at ``<B>.*``,
                                priority 1000 (NVIDIA: install it before the driver to track a branch)
    nvidia-driver-cuda          the nvidia-smi stand-in (module mode: it answers from the loaded "module")
    nvidia-kernel-dkms          the "kernel module": its version, and a unit that "loads" it at boot
                                (/run/vlmfleet-lab-standin/nvidia-loaded, a tmpfs: gone at the next reboot); a new
                                version is not loaded until the host reboots, as with the real module
    nvidia-persistenced         the persistence daemon stand-in and its unit (not enabled: the driver stage does)
    nvidia-fabricmanager        the fabric manager stand-in and its unit nvidia-fabricmanager.service (unversioned
                                from 580 on, as NVIDIA's; with libnvidia-nscq, both pinned by the pinning package)

``Packages``/``Release`` are written here (as apt-ftparchive would), the ``.deb`` files by ``dpkg-deb --build``,
the signatures by ``gpg`` (``InRelease`` clear-signed, ``Release.gpg`` detached). Never used outside the lab.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import LabError

HERE = Path(__file__).resolve().parent
BUILD_VERSION = 1
#: driver branch -> Debian version of its packages
BRANCHES = {"580": "580.95.05-1", "590": "590.44.01-1"}
DISTROS = ("debian12", "debian13")
ARCH = "x86_64"
KEY_FILE = "3bf863cc.pub"
KEY_UID = "vlmfleet lab stand-in for NVIDIA's CUDA repository key <nvidia-repo-standin@vlmfleet.invalid>"
MAINTAINER = "vlmfleet lab <nvidia-repo-standin@vlmfleet.invalid>"
STANDIN_DIR = "usr/lib/vlmfleet-lab-standin/nvidia"
MODULE_UNIT = "vlmfleet-standin-nvidia-module.service"
#: the stand-in programs the packages ship (their bytes are part of the build's stamp)
PROGRAMS = {"nvidia-smi": "nvidia_smi_standin.py", "nvidia-persistenced": "nvidia_persistenced_standin.py",
            "nv-fabricmanager": "nv_fabricmanager_standin.py"}


class RepoError(LabError):
    """A tool the build needs failed; the message names it, its output and the fix."""


def upstream(version: str) -> str:
    """``580.95.05`` of ``580.95.05-1``."""
    return version.split("-", 1)[0]


def repo_path(www: Path, distro: str = "debian12", arch: str = ARCH) -> Path:
    return www / "compute" / "cuda" / "repos" / distro / arch


# ---- the key -----------------------------------------------------------------------------------------------
def _gpg(gnupg: Path, *args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(["gpg", "--homedir", str(gnupg), "--batch", "--quiet", "--no-tty", *args], input=data,
                          capture_output=True)
    if proc.returncode != 0:
        raise RepoError(f"building the lab's NVIDIA repository stand-in: gpg {args[0]} failed (exit {proc.returncode}): "
                        f"{proc.stderr.decode(errors='replace').strip()[-400:]}; check that gpg and gpg-agent are "
                        f"installed (`make deps`) and {gnupg} is writable")
    return proc.stdout


def _stop_agent(gnupg: Path) -> None:
    """End the gpg-agent this build started for ``gnupg`` (one per home folder)."""
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(gnupg)},
                   capture_output=True)


def key_fingerprint(gnupg: Path) -> str | None:
    """The fingerprint (40 hex digits, upper case) of the signing key in ``gnupg``, None before it exists."""
    if not (gnupg / "pubring.kbx").exists() or not any((gnupg / "private-keys-v1.d").glob("*.key")):
        return None
    out = _gpg(gnupg, "--with-colons", "--list-keys").decode()  # the public list: no gpg-agent needed
    fprs = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]
    return fprs[0] if fprs else None


def ensure_key(gnupg: Path) -> str:
    """The lab's signing key (Ed25519, no passphrase), generated the first time; returns its fingerprint."""
    fpr = key_fingerprint(gnupg)
    if fpr:
        return fpr
    gnupg.mkdir(parents=True, exist_ok=True)
    gnupg.chmod(0o700)
    name, _, mail = KEY_UID.rpartition(" <")
    params = (f"%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: {name}\n"
              f"Name-Email: {mail.rstrip('>')}\nExpire-Date: 0\n%commit\n")
    try:
        _gpg(gnupg, "--gen-key", data=params.encode())
    finally:
        _stop_agent(gnupg)
    fpr = key_fingerprint(gnupg)
    if not fpr:
        raise RepoError(f"gpg generated no key in {gnupg}")
    return fpr


# ---- the packages ------------------------------------------------------------------------------------------
def _unit_module() -> str:
    return (
        "[Unit]\n"
        "Description=vlmfleet lab STAND-IN: load the NVIDIA kernel module (there is no GPU in the lab)\n"
        "DefaultDependencies=no\n"
        "Before=sysinit.target nvidia-persistenced.service nvidia-fabricmanager.service\n"
        "\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/bin/sh -c 'mkdir -p /run/vlmfleet-lab-standin && "
        f"cp /{STANDIN_DIR}/module-version /run/vlmfleet-lab-standin/nvidia-loaded'\n"
        "\n[Install]\nWantedBy=sysinit.target\n")


def _unit_persistenced() -> str:
    return (
        "[Unit]\nDescription=NVIDIA Persistence Daemon (vlmfleet lab STAND-IN)\nWants=syslog.target\n"
        f"After={MODULE_UNIT}\n"
        "\n[Service]\nType=forking\nPIDFile=/var/run/nvidia-persistenced/nvidia-persistenced.pid\n"
        "ExecStart=/usr/bin/nvidia-persistenced --verbose\n"
        "\n[Install]\nWantedBy=multi-user.target\n")


def _unit_fabricmanager() -> str:
    return (
        "[Unit]\nDescription=NVIDIA fabric manager service (vlmfleet lab STAND-IN)\n"
        f"After=network-online.target {MODULE_UNIT}\n"
        "\n[Service]\nUser=root\nType=simple\nTimeoutStartSec=240\n"
        "ExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg\n"
        "\n[Install]\nWantedBy=multi-user.target\n")


POSTINST_MODULE = f"""#!/bin/sh
# vlmfleet lab stand-in: the "module" loads at the next boot (enabled, never started here)
set -e
if [ "$1" = configure ] && command -v systemctl >/dev/null 2>&1; then
    [ -d /run/systemd/system ] && systemctl daemon-reload || true
    systemctl enable {MODULE_UNIT}
fi
"""
PRERM_MODULE = f"""#!/bin/sh
set -e
if [ "$1" = remove ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable {MODULE_UNIT} || true
fi
"""
POSTINST_RELOAD = """#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
"""


PIN_FILE = "etc/apt/preferences.d/nvidia-driver-pin"


def pin_file(branch: str) -> str:
    """What ``nvidia-driver-pinning-<branch>`` puts in /etc/apt/preferences.d: every driver package of the
    repository at the branch's versions (priority 1000 also allows going back to it)."""
    return (f"# vlmfleet lab stand-in of NVIDIA's nvidia-driver-pinning-{branch}: track driver branch {branch}\n"
            "Package: cuda-drivers cuda-drivers-* nvidia-driver-cuda nvidia-kernel-dkms nvidia-persistenced "
            f"nvidia-fabricmanager libnvidia-nscq\nPin: version {branch}.*\nPin-Priority: 1000\n")


def packages(branch: str, version: str) -> list[dict]:
    """The packages of one branch: ``{"name", "version", "arch", "fields": {control field: value},
    "files": {path in the package: (bytes, mode)}, "scripts": {postinst: text}}``.

    As in NVIDIA's repository the metapackages depend on *at least* the branch's version (``>=``), so without the
    branch's pinning package apt picks the newest branch's components; ``nvidia-driver-pinning-<branch>``
    (installed first, NVIDIA's advice) makes apt resolve to the branch."""
    u = upstream(version)
    other = [b for b in BRANCHES if b != branch]
    program = lambda name: ((HERE / PROGRAMS[name]).read_bytes(), 0o755)  # noqa: E731
    text = lambda s: (s.encode(), 0o644)  # noqa: E731
    desc = "vlmfleet lab STAND-IN (no GPU in the lab)"
    depends = ", ".join(f"{p} (>= {u})" for p in ("nvidia-driver-cuda", "nvidia-kernel-dkms", "nvidia-persistenced"))
    conflicts = lambda prefix: ({"Conflicts": ", ".join(f"{prefix}{b}" for b in other),  # noqa: E731
                                 "Replaces": ", ".join(f"{prefix}{b}" for b in other)} if other else {})
    return [
        {"name": f"cuda-drivers-{branch}", "version": version, "arch": "amd64",
         "fields": {"Depends": depends, **conflicts("cuda-drivers-"), "Section": "metapackages",
                    "Description": f"CUDA Driver meta-package, branch {branch} ({desc})"},
         "files": {}, "scripts": {}},
        {"name": "cuda-drivers", "version": version, "arch": "amd64",
         "fields": {"Depends": depends, "Section": "metapackages",
                    "Description": f"CUDA Driver meta-package, latest branch ({desc})"},
         "files": {}, "scripts": {}},
        {"name": f"nvidia-driver-pinning-{branch}", "version": version, "arch": "all",
         "fields": {"Provides": "nvidia-driver-pinning", "Conflicts": "nvidia-driver-pinning",
                    "Replaces": "nvidia-driver-pinning", "Section": "NVIDIA",
                    "Description": f"APT driver pinning file for driver branch {branch} ({desc})"},
         "files": {PIN_FILE: text(pin_file(branch))}, "scripts": {}},
        {"name": "nvidia-driver-cuda", "version": version, "arch": "amd64",
         "fields": {"Section": "NVIDIA", "Description": f"NVIDIA driver CUDA integration components ({desc}: the "
                                                         "nvidia-smi stand-in)"},
         "files": {"usr/bin/nvidia-smi": program("nvidia-smi"),
                   f"{STANDIN_DIR}/userspace-version": text(u + "\n")}, "scripts": {}},
        {"name": "nvidia-kernel-dkms", "version": version, "arch": "amd64",
         "fields": {"Section": "NVIDIA", "Description": f"NVIDIA binary kernel module DKMS source ({desc}: a unit "
                                                         "that 'loads' this version at boot)"},
         "files": {f"{STANDIN_DIR}/module-version": text(u + "\n"),
                   f"lib/systemd/system/{MODULE_UNIT}": text(_unit_module())},
         "scripts": {"postinst": POSTINST_MODULE, "prerm": PRERM_MODULE}},
        {"name": "nvidia-persistenced", "version": version, "arch": "amd64",
         "fields": {"Section": "NVIDIA", "Description": f"daemon to maintain persistent software state in the NVIDIA "
                                                         f"driver ({desc})"},
         "files": {"usr/bin/nvidia-persistenced": program("nvidia-persistenced"),
                   f"{STANDIN_DIR}/persistenced-version": text(u + "\n"),
                   "lib/systemd/system/nvidia-persistenced.service": text(_unit_persistenced())},
         "scripts": {"postinst": POSTINST_RELOAD}},
        # from 580 on NVIDIA's repository names the fabric manager without its branch (its pinning package pins it)
        {"name": "libnvidia-nscq", "version": version, "arch": "amd64",
         "fields": {"Section": "NVIDIA", "Description": f"NVSwitch Configuration and Query library ({desc})"},
         "files": {f"{STANDIN_DIR}/nscq-version": text(u + "\n")}, "scripts": {}},
        {"name": "nvidia-fabricmanager", "version": version, "arch": "amd64",
         "fields": {"Depends": f"libnvidia-nscq (= {version})", "Section": "NVIDIA",
                    "Description": f"Fabric Manager for NVSwitch based systems, branch {branch} ({desc})"},
         "files": {"usr/bin/nv-fabricmanager": program("nv-fabricmanager"),
                   f"{STANDIN_DIR}/fabricmanager-version": text(u + "\n"),
                   "usr/share/nvidia/nvswitch/fabricmanager.cfg": text("# vlmfleet lab stand-in: read by nobody\n"
                                                                      "FABRIC_MODE=0\n"),
                   "lib/systemd/system/nvidia-fabricmanager.service": text(_unit_fabricmanager())},
         "scripts": {"postinst": POSTINST_RELOAD}},
    ]


def _control(pkg: dict, installed_kib: int) -> str:
    fields = {"Package": pkg["name"], "Version": pkg["version"], "Architecture": pkg["arch"],
              "Maintainer": MAINTAINER, "Installed-Size": str(installed_kib), "Priority": "optional",
              **pkg["fields"]}
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def build_deb(pkg: dict, out_dir: Path, work: Path) -> tuple[Path, str]:
    """One .deb with ``dpkg-deb --build --root-owner-group``; returns its path and its control text."""
    root = work / f"{pkg['name']}_{pkg['version']}"
    (root / "DEBIAN").mkdir(parents=True)
    size = 0
    for rel, (data, mode) in pkg["files"].items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        size += len(data)
    for name, script in pkg["scripts"].items():
        (root / "DEBIAN" / name).write_text(script)
        (root / "DEBIAN" / name).chmod(0o755)
    control = _control(pkg, max(1, (size + 1023) // 1024))
    (root / "DEBIAN" / "control").write_text(control)
    deb = out_dir / f"{pkg['name']}_{pkg['version']}_{pkg['arch']}.deb"
    proc = subprocess.run(["dpkg-deb", "--build", "--root-owner-group", "-Zgzip", str(root), str(deb)],
                          capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1767225600"})
    if proc.returncode != 0:
        raise RepoError(f"building the lab's NVIDIA repository stand-in: dpkg-deb --build {pkg['name']} failed: "
                        f"{proc.stderr.strip()}")
    return deb, control


def _hashes(data: bytes) -> dict[str, str]:
    return {k: hashlib.new(k, data).hexdigest() for k in ("md5", "sha1", "sha256", "sha512")}


def packages_index(debs: list[tuple[Path, str]]) -> str:
    """The ``Packages`` file of a flat repository: each control paragraph plus Filename, Size and hashes."""
    stanzas = []
    for deb, control in debs:
        data = deb.read_bytes()
        h = _hashes(data)
        stanzas.append(control + f"Filename: ./{deb.name}\nSize: {len(data)}\nMD5sum: {h['md5']}\n"
                                 f"SHA1: {h['sha1']}\nSHA256: {h['sha256']}\nSHA512: {h['sha512']}\n")
    return "\n".join(stanzas)


def release(files: dict[str, bytes], date: str) -> str:
    """The ``Release`` file: NVIDIA's Origin and Label (their apt pin matches ``l=NVIDIA CUDA``), no
    Suite/Codename (a flat repository), and the index files' hashes."""
    out = ["Origin: NVIDIA", "Label: NVIDIA CUDA", "Architectures: amd64", f"Date: {date}",
           "Description: vlmfleet lab stand-in for NVIDIA's CUDA repository (signed by the lab's own key)"]
    for title, algo in (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"), ("SHA512", "sha512")):
        out.append(f"{title}:")
        out += [f" {hashlib.new(algo, data).hexdigest()} {len(data):>16} {name}" for name, data in sorted(files.items())]
    return "\n".join(out) + "\n"


def build_repo(www: Path, gnupg: Path) -> str:
    """Write the whole repository under ``www`` (replacing what was there) signed by the key in ``gnupg``
    (generated when missing); return the key's fingerprint."""
    fpr = ensure_key(gnupg)
    www.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=www.parent))
    try:
        first = repo_path(staging / "www", DISTROS[0])
        first.mkdir(parents=True)
        work = staging / "work"
        debs = [build_deb(pkg, first, work) for branch, version in BRANCHES.items()
                for pkg in packages(branch, version)]
        index = packages_index(debs).encode()
        (first / "Packages").write_bytes(index)
        gz = gzip.compress(index, mtime=0)
        (first / "Packages.gz").write_bytes(gz)
        rel = release({"Packages": index, "Packages.gz": gz}, email.utils.formatdate(usegmt=True))
        (first / "Release").write_text(rel)
        try:
            (first / "InRelease").write_bytes(_gpg(gnupg, "--local-user", fpr, "--digest-algo", "SHA512",
                                                   "--clearsign", data=rel.encode()))
            (first / "Release.gpg").write_bytes(_gpg(gnupg, "--local-user", fpr, "--digest-algo", "SHA512",
                                                     "--armor", "--detach-sign", data=rel.encode()))
            (first / KEY_FILE).write_bytes(_gpg(gnupg, "--armor", "--export", fpr))
        finally:
            _stop_agent(gnupg)
        for distro in DISTROS[1:]:
            shutil.copytree(first, repo_path(staging / "www", distro))
        shutil.rmtree(www, ignore_errors=True)
        (staging / "www").rename(www)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return fpr


# ---- in the lab cache --------------------------------------------------------------------------------------
def root(cfg) -> Path:
    """``cache/nvidia-repo``: ``gnupg/`` (the key, kept), ``www/`` (what the daemon serves), ``stamp``,
    ``fingerprint``."""
    return cfg.cache_dir / "nvidia-repo"


def _want(fpr: str | None) -> str:
    parts = [str(BUILD_VERSION), repr(sorted(BRANCHES.items())), repr(DISTROS), fpr or "",
             *(hashlib.sha256((HERE / f).read_bytes()).hexdigest() for f in sorted({*PROGRAMS.values(),
                                                                                    Path(__file__).name}))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def stale(cfg) -> bool:
    r = root(cfg)
    stamp = r / "stamp"
    fpr_file = r / "fingerprint"
    fpr = fpr_file.read_text().strip() if fpr_file.exists() else None
    return not (fpr and stamp.exists() and stamp.read_text() == _want(fpr) and (r / "www").is_dir())


def build(cfg) -> Path:
    """Build the repository under the lab cache when its inputs changed; return the folder to serve."""
    r = root(cfg)
    if not stale(cfg):
        return r / "www"
    fpr = build_repo(r / "www", r / "gnupg")
    (r / "fingerprint").write_text(fpr + "\n")
    (r / "stamp").write_text(_want(fpr))
    return r / "www"


def fingerprint(cfg) -> str | None:
    """The fingerprint of the key the lab's repository is signed with, None before the first build."""
    f = root(cfg) / "fingerprint"
    return f.read_text().strip() if f.exists() else None
