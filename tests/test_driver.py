"""The driver stage's logic (vlmfleet.driver), by value: the PCI bus and the state script parsed, the decision per
case (fresh box, right driver, pending reboot, branch change, a driver apt did not install, NVSwitch, nouveau),
the exact commands, and the commands really run where they can be here (the pinned key with gpg, the check
after the reboot against a stand-in nvidia-smi). The lab tier (tests/lab/test_driver_stage.py) runs the stage
on hosts that reboot; the H200 fixture is a real --dry run of it."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from vlmfleet import driver as drv
from vlmfleet.config import build, config_for
from vlmfleet.gpus import parse_pci_gpus
from vlmfleet.preflight import HostFacts, check

H200 = Path(__file__).parent / "fixtures" / "gpu" / "h200-device"

HGX_H100 = "\n".join([f'0000:{b:02x}:00.0 "0302" "10de" "2330" -ra1 "10de" "16c1"' for b in (0x18, 0x2a, 0x3a, 0x5d,
                                                                                      0x9a, 0xab, 0xba, 0xdb)]
                     + [f'0000:{b:02x}:00.0 "0680" "10de" "22a3" -ra1 "10de" "1796"' for b in (5, 6, 7, 8)])
A10X2 = '0000:17:00.0 "0302" "10de" "2236" -ra1 "10de" "1482"\n0000:65:00.0 "0302" "10de" "2236" -ra1 "10de" "1482"'
FRESH = drv.DriverState(kernel="6.8.0-45-generic", packages={"linux-image-generic": "6.8.0-45.45"})
SMI_A10 = "0, NVIDIA A10, 23028, 8.6, 580.95.05, 00000000:17:00.0\n1, NVIDIA A10, 23028, 8.6, 580.95.05, 00000000:65:00.0"
UBUNTU_580 = {"nvidia-utils-580-server": "580.95.05-0ubuntu0.24.04.2", "nvidia-headless-no-dkms-580-server":
              "580.95.05-0ubuntu0.24.04.2", "linux-modules-nvidia-580-server-generic": "6.8.0-45.45+1",
              "linux-modules-nvidia-580-server-6.8.0-45-generic": "6.8.0-45.45+1",
              "libnvidia-compute-580-server": "580.95.05-0ubuntu0.24.04.2"}


def plan(state=FRESH, pci=A10X2, csv=None, error=None, family="ubuntu", branch="580", **kw):
    return drv.plan("h1", branch, family, state, drv.parse_pci(pci), csv, error, os_version="24.04", **kw)


# ---- the facts ---------------------------------------------------------------------------------------------------
def test_lspci_and_the_sysfs_loop_parse_alike():
    devs = drv.parse_pci(HGX_H100 + '\n0000:18:00.1 "0403" "10de" "22a5"\n0000:00:1f.0 "0601" "8086" "a1c8"')
    assert sum(d.is_gpu for d in devs) == 8 and sum(d.is_nvswitch for d in devs) == 4
    assert devs[0] == drv.PciDevice("0000:18:00.0", "0302", "2330")
    assert len(devs) == 13  # the audio function is kept, the Intel bridge is not NVIDIA's
    # the real H200's sysfs loop (no pciutils there): the same columns
    assert drv.parse_pci((H200 / "pci.txt").read_text()) == (drv.PciDevice("0000:00:06.0", "0302", "2335"),)


def test_the_sysfs_loop_prints_what_lspci_would(tmp_path):
    """PCI_QUERY without lspci reads sysfs; run it against a fake sysfs tree."""
    dev = tmp_path / "0000:17:00.0"
    dev.mkdir()
    (dev / "vendor").write_text("0x10de\n")
    (dev / "class").write_text("0x030200\n")
    (dev / "device").write_text("0x2236\n")
    other = tmp_path / "0000:00:1f.0"
    other.mkdir()
    (other / "vendor").write_text("0x8086\n")
    script = drv.PCI_QUERY.replace("/sys/bus/pci/devices", str(tmp_path)).replace("command -v lspci", "false")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == '0000:17:00.0 "0302" "10de" "2236"\n'
    assert drv.parse_pci(out) == (drv.PciDevice("0000:17:00.0", "0302", "2236"),)


def test_the_state_of_the_real_h200():
    s = drv.parse_state((H200 / "driver-state.txt").read_text())
    assert s.kernel == "6.18.44-fc-v973-gpu" and s.arch == "x86_64"
    assert s.packages == {} and "libnccl2" in s.held
    assert s.proc_version == "580.159.04"  # the open module's line: "... Open Kernel Module for x86_64  580.159.04"
    assert s.persistence_mode == "Enabled" and not s.persistenced_ours
    assert not (s.nouveau_loaded or s.nouveau_module or s.nouveau_blacklisted)
    assert s.proc_open is True and not s.secure_boot and s.sources == ()  # no EFI firmware there, no apt source
    assert not s.mokutil  # "mok no mokutil"


def test_the_state_script_sections_of_an_ubuntu_box():
    text = ("== kernel\n6.8.0-45-generic\n== arch\nx86_64\n== packages\nnvidia-utils-580-server 580.95.05-0ubuntu1\n"
            "linux-image-generic-hwe-24.04 6.8.0-45.45\n== held\nnvidia-utils-580-server\n== nouveau\nloaded 1\n"
            "module /lib/modules/6.8.0-45-generic/kernel/drivers/gpu/drm/nouveau/nouveau.ko.zst\nblacklisted \n"
            "== persistence\nmode \nunit \n== loaded\nNVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue "
            "Jul 15 2025\n== secureboot\nstate 1\nmok /var/lib/dkms/mok.pub is already enrolled\n== sources\n"
            "/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list:deb [signed-by=/usr/share/keyrings/cuda-archive-"
            "keyring.gpg] https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/ /\n"
            "/etc/apt/sources.list.d/nvidia.sources:URIs: https://mirror.example/cuda/ubuntu2404/x86_64/\n"
            "/etc/apt/sources.list.d/nvidia.sources:Signed-By: /etc/apt/keyrings/nvidia.gpg\n")
    s = drv.parse_state(text)
    assert s.packages == {"nvidia-utils-580-server": "580.95.05-0ubuntu1", "linux-image-generic-hwe-24.04": "6.8.0-45.45"}
    assert s.held == {"nvidia-utils-580-server"} and s.nouveau_loaded and s.nouveau_module
    assert s.proc_version == "580.95.05" and s.persistence_mode is None
    assert s.proc_open is False and s.secure_boot and s.mok_enrolled
    assert s.sources == (
        drv.AptSource("/etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list",
                      "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/",
                      "/usr/share/keyrings/cuda-archive-keyring.gpg"),
        drv.AptSource("/etc/apt/sources.list.d/nvidia.sources", "https://mirror.example/cuda/ubuntu2404/x86_64/",
                      "/etc/apt/keyrings/nvidia.gpg"))
    assert drv.kernel_flavour(s.kernel, s.packages, "24.04") == "generic-hwe-24.04"
    assert drv.kernel_flavour("6.8.0-1015-aws", {}, "24.04") == "aws"
    assert drv.kernel_flavour("6.8.0-1015-aws", {}, "24.04", wanted="generic") == "generic"


def test_versions():
    assert drv.upstream("580.95.05-0ubuntu0.24.04.2") == "580.95.05" and drv.upstream("1:580.95.05-1") == "580.95.05"
    assert drv.installed_version({"nvidia-utils-580-server": "580.82.07-0ubuntu1", "nvidia-driver-cuda": "580.95.05-1",
                                  "nvidia-container-toolkit": "1.17.8-1"}, "580") == "580.95.05"
    assert drv.installed_version({"nvidia-utils-570-server": "570.172.08-0ubuntu1"}, "580") is None
    assert drv.smi_version(SMI_A10) == "580.95.05" and drv.smi_version(None) is None


# ---- the decision ------------------------------------------------------------------------------------------------
def test_a_fresh_ubuntu_box_installs_precompiled_modules_holds_and_reboots():
    p = plan()
    assert p.install == drv.install_command(drv.packages_for("ubuntu", "580", "proprietary", "generic"))
    assert p.hold and p.reboot == "no NVIDIA kernel module is loaded" and p.apt_managed
    assert p.gpus == 2 and p.nvswitches == 0 and not p.fabricmanager
    assert p.summary() == ("will install driver branch 580 (nvidia-headless-no-dkms-580-server, nvidia-utils-580-server "
                           "from Ubuntu's archive), then reboot (no NVIDIA kernel module is loaded)")


def test_a_fresh_debian_box_takes_the_cuda_repository():
    p = plan(family="debian")
    assert p.packages.driver == ("cuda-drivers-580",) and p.packages.source == "NVIDIA's CUDA repository"
    assert p.reboot and p.hold
    assert plan(family="debian").packages.pin == "nvidia-driver-pinning-580"  # the versioned meta alone is no pin
    assert plan(family="debian", branch="590").packages.driver == ("cuda-drivers",)
    assert plan(family="debian", modules="open").packages.driver == ("nvidia-open-580",)


def test_the_right_driver_loaded_and_held_changes_nothing():
    state = replace(FRESH, packages={**FRESH.packages, **UBUNTU_580}, held=frozenset(UBUNTU_580),
                    persistenced_ours=True)
    p = plan(state=state, csv=SMI_A10)
    assert not p.changes and p.install is None and p.reboot is None and not p.hold
    assert p.installed == p.loaded == "580.95.05"
    assert p.summary() == "driver 580.95.05 (branch 580) is loaded"
    # an unheld package is held, without a reboot
    p = plan(state=replace(state, held=frozenset()), csv=SMI_A10)
    assert p.hold and not p.reboot and not p.install


def test_installed_but_not_loaded_reboots_without_installing():
    state = replace(FRESH, packages=UBUNTU_580, held=frozenset(UBUNTU_580))
    p = plan(state=state, error="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    assert p.install is None and p.reboot == "the installed driver 580.95.05 is not loaded"
    p = plan(state=state, error="Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.95")
    assert p.reboot.startswith("the loaded module is not the installed 580.95.05")
    p = plan(state=state, csv=SMI_A10.replace("580.95.05", "580.82.07"))
    assert p.reboot == "the loaded module is 580.82.07, the installed driver 580.95.05"


def test_a_branch_change_installs_and_reboots():
    old = {k.replace("580", "570"): v.replace("580.95.05", "570.172.08") for k, v in UBUNTU_580.items()}
    p = plan(state=replace(FRESH, packages=old, held=frozenset(old)), csv=SMI_A10.replace("580.95.05", "570.172.08"))
    # every held package of the old branch is released first (the flavour metapackage is never held)
    assert p.install.startswith("apt-mark unhold libnvidia-compute-570-server "
                                "linux-modules-nvidia-570-server-6.8.0-45-generic nvidia-headless-no-dkms-570-server "
                                "nvidia-utils-570-server >/dev/null || exit 1; ")
    assert p.reboot == "the loaded module is 570.172.08, not branch 580"


def test_a_driver_apt_did_not_install_is_left_alone():
    """The lent H200: driver 580.159.04 loaded, no driver package (installed outside apt)."""
    s = drv.parse_state((H200 / "driver-state.txt").read_text())
    smi = (H200 / "nvidia-smi-query.csv").read_text()
    p = drv.plan("@local", "580", "ubuntu", s, drv.parse_pci((H200 / "pci.txt").read_text()), smi, None,
                 os_version="24.04")
    assert not p.apt_managed and not p.changes
    assert p.notes == ["driver 580.159.04 (branch 580) is loaded and no driver package is installed: it came from "
                       "elsewhere (NVIDIA's .run installer?); left alone — apt must not install over it"]
    # another branch asked for: apt must not install over it; the host fails naming the fix
    with pytest.raises(drv.DriverError, match=r"^@local: driver 580.159.04 is loaded and no driver package is "
                                              r"installed .* — fix: uninstall it first \(nvidia-uninstall\), or "
                                              r"nvidia_driver_branch = '580'$"):
        drv.plan("@local", "590", "ubuntu", s, drv.parse_pci((H200 / "pci.txt").read_text()), smi, None)
    # the packages purged, the module still loaded, nvidia-smi gone: not "left alone" — installed again
    gone = drv.plan("@local", "580", "ubuntu", s, drv.parse_pci((H200 / "pci.txt").read_text()), None, None)
    assert gone.apt_managed and gone.install


def test_nvswitch_systems_get_the_fabric_manager():
    p = plan(pci=HGX_H100)
    assert p.fabricmanager and p.nvswitches == 4 and p.gpus == 8
    assert "nvidia-fabricmanager-580 libnvidia-nscq-580" in p.install
    assert p.summary().endswith(", fabric manager for 4 NVSwitches, then reboot (no NVIDIA kernel module is loaded)")
    assert not plan(pci=HGX_H100, fabricmanager=False).fabricmanager
    assert plan(pci=A10X2, fabricmanager=True).fabricmanager
    # the driver is there, the fabric manager is not: only it is installed, no reboot
    state = replace(FRESH, packages=UBUNTU_580, held=frozenset(UBUNTU_580))
    p = plan(state=state, pci=HGX_H100, csv=SMI_A10)
    # at exactly the installed driver's version: the fabric manager refuses to start beside another
    # (older or newer than what is there: --allow-downgrades)
    assert p.install.endswith("--force-confold --allow-downgrades 'nvidia-fabricmanager-580=580.95.05-*' "
                              "'libnvidia-nscq-580=580.95.05-*'")
    assert not p.reboot


def test_nouveau_is_blacklisted_where_it_exists_and_reboots_when_loaded():
    state = replace(FRESH, packages=UBUNTU_580, held=frozenset(UBUNTU_580), nouveau_module=True)
    assert plan(state=state, csv=SMI_A10).blacklist_nouveau and not plan(state=state, csv=SMI_A10).reboot
    assert not plan(state=replace(state, nouveau_blacklisted="/lib/modprobe.d/nvidia-blacklist.conf"),
                    csv=SMI_A10).blacklist_nouveau
    assert plan(state=replace(state, nouveau_blacklisted=drv.NOUVEAU_CONF), csv=SMI_A10).blacklist_nouveau
    assert plan(state=replace(state, nouveau_loaded=True), csv=SMI_A10).reboot == "nouveau holds the GPUs"
    assert not plan().blacklist_nouveau  # no nouveau module in that kernel


def test_no_gpu_on_the_bus_is_one_line():
    with pytest.raises(drv.DriverError, match=r"^h1: the PCI bus shows no NVIDIA GPU .* — fix: .*unset nvidia_driver_branch"):
        plan(pci="")


# ---- the commands --------------------------------------------------------------------------------------------
def test_the_ubuntu_install_command_exactly():
    cmd = drv.install_command(drv.packages_for("ubuntu", "580", "open", "generic"))
    apt = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-change-held-packages "
           "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")
    assert cmd == (
        "k=$(uname -r); if apt-cache show --no-all-versions linux-modules-nvidia-580-server-open-\"$k\" 2>/dev/null | "
        f"grep -q '^Package:'; then {apt} nvidia-headless-no-dkms-580-server-open nvidia-utils-580-server "
        "linux-modules-nvidia-580-server-open-generic linux-modules-nvidia-580-server-open-\"$k\"; else echo "
        "\"vlmfleet: the archive has no precompiled NVIDIA module for kernel $k: building it with DKMS "
        f"(nvidia-dkms-580-server-open)\" >&2; {apt} nvidia-headless-no-dkms-580-server-open nvidia-utils-580-server "
        "nvidia-dkms-580-server-open linux-headers-\"$k\"; fi")


def test_the_install_command_picks_precompiled_or_dkms_on_the_host(tmp_path):
    """Run the Ubuntu command with apt-cache / apt-get / uname stand-ins: the per-kernel module package decides."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "log"
    (bin_ / "uname").write_text("#!/bin/sh\necho 6.8.0-45-generic\n")
    (bin_ / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    for name in ("uname", "apt-get"):
        (bin_ / name).chmod(0o755)
    cmd = drv.install_command(drv.packages_for("ubuntu", "580", "proprietary", "generic"))
    for has, want in ((True, "linux-modules-nvidia-580-server-6.8.0-45-generic"), (False, "nvidia-dkms-580-server")):
        (bin_ / "apt-cache").write_text("#!/bin/sh\n" + ("echo 'Package: x'\n" if has else "exit 100\n"))
        (bin_ / "apt-cache").chmod(0o755)
        log.write_text("")
        r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                           env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"})
        assert r.returncode == 0, r.stderr
        assert want in log.read_text() and ("DKMS" in r.stderr) is (not has)
        assert ("linux-headers-6.8.0-45-generic" in log.read_text()) is (not has)
    # Secure Boot on and DKMS's key not enrolled: the precompiled, signed modules as before; without them the
    # command fails before apt runs at all (a DKMS module would not load), naming the fix
    cmd = drv.install_command(drv.packages_for("ubuntu", "580", "proprietary", "generic"), secure_boot=True)
    for has in (True, False):
        (bin_ / "apt-cache").write_text("#!/bin/sh\n" + ("echo 'Package: x'\n" if has else "exit 100\n"))
        log.write_text("")
        r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                           env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"})
        assert r.returncode == (0 if has else 1), r.stderr
        assert ("linux-modules-nvidia-580-server-6.8.0-45-generic" in log.read_text()) is has
        if not has:
            assert log.read_text() == "" and r.stderr.strip() == (
                "vlmfleet: the archive has no precompiled NVIDIA module for kernel 6.8.0-45-generic, and "
                + drv.SECURE_BOOT_DKMS)


def test_switching_between_proprietary_and_open_modules():
    """nvidia_driver_modules names a kind: a host with the other kind installed gets it (its packages released
    first) and reboots; auto keeps what is installed."""
    state = replace(FRESH, packages=UBUNTU_580, held=frozenset(UBUNTU_580), persistenced_ours=True, proc_open=False)
    assert drv.installed_kind(UBUNTU_580, "580") == "proprietary" and drv.installed_kind(UBUNTU_580, "590") is None
    for same in ("auto", "proprietary"):
        assert not plan(state=state, csv=SMI_A10, modules=same).changes
    p = plan(state=state, csv=SMI_A10, modules="open")
    assert p.install.startswith("apt-mark unhold ") and "nvidia-headless-no-dkms-580-server-open nvidia-utils-580-server " \
        "linux-modules-nvidia-580-server-open-generic linux-modules-nvidia-580-server-open-\"$k\"" in p.install
    assert p.reboot == "the loaded module is the proprietary one, nvidia_driver_modules = 'open'" and p.hold
    assert p.notes[-1] == ("the installed driver 580.95.05 has proprietary kernel modules, nvidia_driver_modules = "
                           "'open': nvidia-headless-no-dkms-580-server-open, nvidia-utils-580-server replace them")
    # installed but not yet rebooted into: the reboot alone
    opened = {k.replace("-server-", "-server-open-").replace("no-dkms-580-server", "no-dkms-580-server-open"): v
              for k, v in UBUNTU_580.items()}
    assert drv.installed_kind(opened, "580") == "open"
    p = plan(state=replace(state, packages=opened, held=frozenset(opened)), csv=SMI_A10, modules="open")
    assert not p.install and p.reboot == "the loaded module is the proprietary one, nvidia_driver_modules = 'open'"
    # Debian, NVIDIA's open modules installed and loaded; auto keeps them, proprietary replaces them
    debian = {"nvidia-open-580": "580.95.05-1", "nvidia-kernel-open-dkms": "580.95.05-1",
              "nvidia-driver-cuda": "580.95.05-1"}
    deb = replace(FRESH, packages=debian, held=frozenset(debian), persistenced_ours=True, proc_open=True)
    assert not plan(state=deb, csv=SMI_A10, family="debian").changes
    p = plan(state=deb, csv=SMI_A10, family="debian", modules="proprietary")
    assert p.install.endswith("--force-confold cuda-drivers-580 $h")
    assert p.reboot == "the loaded module is the open one, nvidia_driver_modules = 'proprietary'"
    assert drv.installed_kind({**debian, "nvidia-kernel-dkms": "580.95.05-1"}, "580") == "mixed"


def test_secure_boot_without_an_enrolled_dkms_key_stops_a_debian_install_before_it():
    sb = replace(FRESH, secure_boot=True)
    with pytest.raises(drv.DriverError, match=r"^h1: data key 'nvidia_driver_branch' = '580': NVIDIA's CUDA "
                                              r"repository builds the driver's module with DKMS, and Secure Boot is "
                                              r"on: .* — fix: enroll it .*mokutil --import /var/lib/dkms/mok.pub"):
        plan(state=sb, family="debian")
    assert plan(state=replace(sb, mok_enrolled=True), family="debian").install  # enrolled: DKMS's modules load
    # Ubuntu: the precompiled modules are signed by Canonical; only the DKMS fallback is refused (on the host)
    assert drv.SECURE_BOOT_DKMS in plan(state=sb).install
    assert drv.SECURE_BOOT_DKMS not in plan(state=replace(sb, mok_enrolled=True)).install
    # nothing to install: Secure Boot does not matter
    done = replace(sb, packages={"cuda-drivers-580": "580.95.05-1", "nvidia-driver-cuda": "580.95.05-1",
                                 "nvidia-kernel-dkms": "580.95.05-1"})
    assert not plan(state=done, family="debian", csv=SMI_A10).install


def test_a_cuda_repository_the_host_has_already_is_used_not_added_twice():
    """cuda-keyring's source (or a site's own) for the same repository: apt refuses one repository with two keys,
    so vlmfleet adds none of its own."""
    url = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64"
    theirs = drv.AptSource("/etc/apt/sources.list.d/cuda-debian12-x86_64.list", url + "/",
                           "/usr/share/keyrings/cuda-archive-keyring.gpg")
    template = "https://developer.download.nvidia.com/compute/cuda/repos/{distro}/{arch}/"
    p = drv.plan("h1", "580", "debian", replace(FRESH, sources=(theirs,)), drv.parse_pci(A10X2), None, None,
                 os_version="12", cuda_repo_url=template)
    assert p.cuda_source == theirs.file and p.install
    assert p.notes[0] == ("NVIDIA's CUDA repository is configured already in /etc/apt/sources.list.d/cuda-debian12-"
                          "x86_64.list (signed by /usr/share/keyrings/cuda-archive-keyring.gpg; cuda-keyring's?): "
                          "vlmfleet uses it and adds no source of its own (apt refuses one repository with two keys)")
    ours = drv.AptSource(drv.CUDA_SOURCES, url + "/", drv.CUDA_KEYRING)
    mirror = drv.AptSource("/etc/apt/sources.list.d/mirror.list", "https://mirror.example/cuda/debian12/x86_64/")
    for sources in ((ours,), (mirror,), ()):
        assert drv.plan("h1", "580", "debian", replace(FRESH, sources=sources), drv.parse_pci(A10X2), None, None,
                        os_version="12", cuda_repo_url=template).cuda_source is None


def _gpg_key(home: Path) -> tuple[Path, str]:
    env = {**os.environ, "GNUPGHOME": str(home)}
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "test <t@example.invalid>", "ed25519",
                    "sign", "never"], env=env, check=True, capture_output=True)
    pub = home / "key.pub"
    pub.write_text(subprocess.run(["gpg", "--armor", "--export"], env=env, check=True, capture_output=True,
                                  text=True).stdout)
    out = subprocess.run(["gpg", "--show-keys", "--with-colons", str(pub)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return pub, next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


def test_the_repository_key_is_refused_unless_its_fingerprint_is_pinned(tmp_path):
    pub, fpr = _gpg_key(tmp_path / "gnupg")
    keyring = tmp_path / "keyring.gpg"
    env = {**os.environ, "GNUPGHOME": str(tmp_path / "gnupg")}
    ok = subprocess.run(["sh", "-c", drv.key_command(f"file://{pub}", fpr, str(keyring))], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert keyring.read_bytes()[:1] != b"-"  # dearmoured: apt's signed-by takes the binary keyring
    keyring.unlink()
    wrong = "EB693B3035CD5710E231E123A4B469963BF863CC"
    bad = subprocess.run(["sh", "-c", drv.key_command(f"file://{pub}", wrong, str(keyring))], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and not keyring.exists()
    assert bad.stderr.strip() == (f"vlmfleet: the key at file://{pub} has fingerprint {fpr}, not the pinned {wrong} "
                                  "(nvidia_cuda_repo_key_fingerprint): refused")


def test_the_key_and_repository_per_debian_release():
    tpl = "https://developer.download.nvidia.com/compute/cuda/repos/{distro}/{arch}/"
    assert drv.cuda_key("auto", "auto", tpl, "debian", "12", "x86_64") == (
        "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/3bf863cc.pub",
        "EB693B3035CD5710E231E123A4B469963BF863CC")
    assert drv.cuda_key("auto", "auto", tpl, "debian", "13", "x86_64")[0].endswith("/debian13/x86_64/8793F200.pub")
    assert drv.cuda_key("http://mirror/k.pub", "A" * 40, tpl, "debian", "12", "aarch64") == ("http://mirror/k.pub",
                                                                                          "A" * 40)
    assert drv.cuda_source_line(drv.fill(tpl, "debian", "12", "aarch64")) == (
        "deb [signed-by=/usr/share/keyrings/vlmfleet-nvidia-cuda.gpg] "
        "https://developer.download.nvidia.com/compute/cuda/repos/debian12/sbsa/ /\n")


@pytest.mark.parametrize("answer,rc,message", [
    ("580.95.05\n580.95.05", 0, "NVIDIA driver 580.95.05 answers for 2 GPUs"),
    ("570.172.08\n570.172.08", 1, "vlmfleet: the loaded NVIDIA driver is 570.172.08, not branch 580"),
    ("580.95.05", 1, "vlmfleet: nvidia-smi lists 1 GPUs, the PCI bus has 2"),
    (None, 1, "vlmfleet: nvidia-smi failed after the reboot (exit 9): NVIDIA-SMI has failed because it couldn't "
              "communicate with the NVIDIA driver."),
])
def test_the_check_after_the_reboot(tmp_path, answer, rc, message):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + (f"printf '{answer}\\n'\n" if answer else
                                    "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                                    "driver.\"; exit 9\n"))
    smi.chmod(0o755)
    r = subprocess.run(["sh", "-c", drv.check_command("580", 2)], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert r.returncode == rc and (r.stdout + r.stderr).strip() == message


def test_the_persistence_daemon_unit_verifies(tmp_path):
    from unitverify import verify, verify_root

    text = drv.persistenced_unit()
    assert "ExecStart=/usr/bin/nvidia-persistenced --user root --persistence-mode --verbose" in text
    assert "Before=docker.service" in text and "WantedBy=multi-user.target" in text
    root = verify_root(tmp_path, programs=("usr/bin/nvidia-persistenced", "bin/rm"))
    r = verify(root, "nvidia-persistenced.service", text)
    assert r.returncode == 0 and "nvidia-persistenced" not in r.stderr, r.stderr


# ---- preflight with the stage on ---------------------------------------------------------------------------------
DATA = {"vlm_profile": "qwen7b", "api_bind": "127.0.0.1", "nvidia_driver_branch": "580"}


def test_preflight_plans_a_fresh_box_from_its_pci_bus():
    cfg = config_for("h1", DATA)
    facts = HostFacts(os_id="ubuntu", os_version="24.04", gpu_csv=None, pci_text=A10X2,
                      driver_state="== kernel\n6.8.0-45-generic\n== packages\n")
    v = check(cfg, facts)
    assert v.ok, v.problems
    assert v.inventory.describe() == "2xA10 (23028 MiB each, cc 8.6, pcie)" and v.inventory.source == "PCI bus"
    assert v.summary.endswith("; will install driver branch 580 (nvidia-headless-no-dkms-580-server, "
                              "nvidia-utils-580-server from Ubuntu's archive), then reboot (no NVIDIA kernel module "
                              "is loaded)")
    # the same host with the stage off: the message names the key
    off = check(config_for("h1", {k: v for k, v in DATA.items() if k != "nvidia_driver_branch"}), facts)
    assert "fix: set nvidia_driver_branch = '580'" in off.problems[0]


def test_preflight_with_an_old_driver_and_the_stage_on_plans_the_new_branch():
    cfg = config_for("h1", DATA)
    old = SMI_A10.replace("580.95.05", "550.54.15")
    facts = HostFacts(os_id="debian", os_version="12", gpu_csv=old, pci_text=A10X2,
                      driver_state="== packages\ncuda-drivers-550 550.54.15-1\nnvidia-driver-cuda 550.54.15-1\n")
    v = check(cfg, facts)
    assert v.ok, v.problems  # "driver too old" becomes "will install branch 580"
    assert "will install driver branch 580 (cuda-drivers-580 from NVIDIA's CUDA repository), then reboot (the loaded " \
           "module is 550.54.15, not branch 580)" in v.summary


def test_a_gpu_the_catalog_has_no_pci_id_for_fails_naming_the_fix():
    facts = HostFacts(os_id="ubuntu", os_version="24.04", gpu_csv=None, pci_text='0000:17:00.0 "0302" "10de" "2321"',
                      driver_state="")
    v = check(config_for("h1", DATA), facts)
    assert v.problems == ["h1: GPUs: PCI device 10de:2321 at 0000:17:00.0 is a GPU the catalog has no pci_ids entry "
                          "for (vlmfleet/catalog/gpus.yaml); add it there, or install the driver so that nvidia-smi "
                          "names it"]


def test_every_catalog_gpu_the_lab_simulates_has_a_pci_id():
    inv = parse_pci_gpus(drv.parse_pci(HGX_H100))
    assert inv.describe() == "8xH100 (81559 MiB each, cc 9.0, nvlink)"


def test_the_data_keys():
    def problems(**data):
        return [p.render("h1") for p in build("h1", {**DATA, **data})[1]]

    assert problems(nvidia_driver_branch="580.95") == ["h1: data key 'nvidia_driver_branch' = '580.95': must be a "
                                                       "driver branch: three digits such as '580' — fix: "
                                                       "nvidia_driver_branch = '580'"]
    assert "older than vLLM 0.33.0's image needs (driver >= 580.65" in problems(nvidia_driver_branch="550")[0]
    assert problems(nvidia_driver_branch=580) == []  # --data nvidia_driver_branch=580 arrives as a number
    assert "fix: nvidia_cuda_repo_key_fingerprint = 'EB693B3035CD5710E231E123A4B469963BF863CC'" in problems(
        nvidia_cuda_repo_key_fingerprint="eb69 3b30 35cd 5710 e231 e123 a4b4 6996 3bf8 63cc")[0]
    assert "{release}" in problems(nvidia_cuda_repo_url="http://m/{release}/")[0]


# ---- the real H200 ----------------------------------------------------------------------------------------------
def _fact(text: str, name: str):
    block = text.split(f"--> Fact data for: {name}\n", 1)[1]
    return json.loads(block[: block.index("\n}\n") + 2])["@local"]


def test_the_driver_stage_dry_run_on_the_real_h200_is_reproduced():
    """`tools/capture_driver_facts.sh` ran `pyinfra @local deploys/driver.py --dry --data nvidia_driver_branch=580`
    on a lent H200 (Ubuntu 24.04, driver 580.159.04 loaded): no change, no reboot. The same facts here give the
    same lines."""
    facts_text = (H200 / "pyinfra-local-driver-facts.txt").read_text()
    dry = (H200 / "pyinfra-local-driver-dry.txt").read_text()
    assert _fact(facts_text, "vlmfleet.facts.NvidiaPci") + "\n" == (H200 / "pci.txt").read_text()
    facts = HostFacts(os_id="ubuntu", os_version="24.04", gpu_csv=_fact(facts_text, "vlmfleet.facts.GpuQuery")["csv"],
                      pci_text=_fact(facts_text, "vlmfleet.facts.NvidiaPci"),
                      driver_state=_fact(facts_text, "vlmfleet.facts.NvidiaDriverState"))
    v = check(config_for("@local", DATA, ssh_port=None), facts)
    assert v.ok and not v.driver.changes and v.driver.reboot is None
    assert f"[@local] noop: preflight passed: {v.summary.split(' fits, ')[0]} fits, " in dry
    assert v.summary.endswith("; driver 580.159.04 (branch 580) is loaded") and v.summary.split("; ")[-1] in dry
    assert f"[@local] noop: {v.driver.notes[0]}" in dry
    # nothing but the run's own lock bookkeeping in pyinfra's table of changes, and no reboot anywhere
    table = dry.split("--> Detected changes:\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert [row.strip().split("  ")[0] for row in table] == ["Take the host's rollout lock (one rollout at a time)",
                                                            "Release the host's rollout lock"]
    assert "Reboot" not in dry and "rc=0" in dry


def test_a_debian_branch_change_moves_the_unversioned_fabric_manager_too():
    """On Debian the fabric manager has no branch in its name from 580 on: a 580 host moving to 590 has
    nvidia-fabricmanager installed, at the wrong branch — it is installed again (the pin moves it)."""
    debian_580 = {"cuda-drivers-580": "580.95.05-1", "nvidia-driver-cuda": "580.95.05-1", "nvidia-kernel-dkms":
                  "580.95.05-1", "nvidia-fabricmanager": "580.95.05-1", "libnvidia-nscq": "580.95.05-1",
                  "nvidia-driver-pinning-580": "580.95.05-1"}
    state = replace(FRESH, packages=debian_580, held=frozenset(debian_580))
    p = plan(state=state, family="debian", branch="590", pci=HGX_H100, csv=SMI_A10)
    assert p.install.endswith("--force-confold cuda-drivers nvidia-fabricmanager libnvidia-nscq $h")
    assert "apt-mark unhold cuda-drivers-580 libnvidia-nscq nvidia-driver-cuda" in p.install
    # after the move the 580 metapackage stays behind: it does not make the host "580" again
    after = {**{k: v.replace("580.95.05", "590.44.01") for k, v in debian_580.items() if k != "cuda-drivers-580"},
             "cuda-drivers-580": "580.95.05-1", "cuda-drivers": "590.44.01-1"}
    assert drv.installed_version(after, "580") is None and drv.installed_version(after, "590") == "590.44.01"
    back = plan(state=replace(FRESH, packages=after), family="debian", branch="580", pci=HGX_H100,
                csv=SMI_A10.replace("580.95.05", "590.44.01"))
    assert back.install and back.reboot == "the loaded module is 590.44.01, not branch 580"


def test_the_drain_before_a_reboot(tmp_path):
    """Where the drain agent runs, the state file says drain for drain_s before the reboot; elsewhere nothing."""
    state = tmp_path / "run/vlmfleet/gateway-agent"
    cmd = drv.drain_command(str(state), "vlmfleet-agent.service", 0)
    assert cmd == (f"if systemctl is-active --quiet vlmfleet-agent.service; then mkdir -p {tmp_path}/run/vlmfleet && "
                   f"echo drain > {state} && echo 'draining: the gateways send this replica nothing new; rebooting in "
                   "0s' && sleep 0; else echo 'no drain agent runs here (vlmfleet-agent.service is not active): "
                   "nothing to drain'; fi")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for active in (True, False):
        state.unlink(missing_ok=True)
        (bin_ / "systemctl").write_text(f"#!/bin/sh\nexit {0 if active else 3}\n")
        (bin_ / "systemctl").chmod(0o755)
        r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                           env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"})
        assert r.returncode == 0 and state.exists() is active
        assert ("draining" if active else "nothing to drain") in r.stdout


def test_a_kernel_update_gets_its_module_package_and_the_flavour_meta_is_never_held():
    state = replace(FRESH, kernel="6.8.0-50-generic", packages=UBUNTU_580, held=frozenset(UBUNTU_580))
    p = plan(state=state, error="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    assert p.install and "linux-modules-nvidia-580-server-\"$k\"" in p.install and p.reboot
    assert p.notes[-1] == ("the running kernel 6.8.0-50-generic has no NVIDIA 580 module package "
                           "(linux-modules-nvidia-580-server-6.8.0-50-generic): installed for it")
    assert "linux-modules-nvidia-580-server-generic" not in drv.driver_packages(UBUNTU_580)
    assert "linux-modules-nvidia-580-server-6.8.0-45-generic" in drv.driver_packages(UBUNTU_580)
    assert "grep -vE '^linux-modules-nvidia-[0-9]+-server(-open)?-[a-z]'" in drv.hold_command()


def test_a_retired_ubuntu_branch_fails_naming_the_branch_it_became():
    retired = {"nvidia-utils-550-server": "580.95.05-0ubuntu0.24.04.2"}  # Canonical's transitional package
    with pytest.raises(drv.DriverError, match=r"^h1: data key 'nvidia_driver_branch' = '550': the packages named for "
                                              r"branch 550 install branch 580 \(a retired branch\) — fix: "
                                              r"nvidia_driver_branch = '580'$"):
        plan(state=replace(FRESH, packages=retired), branch="550")


def test_a_daemon_that_is_not_running_after_the_reboot_fails_the_check(tmp_path):
    for rc, state in ((0, "active"), (3, "failed")):
        (tmp_path / "systemctl").write_text(f"#!/bin/sh\n[ \"$2\" = --quiet ] && exit {rc}; echo {state}\n")
        (tmp_path / "journalctl").write_text("#!/bin/sh\necho 'nv-fabricmanager: NVSwitch devices not found'\n")
        for name in ("systemctl", "journalctl"):
            (tmp_path / name).chmod(0o755)
        r = subprocess.run(["sh", "-c", drv.active_command("nvidia-fabricmanager.service")], capture_output=True,
                           text=True, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
        assert r.returncode == (0 if rc == 0 else 1)
        if rc:
            assert r.stderr.splitlines() == ["vlmfleet: nvidia-fabricmanager.service is not running after the reboot "
                                             "(failed):", "nv-fabricmanager: NVSwitch devices not found"]


def test_a_reinstall_moves_the_fabric_manager_along_and_the_check_goes_by_the_branch():
    """A switch of module kind (or a kernel's module package) installs the branch's newest version, which may move
    the installed parts: the fabric manager is named too, and the check after the reboot wants the branch."""
    debian = {"cuda-drivers-580": "580.95.05-1", "nvidia-kernel-dkms": "580.95.05-1", "nvidia-driver-cuda":
              "580.95.05-1", "nvidia-fabricmanager": "580.95.05-1", "libnvidia-nscq": "580.95.05-1"}
    state = replace(FRESH, packages=debian, held=frozenset(debian), persistenced_ours=True, proc_open=False)
    p = plan(state=state, family="debian", pci=HGX_H100, csv=SMI_A10, modules="open")
    assert p.install.endswith("--force-confold nvidia-open-580 nvidia-fabricmanager libnvidia-nscq $h")
    assert p.installed == "580.95.05" and p.expect is None and p.reboot
    assert plan(state=state, family="debian", pci=HGX_H100, csv=SMI_A10).expect == "580.95.05"  # nothing to do


def test_an_unknown_or_stale_module_kind_is_no_reason_to_reboot():
    """Debian's own archive names its open modules nvidia-open-kernel-dkms; Ubuntu keeps old kernels' module
    packages. Neither may make a host reboot, or reinstall, on every run."""
    debian_own = {"nvidia-driver": "580.95.05-1", "nvidia-open-kernel-dkms": "580.95.05-1",
                  "libnvidia-compute1": "580.95.05-1"}
    assert drv.installed_kind(debian_own, "580") == "open"
    odd = {"nvidia-driver": "580.95.05-1", "nvidia-some-kernel-module": "580.95.05-1"}
    for packages in (debian_own, odd):
        state = replace(FRESH, packages=packages, held=frozenset(packages), persistenced_ours=True, proc_open=True)
        assert not plan(state=state, family="debian", csv=SMI_A10).changes, packages
    opened = {"nvidia-headless-no-dkms-580-server-open": "580.95.05-0ubuntu1", "nvidia-utils-580-server":
              "580.95.05-0ubuntu1", "linux-modules-nvidia-580-server-open-generic": "6.8.0-45.45+1",
              "linux-modules-nvidia-580-server-open-6.8.0-45-generic": "6.8.0-45.45+1",
              "linux-modules-nvidia-580-server-6.8.0-40-generic": "6.8.0-40.40+1"}  # an old kernel's, proprietary
    assert drv.installed_kind(opened, "580", "6.8.0-45-generic") == "open"
    assert drv.installed_kind(opened, "580") == "mixed"
    state = replace(FRESH, packages=opened, held=frozenset(opened), persistenced_ours=True, proc_open=True)
    for modules in ("auto", "open"):
        assert not plan(state=state, csv=SMI_A10, modules=modules).changes, modules
    assert not drv.MODULE_KINDS["proprietary"].match("linux-modules-nvidia-580-server-open-generic")


def test_the_state_scripts_sources_loop_reads_active_files_and_stanzas(tmp_path):
    """The script's sources loop against a fake /etc/apt: .list and .sources only (not .disabled or .save), every
    deb822 stanza, a tab after deb, Enabled: no."""
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    cuda = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"
    (apt / "sources.list.d/cuda-debian12-x86_64.list.disabled").write_text(f"deb [signed-by=/k.gpg] {cuda} /\n")
    (apt / "sources.list.d/old.list").write_text(f"deb\t[signed-by=/old.gpg]\t{cuda} /\n")
    (apt / "sources.list.d/nvidia.sources").write_text(
        f"Types: deb\nURIs: {cuda}\nSuites: /\nSigned-By: /usr/share/keyrings/cuda.gpg\n\n"
        "Types: deb\nURIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64\nSuites: /\n"
        "Signed-By: /usr/share/keyrings/toolkit.gpg\n\nTypes: deb\nURIs: https://mirror.example/cuda/\n"
        "Enabled: no\nSuites: /\n")
    loop = drv.STATE_SCRIPT[drv.STATE_SCRIPT.index("echo '== sources'"):].replace("/etc/apt", str(apt))
    out = subprocess.run(["sh", "-c", loop], capture_output=True, text=True, check=True).stdout
    s = drv.parse_state(out)
    d = str(apt / "sources.list.d")
    assert s.sources == (drv.AptSource(f"{d}/old.list", cuda, "/old.gpg"),
                         drv.AptSource(f"{d}/nvidia.sources", cuda, "/usr/share/keyrings/cuda.gpg"),
                         drv.AptSource(f"{d}/nvidia.sources", "https://nvidia.github.io/libnvidia-container/stable/"
                                       "deb/amd64", "/usr/share/keyrings/toolkit.gpg"))


def test_secure_boot_without_mokutil_says_to_install_it():
    text = "== kernel\n6.1.0-28-amd64\n== secureboot\nstate 1\nmok no mokutil\n"
    s = drv.parse_state(text)
    assert s.secure_boot and not s.mokutil and not s.mok_enrolled
    with pytest.raises(drv.DriverError, match=r"Secure Boot is on and mokutil is not installed.* — fix: apt-get "
                                              r"install mokutil, then run again$"):
        plan(state=s, family="debian")
    # Ubuntu's DKMS key (shim-signed's MOK.der), enrolled: the second key's line counts
    s = drv.parse_state("== secureboot\nstate 1\nmok /var/lib/dkms/mok.pub is not enrolled\n"
                        "mok /var/lib/shim-signed/mok/MOK.der is already enrolled\n")
    assert s.mok_enrolled and s.mokutil
