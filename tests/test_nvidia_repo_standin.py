"""The lab's NVIDIA CUDA repository stand-in, proven with the real apt, gpg and dpkg-deb of this machine; and the
driver stand-ins its packages ship, unpacked and run as the lab hosts run them (in a folder standing for /).

apt reads the repository through a file: source with its own state, cache, sources and preferences in tmp
folders, and checks the signature with the keyring made from the served 3bf863cc.pub (as the driver stage does).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmfleet.lab import LabConfig
from vlmfleet.lab.hosts import lab_hosts
from vlmfleet.lab.lab import inventory_data
from vlmfleet.lab.layout import gpus_json
from vlmfleet.lab.standins import nvidia_repo
from unitverify import verify, verify_root

V580, V590 = "580.95.05-1", "590.44.01-1"
DRIVER_SET = ("nvidia-driver-cuda", "nvidia-kernel-dkms", "nvidia-persistenced")
#: the fabric manager's packages: unversioned from 580 on (as NVIDIA's), pinned to a branch by its pinning package
FABRIC = ("nvidia-fabricmanager", "libnvidia-nscq")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab cache with the repository built: ``(cfg, repository folder of debian12/x86_64)``."""
    cfg = LabConfig(root=tmp_path_factory.mktemp("lab"))
    www = nvidia_repo.build(cfg)
    return cfg, nvidia_repo.repo_path(www, "debian12")


def gpg_env(tmp: Path) -> dict:
    home = tmp / "gnupg-client"
    home.mkdir(mode=0o700, exist_ok=True)
    return {**os.environ, "GNUPGHOME": str(home)}


def keyring(tmp: Path, armoured: Path) -> Path:
    out = tmp / f"{armoured.stem}.gpg"
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(out), str(armoured)], check=True,
                   env=gpg_env(tmp), capture_output=True)
    return out


class Apt:
    """The real apt-get on its own folders: ``Apt(tmp, repo, keyring).run("-s", "install", "x")``.

    Should apt ever run dpkg (only :meth:`really` does) it installs into ``tmp/root``, standing for the host's /,
    with dpkg's database in the state folder (``state/status`` is dpkg's own) and its logs in ``tmp/log``."""

    def __init__(self, tmp: Path, repo: Path, key: Path):
        self.d = tmp
        self.root = tmp / "root"
        for sub in ("state/lists/partial", "state/info", "state/updates", "state/triggers", "cache/archives/partial",
                    "etc/sources.list.d", "etc/trusted.gpg.d", "etc/preferences.d", "etc/apt.conf.d", "log", "root"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "state/status").touch()
        (tmp / "etc/sources.list").write_text(f"deb [signed-by={key}] file:{repo}/ /\n")
        conf = {"Dir::State": "state", "Dir::State::status": "state/status", "Dir::Cache": "cache",
                "Dir::Etc": "etc", "Dir::Etc::SourceList": "etc/sources.list",
                "Dir::Etc::SourceParts": "etc/sources.list.d", "Dir::Etc::Trusted": "etc/trusted.gpg",
                "Dir::Etc::TrustedParts": "etc/trusted.gpg.d", "Dir::Etc::Preferences": "etc/preferences",
                "Dir::Etc::PreferencesParts": "etc/preferences.d", "Dir::Etc::Parts": "etc/apt.conf.d"}
        lines = [f'{k} "{tmp / v}";' for k, v in conf.items()]
        lines += ['APT::Architecture "amd64";', 'APT::Architectures { "amd64"; };', 'Debug::NoLocking "true";',
                  'APT::Sandbox::User "root";' if os.geteuid() == 0 else "", f'Dir::Log "{tmp / "log"}";',
                  # --root last but one: dpkg's database is the state folder's, not root/var/lib/dpkg
                  'DPkg::Options { "--root=%s"; "--admindir=%s"; "--force-not-root"; "--log=%s"; };'
                  % (self.root, tmp / "state", tmp / "log/dpkg.log")]
        (tmp / "apt.conf").write_text("\n".join(lines) + "\n")

    def run(self, *args: str, tool: str = "apt-get") -> subprocess.CompletedProcess:
        return subprocess.run([tool, "-q", *args], capture_output=True, text=True,
                              env={**os.environ, "APT_CONFIG": str(self.d / "apt.conf"), "LC_ALL": "C"})

    def plan(self, *args: str) -> tuple[int, list[str], str]:
        """``apt-get -s -y ARGS``: (exit status, its Inst/Remv lines, everything it printed); a line's `` []`` (no
        package left broken by this step, as apt prints where an upgrade waits for its dependency's) left out."""
        proc = self.run("-s", "-y", *args)
        out = proc.stdout + proc.stderr
        return proc.returncode, [x.removesuffix(" []") for x in out.splitlines() if x.startswith(("Inst ", "Remv "))], out

    def installed(self, repo: Path, debs: list[str], held: bool) -> None:
        """dpkg's status file as after installing ``debs`` (file names in the repository)."""
        status = "hold ok installed" if held else "install ok installed"
        stanzas = []
        for deb in debs:
            control = subprocess.run(["dpkg-deb", "-f", str(repo / deb)], capture_output=True, text=True,
                                     check=True).stdout
            first, _, rest = control.partition("\n")
            stanzas.append(f"{first}\nStatus: {status}\n{rest}")
        (self.d / "state/status").write_text("\n".join(stanzas))

    def pin(self, repo: Path, branch: str) -> None:
        """/etc/apt/preferences.d as after installing nvidia-driver-pinning-<branch>."""
        unpacked = unpack(repo, [f"nvidia-driver-pinning-{branch}_{nvidia_repo.BRANCHES[branch]}_all.deb"],
                          self.d / f"pin-{branch}")
        shutil.copy(unpacked / nvidia_repo.PIN_FILE, self.d / "etc/preferences.d/nvidia-driver-pin")

    def add_installed(self, repo: Path, debs: list[str]) -> None:
        """Append to dpkg's status file (kept: what dpkg really installed stays) the stanzas of ``debs``,
        installed (unpacked nowhere: for apt's resolver only)."""
        status = self.d / "state/status"
        stanzas = []
        for deb in debs:
            control = subprocess.run(["dpkg-deb", "-f", str(repo / deb)], capture_output=True, text=True,
                                     check=True).stdout
            first, _, rest = control.partition("\n")
            stanzas.append(f"{first}\nStatus: install ok installed\n{rest}")
        status.write_text("\n".join(x for x in (status.read_text().strip("\n") + "\n", *stanzas) if x.strip()))

    def packages(self) -> dict[str, str]:
        """dpkg-query's installed packages of the private database: name -> version."""
        out = subprocess.run(["dpkg-query", f"--admindir={self.d / 'state'}", "-W", "-f",
                              "${db:Status-Abbrev} ${Package} ${Version}\n"], capture_output=True, text=True,
                             check=True).stdout
        return {f[1]: f[2] for f in (x.split() for x in out.splitlines()) if f[0][:2] in ("ii", "hi")}

    def held(self) -> list[str]:
        return self.run("showhold", tool="apt-mark").stdout.split()


def unpack(repo: Path, debs: list[str], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(repo / deb), str(root)], check=True)
    return root


def debs_of(branch: str) -> list[str]:
    v = nvidia_repo.BRANCHES[branch]
    return [f"{p}_{v}_amd64.deb" for p in (f"cuda-drivers-{branch}", *DRIVER_SET, *FABRIC)]


def test_repository_is_laid_out_and_indexed_like_nvidias(lab):
    cfg, repo = lab
    www = nvidia_repo.root(cfg) / "www"
    for distro in ("debian12", "debian13"):
        d = nvidia_repo.repo_path(www, distro)
        assert {"Packages", "Packages.gz", "Release", "InRelease", "Release.gpg", "3bf863cc.pub"} <= {
            p.name for p in d.iterdir()}
        assert (d / "Packages").read_bytes() == (repo / "Packages").read_bytes()
    release = (repo / "Release").read_text()
    fields = dict(re.findall(r"^(\w[\w-]*): ?(.*)$", release, re.M))
    assert (fields["Origin"], fields["Label"]) == ("NVIDIA", "NVIDIA CUDA")  # NVIDIA's pin: release l=NVIDIA CUDA
    assert "Suite" not in fields and "Codename" not in fields and fields["Date"].endswith("GMT")
    import hashlib

    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        assert f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {name}" in release
        assert f" {hashlib.md5(data).hexdigest()} {len(data):>16} {name}" in release
    packages = (repo / "Packages").read_text()
    stanzas = {(m["Package"], m["Version"]): m for m in (dict(re.findall(r"^([\w-]+): (.*)$", s, re.M))
                                                         for s in packages.split("\n\n"))}
    for branch, v in nvidia_repo.BRANCHES.items():
        deb = repo / stanzas[(f"cuda-drivers-{branch}", v)]["Filename"]
        assert deb.exists() and stanzas[(f"cuda-drivers-{branch}", v)]["SHA256"] == hashlib.sha256(
            deb.read_bytes()).hexdigest()
        # the fabric manager carries no branch in its name: it wants the library of its own version, and the
        # branch's pinning package pins both (NVIDIA's names from 580 on)
        fm = stanzas[("nvidia-fabricmanager", v)]
        assert fm["Depends"] == f"libnvidia-nscq (= {v})" and "Conflicts" not in fm
        assert ("libnvidia-nscq", v) in stanzas
        pin = re.search(r"^Package: (.*)$", nvidia_repo.pin_file(branch), re.M)[1].split()
        assert set(FABRIC) <= set(pin) and f"Pin: version {branch}.*" in nvidia_repo.pin_file(branch)
    assert not [name for name, _ in stanzas if re.fullmatch(r"(nvidia-fabricmanager|libnvidia-nscq)-\d+", name)]


def test_apt_checks_the_signature_with_the_served_key_and_refuses_another(lab, tmp_path):
    cfg, repo = lab
    good = Apt(tmp_path / "good", repo, keyring(tmp_path, repo / "3bf863cc.pub"))
    proc = good.run("update")
    assert proc.returncode == 0 and "InRelease" in proc.stdout and "W:" not in proc.stderr + proc.stdout, proc.stderr
    # the detached signature verifies too (apt falls back to Release + Release.gpg)
    gpgv = subprocess.run(["gpgv", "--keyring", str(keyring(tmp_path, repo / "3bf863cc.pub")),
                           str(repo / "Release.gpg"), str(repo / "Release")], capture_output=True, text=True,
                          env=gpg_env(tmp_path))
    assert gpgv.returncode == 0, gpgv.stderr
    # another key: apt refuses the repository
    other_home = tmp_path / "other-key"
    other_fpr = nvidia_repo.ensure_key(other_home)
    armoured = tmp_path / "other.asc"
    armoured.write_bytes(nvidia_repo._gpg(other_home, "--armor", "--export", other_fpr))
    bad = Apt(tmp_path / "bad", repo, keyring(tmp_path, armoured))
    proc = bad.run("update")
    assert proc.returncode == 100
    assert "NO_PUBKEY" in proc.stdout + proc.stderr and "is not signed" in proc.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lab_hosts_fetch_it_over_http_past_the_debian_only_proxy(lab, tmp_path):
    """Served as `lab up` serves it (http.server on the repository folder), read by apt with the lab hosts' apt
    settings: a proxy for everything (apt-cacher-ng, Debian only) and the bridge address direct."""
    from vlmfleet.lab.hosts import LabHost, install_gpu_standin

    cfg, repo = lab
    port, dead = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                               str(nvidia_repo.root(cfg) / "www"), str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        host_cfg = LabConfig(root=tmp_path / "lab", net="127.0.0")  # its bridge address: 127.0.0.1
        h = LabHost("h1", 1, "127.0.0.11")
        install_gpu_standin(host_cfg, h, "1xL40S", bare=True)
        direct = (h.root(host_cfg) / "etc/apt/apt.conf.d/02vlmfleet-lab-direct").read_text()
        apt = Apt(tmp_path / "apt", repo, keyring(tmp_path, repo / "3bf863cc.pub"))
        url = f"http://127.0.0.1:{port}/compute/cuda/repos/debian12/x86_64/"
        (apt.d / "etc/sources.list").write_text(f"deb [signed-by={tmp_path / '3bf863cc.gpg'}] {url} /\n")
        (apt.d / "etc/apt.conf.d/01proxy").write_text(f'Acquire::http::Proxy "http://127.0.0.1:{dead}";\n')
        for _ in range(50):
            try:
                import urllib.request

                urllib.request.urlopen(url + "Release", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        refused = apt.run("-o", "Acquire::Retries=0", "update")
        assert f"Failed to fetch {url}" in refused.stderr and f"127.0.0.1:{dead}" in refused.stdout + refused.stderr, (
            refused.stdout + refused.stderr)
        (apt.d / "etc/apt.conf.d/02vlmfleet-lab-direct").write_text(direct)
        proc = apt.run("update")
        assert proc.returncode == 0 and "W:" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        apt.pin(repo, "580")
        rc, lines, out = apt.plan("install", "nvidia-fabricmanager")
        assert rc == 0 and lines == [f"Inst {p} ({V580} NVIDIA CUDA:127.0.0.1 [amd64])" for p in reversed(FABRIC)], out
    finally:
        server.terminate()
        server.wait(5)


def test_cuda_drivers_resolves_to_the_pinned_branch_and_without_the_pin_to_the_newest(lab, tmp_path):
    """As in NVIDIA's repository: the branch metapackage wants *at least* its version, so only the branch's
    pinning package (installed first) keeps apt on the branch."""
    _, repo = lab
    apt = Apt(tmp_path, repo, keyring(tmp_path, repo / "3bf863cc.pub"))
    assert apt.run("update").returncode == 0
    rc, lines, out = apt.plan("install", "cuda-drivers-580")
    assert rc == 0, out
    assert sorted(lines) == sorted([f"Inst cuda-drivers-580 ({V580} NVIDIA CUDA:localhost [amd64])"] + [
        f"Inst {p} ({V590} NVIDIA CUDA:localhost [amd64])" for p in DRIVER_SET])
    apt.pin(repo, "580")
    rc, lines, out = apt.plan("install", "cuda-drivers-580")
    assert rc == 0, out
    assert sorted(lines) == sorted(f"Inst {p} ({V580} NVIDIA CUDA:localhost [amd64])"
                                   for p in ("cuda-drivers-580", *DRIVER_SET))
    rc, lines, out = apt.plan("install", "cuda-drivers")  # NVIDIA's unversioned metapackage follows the pin
    assert rc == 0 and f"Inst cuda-drivers ({V580} NVIDIA CUDA:localhost [amd64])" in lines, out


def test_moving_a_held_580_host_to_590(lab, tmp_path):
    """What apt does to a host holding branch 580 (the stage holds the driver) asked for 590."""
    _, repo = lab
    apt = Apt(tmp_path, repo, keyring(tmp_path, repo / "3bf863cc.pub"))
    assert apt.run("update").returncode == 0
    on_580 = [*debs_of("580"), f"nvidia-driver-pinning-580_{V580}_all.deb"]
    new = ("cuda-drivers-590", "nvidia-driver-pinning-590")
    moved = (*DRIVER_SET, *FABRIC)  # installed at 580, upgraded to 590
    apt.installed(repo, on_580, held=True)
    apt.pin(repo, "580")
    # held: the resolver keeps every held package, even with --allow-change-held-packages
    rc, _, out = apt.plan("--allow-change-held-packages", "install", *new)
    assert rc == 100 and "held packages" in out
    # unheld, but the 580 pin still in place: the new pin must be installed first, in its own apt run
    apt.installed(repo, on_580, held=False)
    rc, _, out = apt.plan("install", *new, *FABRIC)
    assert rc == 100 and "cuda-drivers-590 : Depends: nvidia-driver-cuda (>= 590.44.01) but 580.95.05-1" in out
    # unheld and pinned to 590: the branch moves, the other branch's packages go
    apt.pin(repo, "590")
    rc, lines, out = apt.plan("install", *new, *FABRIC)
    assert rc == 0, out
    assert sorted(lines) == sorted(
        [f"Remv {p} [{V580}]" for p in ("cuda-drivers-580", "nvidia-driver-pinning-580")]
        + [f"Inst {p} [{V580}] ({V590} NVIDIA CUDA:localhost [amd64])" for p in moved]
        + [f"Inst {p} ({V590} NVIDIA CUDA:localhost [{'all' if 'pinning' in p else 'amd64'}])" for p in new])
    # held and every package named (removals too): --allow-change-held-packages moves it
    apt.installed(repo, on_580, held=True)
    rc, lines, out = apt.plan("--allow-change-held-packages", "install", *new, *moved, "cuda-drivers-580-",
                              "nvidia-driver-pinning-580-")
    assert rc == 0 and len(lines) == 9, out
    rc, _, out = apt.plan("install", *new, *moved, "cuda-drivers-580-", "nvidia-driver-pinning-580-")
    assert rc == 100 and "Held packages were changed and -y was used without --allow-change-held-packages" in out


def stage_apt_runs(command: str) -> tuple[list[str], list[list[str]]]:
    """A driver-stage install command (driver.install_command) taken apart: the packages its ``apt-mark unhold``
    releases, and each ``apt-get install`` run's arguments in order (its options and packages). The kernel
    headers' ``$h`` is left out: this apt has no Debian archive, so the command's check finds no linux-headers
    package and leaves ``h`` empty (as on a host whose kernel Debian has no headers for)."""
    unhold = re.match(r"apt-mark unhold (.*?) >/dev/null \|\| exit 1; ", command)
    runs = [[a for a in shlex.split(seg) if a != "$h"]
            for seg in re.findall(r"apt-get install (.*?)(?= && |; |$)", command)]
    return (shlex.split(unhold[1]) if unhold else []), runs


def named(args: list[str]) -> list[str]:
    """The packages of an apt-get run's arguments (not its options, nor ``-o``'s values)."""
    return [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-o")]


def test_the_driver_stages_debian_install_commands_resolve_against_it(lab, tmp_path):
    """driver.install_command's apt runs on Debian, by the real apt on this repository: each pinning-package run
    really installed (dpkg into a private root whose /etc/apt/preferences.d is this apt's: the pin it installs is
    in effect in the next run), each driver run simulated (its packages' scripts would run on this machine).
    A fresh host on branch 580; then that host, its packages held as the stage holds them, moved to 590."""
    from vlmfleet.driver import driver_packages, install_command, packages_for

    _, repo = lab
    apt = Apt(tmp_path / "apt", repo, keyring(tmp_path, repo / "3bf863cc.pub"))
    (apt.d / "etc/preferences.d").rmdir()
    (apt.root / "etc/apt/preferences.d").mkdir(parents=True)
    (apt.d / "etc/preferences.d").symlink_to(apt.root / "etc/apt/preferences.d")
    assert apt.run("update").returncode == 0
    at = lambda v, arch="amd64": f"({v} NVIDIA CUDA:localhost [{arch}])"  # noqa: E731

    def install_pin(args: list[str], want: list[str]) -> None:
        rc, lines, out = apt.plan("install", *args)
        assert rc == 0 and sorted(lines) == sorted(want), out
        for line in lines:  # dpkg runs no script here: each package installed for real has none
            if line.startswith("Inst "):
                name, version = line.split()[1], line.split("(")[1].split()[0]
                control = tmp_path / f"control-{name}"
                subprocess.run(["dpkg-deb", "-e", str(repo / f"{name}_{version}_all.deb"), str(control)], check=True)
                assert {p.name for p in control.iterdir()} <= {"control", "md5sums", "conffiles"}, name
        proc = apt.run("-y", "install", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    # (1) a fresh host, branch 580: the pin's run, then the driver's with the pin in effect
    pk = packages_for("debian", "580", "proprietary", "generic")
    unhold, runs = stage_apt_runs(install_command(pk, pk.fabric))
    assert not unhold and [named(r) for r in runs] == [[pk.pin], [*pk.driver, *pk.fabric]]
    install_pin(runs[0], [f"Inst {pk.pin} {at(V580, 'all')}"])
    assert (apt.root / nvidia_repo.PIN_FILE).read_text() == nvidia_repo.pin_file("580")
    assert apt.packages() == {pk.pin: V580}  # in the private database
    rc, lines, out = apt.plan("install", *runs[1])
    on_580 = [*pk.driver, *DRIVER_SET, *pk.fabric]
    assert rc == 0 and sorted(lines) == sorted(f"Inst {p} {at(V580)}" for p in on_580), out
    # without the pin's run the unversioned fabric manager (and the driver's parts) would be 590's
    (tmp_path / "no-pin").mkdir()
    rc, lines, out = apt.plan("-o", f"Dir::Etc::PreferencesParts={tmp_path / 'no-pin'}", "install", *runs[1])
    assert rc == 0 and f"Inst nvidia-fabricmanager {at(V590)}" in lines, out

    # the driver's run done; the stage holds every package of the driver (hold_command: HOLD_PATTERN)
    apt.add_installed(repo, [f"{p}_{V580}_amd64.deb" for p in on_580])
    installed = apt.packages()
    assert installed == {p: V580 for p in (pk.pin, *on_580)}
    assert apt.run("hold", *driver_packages(installed), tool="apt-mark").returncode == 0
    assert sorted(apt.held()) == sorted(installed)

    # (2) that host moved to 590: released (the command's apt-mark unhold), the 590 pin's run, the driver's run
    pk = packages_for("debian", "590", "proprietary", "generic")
    held = tuple(x for x in driver_packages(installed) if x in apt.held())  # as plan() computes it
    unhold, runs = stage_apt_runs(install_command(pk, pk.fabric, unhold=held))
    assert unhold == list(held) and [named(r) for r in runs] == [[pk.pin], [*pk.driver, *pk.fabric]]
    rc, _, out = apt.plan("install", *runs[0])  # still held: the 580 pin may not go
    assert rc == 100 and "held packages" in out, out
    assert apt.run("unhold", *unhold, tool="apt-mark").returncode == 0 and apt.held() == []
    install_pin(runs[0], [f"Remv nvidia-driver-pinning-580 [{V580}]", f"Inst {pk.pin} {at(V590, 'all')}"])
    assert (apt.root / nvidia_repo.PIN_FILE).read_text() == nvidia_repo.pin_file("590")
    rc, lines, out = apt.plan("install", *runs[1])
    assert rc == 0, out
    # every part moves to 590; cuda-drivers-580 stays installed (nothing conflicts with it, its ">=" dependencies
    # hold at 590), a metapackage only, but at version 580.95.05-1
    assert sorted(lines) == sorted([f"Inst cuda-drivers {at(V590)}"] + [
        f"Inst {p} [{V580}] {at(V590)}" for p in (*DRIVER_SET, *pk.fabric)]), out


def test_the_fabric_manager_added_to_an_installed_driver_takes_exactly_its_version(lab, tmp_path):
    """A Debian host whose 580.95.05 driver is installed, without the branch's pin, gets NVSwitches (or
    nvidia_fabricmanager = true): the stage's command (driver.plan) asks for the fabric manager at exactly the
    installed version, which the real apt selects although its candidate is 590's."""
    from vlmfleet import driver as drv

    _, repo = lab
    apt = Apt(tmp_path / "apt", repo, keyring(tmp_path, repo / "3bf863cc.pub"))
    assert apt.run("update").returncode == 0
    on_580 = {p: V580 for p in ("cuda-drivers-580", *DRIVER_SET)}
    switches = "\n".join(f'0000:0{i}:00.0 "0680" "10de" "22a3"' for i in range(5, 9))
    smi = "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 580.95.05, 00000000:18:00.0"
    p = drv.plan("h4", "580", "debian", drv.DriverState(kernel="6.1.0-28-amd64", packages=on_580),
                 drv.parse_pci('0000:18:00.0 "0302" "10de" "2330"\n' + switches), smi, None, os_version="12")
    assert not p.reboot and p.fabricmanager
    unhold, runs = stage_apt_runs(p.install)
    assert not unhold and [named(r) for r in runs] == [["nvidia-fabricmanager=580.95.05-*", "libnvidia-nscq=580.95.05-*"]]
    apt.installed(repo, [f"{x}_{V580}_amd64.deb" for x in on_580], held=False)
    at = lambda v: f"({v} NVIDIA CUDA:localhost [amd64])"  # noqa: E731
    rc, lines, out = apt.plan("install", *runs[0])
    assert rc == 0 and sorted(lines) == [f"Inst libnvidia-nscq {at(V580)}", f"Inst nvidia-fabricmanager {at(V580)}"], out
    rc, lines, out = apt.plan("install", *FABRIC)  # the bare names: the newest branch's
    assert rc == 0 and f"Inst nvidia-fabricmanager {at(V590)}" in lines, out
    # a fabric manager of another version beside the driver (590's here): back to the driver's, a downgrade
    apt.installed(repo, [f"{x}_{V580}_amd64.deb" for x in on_580] + [f"{x}_{V590}_amd64.deb" for x in FABRIC],
                  held=False)
    p = drv.plan("h4", "580", "debian", drv.DriverState(kernel="6.1.0-28-amd64", packages={
        **on_580, **{x: V590 for x in FABRIC}}), drv.parse_pci('0000:18:00.0 "0302" "10de" "2330"\n' + switches),
        smi, None, os_version="12")
    _, runs = stage_apt_runs(p.install)
    assert "--allow-downgrades" in runs[0]
    rc, lines, out = apt.plan("install", *runs[0])
    assert rc == 0 and sorted(lines) == [f"Inst libnvidia-nscq [{V590}] {at(V580)}",
                                         f"Inst nvidia-fabricmanager [{V590}] {at(V580)}"], out
    rc, _, out = apt.plan("install", *(a for a in runs[0] if a != "--allow-downgrades"))
    assert rc == 100 and "downgraded" in out, out


def test_fingerprint_and_urls_in_the_inventory_data_are_the_served_keys(lab, tmp_path):
    cfg, repo = lab
    shown = subprocess.run(["gpg", "--batch", "--show-keys", "--with-colons", str(repo / "3bf863cc.pub")],
                           capture_output=True, text=True, env=gpg_env(tmp_path), check=True).stdout
    fpr = next(line.split(":")[9] for line in shown.splitlines() if line.startswith("fpr:"))
    data = inventory_data(cfg, lab_hosts(cfg, 1))["nvidia_repo"]
    assert data == {"url": "http://10.77.0.1:8082/compute/cuda/repos/{distro}/{arch}/",
                    "key_url": "http://10.77.0.1:8082/compute/cuda/repos/{distro}/{arch}/3bf863cc.pub",
                    "fingerprint": fpr}
    assert re.fullmatch(r"[0-9A-F]{40}", fpr)
    # what group_data/lab.py sets passes the data keys' own checks
    from vlmfleet.config import BY_KEY

    for key, value in (("nvidia_cuda_repo_url", data["url"]), ("nvidia_cuda_repo_key_url", data["key_url"]),
                       ("nvidia_cuda_repo_key_fingerprint", fpr)):
        if BY_KEY[key].check:
            BY_KEY[key].check(value)
    # the served URL path is the built folder's
    www = nvidia_repo.root(cfg) / "www"
    path = data["key_url"].split(":8082/", 1)[1].format(distro="debian13", arch="x86_64")
    assert (www / path).read_bytes() == (repo / "3bf863cc.pub").read_bytes()


def test_the_build_is_cached_and_keeps_its_key(lab):
    cfg, repo = lab
    assert not nvidia_repo.stale(cfg)
    before = (repo / "Release").stat().st_mtime_ns
    nvidia_repo.build(cfg)
    assert (repo / "Release").stat().st_mtime_ns == before  # nothing rebuilt
    fpr = nvidia_repo.fingerprint(cfg)
    (nvidia_repo.root(cfg) / "stamp").write_text("an older build")
    assert nvidia_repo.stale(cfg)
    nvidia_repo.build(cfg)
    assert not nvidia_repo.stale(cfg) and nvidia_repo.fingerprint(cfg) == fpr  # rebuilt, same key


def test_package_units_pass_systemd_analyze_and_the_module_loads_only_at_boot(lab, tmp_path):
    _, repo = lab
    root = unpack(repo, debs_of("580"), tmp_path / "pkg")
    units = {p.name: p.read_text() for p in (root / "lib/systemd/system").iterdir()}
    assert set(units) == {"vlmfleet-standin-nvidia-module.service", "nvidia-persistenced.service",
                          "nvidia-fabricmanager.service"}
    vroot = verify_root(tmp_path, programs=("usr/bin/nvidia-persistenced", "usr/bin/nv-fabricmanager", "bin/sh"),
                        docker=False)
    for name, text in units.items():
        proc = verify(vroot, name, text)
        assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (name, proc.stdout + proc.stderr)
    module = units["vlmfleet-standin-nvidia-module.service"]
    assert "Type=oneshot" in module and "RemainAfterExit=yes" in module and "DefaultDependencies=no" in module
    assert "WantedBy=sysinit.target" in module
    assert ("cp /usr/lib/vlmfleet-lab-standin/nvidia/module-version /run/vlmfleet-lab-standin/nvidia-loaded"
            in module)
    # the postinst enables the module's unit (never starts it); the persistence daemon is left to the stage
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/systemctl.log\n")
    (fake / "systemctl").chmod(0o755)
    control = tmp_path / "control"
    control.mkdir()
    for deb in debs_of("580"):
        subprocess.run(["dpkg-deb", "-e", str(repo / deb), str(control / deb)], check=True)
        if (control / deb / "postinst").exists():
            subprocess.run(["sh", str(control / deb / "postinst"), "configure"], check=True,
                           env={**os.environ, "PATH": f"{fake}:/usr/bin:/bin"})
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert [c for c in calls if c != "daemon-reload"] == ["enable vlmfleet-standin-nvidia-module.service"]


def run(root: Path, program: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([str(root / program), *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "VLMFLEET_LAB_STANDIN_ROOT": str(root)})


def host(tmp_path: Path, repo: Path, spec: str, branch: str = "580") -> Path:
    """A host's root as after installing cuda-drivers-<branch> and its fabric manager (not yet rebooted)."""
    root = unpack(repo, debs_of(branch), tmp_path / spec)
    (root / "etc/vlmfleet-lab").mkdir(parents=True, exist_ok=True)
    (root / "etc/vlmfleet-lab/gpus.json").write_text(gpus_json(spec))
    return root


def boot(root: Path) -> None:
    """What the module's unit does at boot (its ExecStart, with the root standing for /); /run starts empty."""
    shutil.rmtree(root / "run", ignore_errors=True)
    (root / "run/vlmfleet-lab-standin").mkdir(parents=True)
    shutil.copy(root / "usr/lib/vlmfleet-lab-standin/nvidia/module-version",
                root / "run/vlmfleet-lab-standin/nvidia-loaded")


def test_nvidia_smi_answers_from_the_loaded_module(lab, tmp_path):
    _, repo = lab
    root = host(tmp_path, repo, "2xA10")
    query = ("--query-gpu=index,name,memory.total,compute_cap,driver_version,pci.bus_id",
             "--format=csv,noheader,nounits")
    before = run(root, "usr/bin/nvidia-smi", *query)
    assert before.returncode == 9
    assert before.stdout == ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure "
                             "that the latest NVIDIA driver is installed and running.\n")
    boot(root)
    after = run(root, "usr/bin/nvidia-smi", *query)
    assert after.returncode == 0 and after.stdout.splitlines() == [
        "0, NVIDIA A10, 23028, 8.6, 580.95.05, 00000000:17:00.0", "1, NVIDIA A10, 23028, 8.6, 580.95.05, 00000000:18:00.0"]
    # 590 installed over it, no reboot yet: the library is not the loaded module's
    unpack(repo, debs_of("590"), root)
    mismatch = run(root, "usr/bin/nvidia-smi", *query)
    assert mismatch.returncode == 18
    assert mismatch.stdout == "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 590.44\n"
    boot(root)
    table = run(root, "usr/bin/nvidia-smi")
    assert table.returncode == 0 and "Driver Version: 590.44.01   CUDA Version: 13.1" in table.stdout
    assert run(root, "usr/bin/nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader").stdout == (
        "590.44.01\n590.44.01\n")


def test_nvidia_smi_without_the_driver_package_keeps_the_configured_driver(tmp_path):
    root = tmp_path / "host"
    (root / "etc/vlmfleet-lab").mkdir(parents=True)
    (root / "etc/vlmfleet-lab/gpus.json").write_text(gpus_json("1xL40S"))
    (root / "run/vlmfleet-lab-standin").mkdir(parents=True)
    (root / "run/vlmfleet-lab-standin/nvidia-loaded").write_text("590.44.01\n")  # ignored without the package
    smi = [sys.executable, str(nvidia_repo.HERE / "nvidia_smi_standin.py")]
    proc = subprocess.run([*smi, "--query-gpu=driver_version,pci.bus_id", "--format=csv,noheader"],
                          capture_output=True, text=True, env={"VLMFLEET_LAB_STANDIN_ROOT": str(root)})
    assert proc.returncode == 0 and proc.stdout == "580.95.05, 00000000:17:00.0\n"
    q = subprocess.run([*smi, "-q"], capture_output=True, text=True, env={"VLMFLEET_LAB_STANDIN_ROOT": str(root)})
    fabric = q.stdout.split("    Fabric\n", 1)[1].splitlines()[:2]
    assert fabric == ["        State                             : N/A", "        Status                            : N/A"]
    assert "        Device Id                         : 0x26B910DE" in q.stdout.splitlines()


def test_persistence_daemon_needs_the_loaded_module_of_its_version(lab, tmp_path):
    _, repo = lab
    root = host(tmp_path, repo, "2xA10")
    refused = run(root, "usr/bin/nvidia-persistenced", "--verbose")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == "nvidia-persistenced failed to initialize. Check syslog for more details."
    assert "Failed to query NVIDIA devices" in refused.stderr
    boot(root)
    err = tmp_path / "persistenced.log"
    with err.open("w") as fh:  # it forks as the real daemon does (Type=forking): the parent exits 0
        parent = subprocess.run([str(root / "usr/bin/nvidia-persistenced"), "--verbose", "--persistence-mode"],
                                stderr=fh, env={"VLMFLEET_LAB_STANDIN_ROOT": str(root)}, timeout=10)
    assert parent.returncode == 0
    pid = int((root / "var/run/nvidia-persistenced/nvidia-persistenced.pid").read_text())
    try:
        time.sleep(0.3)
        os.kill(pid, 0)  # the daemon stays running
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    else:
        raise AssertionError("the daemon did not stop on SIGTERM")
    log = err.read_text()
    assert "device 0000:17:00.0 - registered" in log and "device 0000:18:00.0 - registered" in log
    assert f"Shutdown ({pid})" in log
    unpack(repo, debs_of("590"), root)  # upgraded, not rebooted
    mismatch = run(root, "usr/bin/nvidia-persistenced")
    assert mismatch.returncode == 1 and "API mismatch: the client has the version 590.44.01, but this kernel " \
                                        "module has the version 580.95.05" in mismatch.stderr


def test_fabric_manager_needs_its_own_driver_version_and_nvswitches(lab, tmp_path):
    _, repo = lab
    hgx = host(tmp_path, repo, "8xH100")
    q = lambda: run(hgx, "usr/bin/nvidia-smi", "-q").stdout  # noqa: E731
    assert run(hgx, "usr/bin/nv-fabricmanager").returncode == 1  # no module loaded
    boot(hgx)
    assert q().count("        State                             : In Progress\n") == 8
    # the fabric manager of another branch than the loaded module's
    (hgx / "usr/lib/vlmfleet-lab-standin/nvidia/fabricmanager-version").write_text("590.44.01\n")
    other = run(hgx, "usr/bin/nv-fabricmanager", "-c", "/usr/share/nvidia/nvswitch/fabricmanager.cfg")
    assert other.returncode == 1 and other.stderr.strip() == (
        "fabric manager NVIDIA GPU driver interface version 590.44.01 don't match with driver version 580.95.05. "
        "Please update with matching NVIDIA driver package.")
    (hgx / "usr/lib/vlmfleet-lab-standin/nvidia/fabricmanager-version").write_text("580.95.05\n")
    proc = subprocess.Popen([str(hgx / "usr/bin/nv-fabricmanager")], stderr=subprocess.PIPE, text=True,
                            env={"VLMFLEET_LAB_STANDIN_ROOT": str(hgx)})
    try:
        end = time.monotonic() + 5
        while not (hgx / "run/vlmfleet-lab-standin/fabric-state").exists() and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.1)
        assert proc.poll() is None
        text = q()
        assert text.count("        State                             : Completed\n"
                          "        Status                            : Success\n") == 8
        assert "Driver Version                            : 580.95.05" in text
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    # a host without NVSwitches
    pcie = host(tmp_path, repo, "2xA10")
    boot(pcie)
    no_switch = run(pcie, "usr/bin/nv-fabricmanager")
    assert no_switch.returncode == 1 and no_switch.stderr.strip() == (
        "request to query NVSwitch device information from NVSwitch driver failed with error:WARNING Nothing to do "
        "[NV_WARN_NOTHING_TO_DO]")
    assert not (pcie / "run/vlmfleet-lab-standin/fabric-state").exists()


def lspci(tmp_path: Path, spec: str, *args: str) -> subprocess.CompletedProcess:
    root = tmp_path / f"pci-{spec}"
    (root / "etc/vlmfleet-lab").mkdir(parents=True, exist_ok=True)
    (root / "etc/vlmfleet-lab/gpus.json").write_text(gpus_json(spec))
    return subprocess.run([sys.executable, str(nvidia_repo.HERE / "lspci_standin.py"), *args], capture_output=True, text=True,
                          env={"VLMFLEET_LAB_STANDIN_ROOT": str(root)})


def test_lspci_lists_the_gpus_and_nvswitches_in_lspcis_formats(tmp_path):
    one = lspci(tmp_path, "1xL40S", "-Dnmm", "-d", "10de:")
    assert one.returncode == 0 and one.stdout == '0000:17:00.0 "0302" "10de" "26b9" -ra1 -p00 "10de" "26b9"\n'
    assert lspci(tmp_path, "1xL40S", "-nn").stdout == (
        "17:00.0 3D controller [0302]: NVIDIA Corporation AD102GL [L40S] [10de:26b9] (rev a1)\n")
    assert lspci(tmp_path, "1xL40S", "-n").stdout == "17:00.0 0302: 10de:26b9 (rev a1)\n"
    hgx = lspci(tmp_path, "8xH100", "-Dnmm", "-d", "10de:").stdout.splitlines()
    assert hgx[0] == '0000:05:00.0 "0680" "10de" "22a3" -ra1 -p00 "10de" "22a3"'
    assert [x.split()[3] for x in hgx] == ['"22a3"'] * 4 + ['"2330"'] * 8
    assert len(lspci(tmp_path, "8xA100-40", "-Dnmm", "-d", "10de::0680").stdout.splitlines()) == 6
    assert lspci(tmp_path, "4xA100-40", "-Dnmm", "-d", "10de::0680").stdout == ""
    assert lspci(tmp_path, "8xH100", "-n", "-d", "8086:").stdout == ""  # only NVIDIA's functions exist here
    bad = lspci(tmp_path, "1xL40S", "-d", "10de")
    assert bad.returncode == 1 and "At least two fields must be given" in bad.stderr
    assert lspci(tmp_path, "1xL40S", "-vvv").returncode == 2
    # the driver stage's parser reads it as a real HGX: 8 GPUs, 4 NVSwitches
    from vlmfleet.driver import parse_pci

    devices = parse_pci("\n".join(hgx))
    assert (sum(d.is_gpu for d in devices), sum(d.is_nvswitch for d in devices)) == (8, 4)
    assert json.loads(gpus_json("8xH100"))["nvswitches"] == 4
