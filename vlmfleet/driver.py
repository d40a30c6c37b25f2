"""The NVIDIA driver stage's logic: what a host has, what its data pins, and what the stage does about it.

Pure Python, no pyinfra: the facts come in as text (``lspci``, the state script's sections, ``nvidia-smi``), a
:class:`DriverPlan` comes out — which packages from where, whether to hold them, enable the persistence daemon
and the fabric manager, and whether the host must reboot — with one sentence per decision for ``--dry``.

What is installed, per OS (docs/driver.md says why):

- **Ubuntu 22.04 / 24.04** — the archive's server branch with Canonical's precompiled, signed kernel modules:
  ``nvidia-headless-no-dkms-<B>-server``, ``nvidia-utils-<B>-server`` and
  ``linux-modules-nvidia-<B>-server-<flavour>``; only when the archive has no module package for the running
  kernel (``linux-modules-nvidia-<B>-server-$(uname -r)``), ``nvidia-dkms-<B>-server`` and the kernel's headers
  instead (decided on the host, at install time). ``-open`` variants with ``nvidia_driver_modules = 'open'``.
- **Debian 12 / 13** — NVIDIA's CUDA repository (key pinned by fingerprint): ``cuda-drivers-<B>`` (DKMS modules;
  the running kernel's headers when Debian has them).
- **NVSwitch systems** — the fabric manager of the same branch (``nvidia-fabricmanager-<B>``, with
  ``libnvidia-nscq-<B>`` on Ubuntu), enabled before any CUDA work.
- Everywhere: nouveau blacklisted, the driver's packages held (``apt-mark hold``), ``nvidia-persistenced``
  enabled.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

NVIDIA_VENDOR = "10de"
GPU_CLASSES = ("0300", "0302")  # VGA-compatible controller, 3D controller
BRIDGE_CLASS = "0680"  # NVSwitch: "Bridge: NVIDIA Corporation ..."

#: the PCI view of the NVIDIA devices, in lspci's machine-readable form; the sysfs loop prints the same columns
#: where pciutils is not installed
PCI_QUERY = (
    "if command -v lspci >/dev/null 2>&1; then lspci -Dnmm -d 10de: ; else "
    "for d in /sys/bus/pci/devices/*; do [ \"$(cat $d/vendor 2>/dev/null)\" = 0x10de ] || continue; "
    "c=$(cat $d/class); v=$(cat $d/device); "
    "printf '%s \"%s\" \"10de\" \"%s\"\\n' \"${d##*/}\" \"$(echo $c | cut -c3-6)\" \"${v#0x}\"; done; fi"
)

#: the driver's state in sections, one command: kernel, architecture, packages, holds, nouveau, persistence, the
#: loaded module, Secure Boot (and whether DKMS's signing key is enrolled), the apt sources naming cuda or nvidia
STATE_SCRIPT = (
    "echo '== kernel'; uname -r; echo '== arch'; uname -m; "
    "echo '== packages'; dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n' "
    "'nvidia-*' 'libnvidia-*' 'cuda-drivers*' 'linux-modules-nvidia-*' 'linux-image-*' 2>/dev/null "
    "| awk '$1 ~ /^[hi]i/ {print $2, $3}'; "
    "echo '== held'; apt-mark showhold 2>/dev/null; "
    "echo '== nouveau'; echo \"loaded $(grep -c '^nouveau ' /proc/modules 2>/dev/null)\"; "
    "echo \"module $(find /lib/modules/$(uname -r) -name 'nouveau.ko*' 2>/dev/null | head -1)\"; "
    "echo \"blacklisted $(grep -rls '^blacklist nouveau' /etc/modprobe.d /lib/modprobe.d /usr/lib/modprobe.d "
    "2>/dev/null | head -1)\"; "
    "echo '== persistence'; echo \"mode $(nvidia-smi --query-gpu=persistence_mode --format=csv,noheader "
    "2>/dev/null | head -1)\"; echo \"unit $(grep -ls vlmfleet /etc/systemd/system/nvidia-persistenced.service)\"; "
    "echo '== loaded'; head -1 /proc/driver/nvidia/version 2>/dev/null || true; "
    "echo '== secureboot'; echo \"state $(od -An -tu1 -j4 -N1 "
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c 2>/dev/null | tr -d ' ')\"; "
    "if command -v mokutil >/dev/null; then for k in /var/lib/dkms/mok.pub /var/lib/shim-signed/mok/MOK.der; do "
    "[ -f $k ] && echo \"mok $(mokutil --test-key $k 2>&1 | head -1)\"; done; else echo 'mok no mokutil'; fi; "
    "echo '== sources'; for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
    "/etc/apt/sources.list.d/*.sources; do grep -qsiE 'cuda|nvidia' \"$f\" || continue; "
    "grep -HE '^[[:space:]]*(deb[[:space:]]|URIs:|Signed-By:|Enabled:|$)' \"$f\"; done; true"
)

#: nvidia-smi's own words when no kernel module answers, and when the module is not the library's version
NO_DRIVER = "couldn't communicate with the NVIDIA driver"
MISMATCH = "Driver/library version mismatch"

NOUVEAU_CONF = "/etc/modprobe.d/blacklist-nouveau.conf"
NOUVEAU_BLACKLIST = "# vlmfleet: the NVIDIA driver needs the GPUs; nouveau must not take them\nblacklist nouveau\noptions nouveau modeset=0\n"
#: NVIDIA's CUDA repository keys per folder: (file, fingerprint). Debian 13's apt refuses the SHA-1 binding of the
#: 2022 key since 2026-02-01, so NVIDIA signs debian13 with a new one (NVIDIA/cuda-repo-management#30, #39)
CUDA_KEYS = {
    "debian13": ("8793F200.pub", "02182E60104FCDC26EAE1B8597A5D4CB8793F200"),
}
CUDA_KEY = ("3bf863cc.pub", "EB693B3035CD5710E231E123A4B469963BF863CC")  # debian12, ubuntu2204, ubuntu2404
CUDA_KEYRING = "/usr/share/keyrings/vlmfleet-nvidia-cuda.gpg"
CUDA_SOURCES = "/etc/apt/sources.list.d/vlmfleet-nvidia-cuda.list"


PERSISTENCED_UNIT = "/etc/systemd/system/nvidia-persistenced.service"


def persistenced_unit(before: str = "docker.service") -> str:
    """The persistence daemon's unit vlmfleet writes (templates/driver/nvidia-persistenced.service.j2): persistence
    mode on, started at boot before ``before`` (the containers' engine)."""
    from .paths import render

    return render("driver/nvidia-persistenced.service.j2", before=before)


class DriverError(ValueError):
    """Facts the stage cannot act on; the message names the host's fact and the fix."""


# ---- facts ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PciDevice:
    """One NVIDIA PCI function, e.g. ``PciDevice("0000:17:00.0", "0302", "2330")`` (an H100 SXM5)."""

    slot: str
    cls: str  # 4 hex digits: 0302 3D controller, 0680 bridge (NVSwitch)
    device: str  # 4 hex digits

    @property
    def is_gpu(self) -> bool:
        return self.cls in GPU_CLASSES

    @property
    def is_nvswitch(self) -> bool:
        return self.cls == BRIDGE_CLASS


def parse_pci(text: str | None) -> tuple[PciDevice, ...]:
    """The NVIDIA devices of ``lspci -Dnmm -d 10de:`` (or the sysfs loop of :data:`PCI_QUERY`).

    + text: e.g. ``'0000:17:00.0 "0302" "10de" "2330" -ra1 "10de" "16c1"'``; audio functions and the like are
      kept (their class is neither a GPU's nor a bridge's)
    """
    out = []
    for line in (text or "").splitlines():
        m = re.match(r'^\s*(\S+)\s+"([0-9a-fA-F]{4})[0-9a-fA-F]*"\s+"([0-9a-fA-F]{4})"\s+"([0-9a-fA-F]{4})"', line)
        if m and m[3].lower() == NVIDIA_VENDOR:
            out.append(PciDevice(m[1], m[2].lower(), m[4].lower()))
    return tuple(out)


@dataclass(frozen=True)
class DriverState:
    """What the state script found (parse_state): the running kernel, the driver's packages, holds, nouveau."""

    kernel: str = ""  # "6.8.0-45-generic"
    arch: str = "x86_64"
    packages: dict = field(default_factory=dict)  # installed package -> version
    held: frozenset = frozenset()
    nouveau_loaded: bool = False
    nouveau_module: bool = False  # the running kernel has a nouveau module (it could take the GPUs at boot)
    nouveau_blacklisted: str | None = None  # the modprobe.d file that blacklists it already
    persistence_mode: str | None = None  # nvidia-smi's persistence_mode of GPU 0: "Enabled" / "Disabled"
    persistenced_ours: bool = False  # /etc/systemd/system/nvidia-persistenced.service is vlmfleet's
    proc_version: str | None = None  # /proc/driver/nvidia/version's version, when a module is loaded
    proc_open: bool | None = None  # the loaded module is the open one ("Open Kernel Module"); None: none loaded
    secure_boot: bool = False  # the firmware enforces Secure Boot (its SecureBoot EFI variable is 1)
    mok_enrolled: bool = False  # a DKMS signing key (/var/lib/dkms/mok.pub, Ubuntu's MOK.der) is enrolled
    mokutil: bool = True  # mokutil is installed (without it, whether a key is enrolled is not known)
    sources: tuple = ()  # AptSource of every apt source file naming cuda or nvidia


def parse_state(text: str | None) -> DriverState:
    """Parse :data:`STATE_SCRIPT`'s sections."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (text or "").splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None and line.strip():
            current.append(line.strip())
    first = lambda name: (sections.get(name) or [""])[0]  # noqa: E731
    packages = {}
    for line in sections.get("packages", []):
        name, _, version = line.partition(" ")
        packages[name] = version.strip()
    loaded = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", first("loaded"))

    def pairs(name: str) -> dict[str, str]:
        return {k: v.strip() for k, _, v in (line.partition(" ") for line in sections.get(name, []))}

    nouveau, persistence, boot = pairs("nouveau"), pairs("persistence"), pairs("secureboot")
    return DriverState(kernel=first("kernel"), arch=first("arch") or "x86_64", packages=packages,
                       held=frozenset(sections.get("held", [])),
                       nouveau_loaded=nouveau.get("loaded", "0").isdigit() and int(nouveau.get("loaded", "0")) > 0,
                       nouveau_module=bool(nouveau.get("module")), nouveau_blacklisted=nouveau.get("blacklisted") or None,
                       persistence_mode=persistence.get("mode") or None, persistenced_ours=bool(persistence.get("unit")),
                       proc_version=loaded[1] if loaded else None,
                       proc_open=("Open Kernel Module" in first("loaded")) if loaded else None,
                       secure_boot=boot.get("state") == "1",
                       mok_enrolled=any("is already enrolled" in x for x in sections.get("secureboot", [])),
                       mokutil="mok no mokutil" not in sections.get("secureboot", []),
                       sources=parse_sources(sections.get("sources", [])))


@dataclass(frozen=True)
class AptSource:
    """One repository of an apt source file, e.g. ``AptSource("/etc/apt/sources.list.d/cuda-debian12-x86_64.list",
    "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/",
    "/usr/share/keyrings/cuda-archive-keyring.gpg")`` (what NVIDIA's cuda-keyring package writes)."""

    file: str
    url: str
    signed_by: str | None = None


def parse_sources(lines: list[str]) -> tuple[AptSource, ...]:
    """The ``== sources`` section: ``FILE:deb [signed-by=K] URL SUITE`` lines (one-line style), and deb822
    ``.sources`` stanzas (``FILE:URIs: URL``, ``FILE:Signed-By: K``, ``FILE:Enabled: no``; a bare ``FILE:`` ends a
    stanza)."""
    out: list[AptSource] = []
    stanza: dict = {}

    def flush() -> None:
        if (stanza.get("enabled") or "yes").lower() != "no":
            out.extend(AptSource(stanza["file"], url, stanza.get("key")) for url in stanza.get("urls", []))
        stanza.clear()

    for line in lines:
        file, sep, rest = line.partition(":")
        rest = rest.strip()
        if not sep:
            continue
        if stanza and (stanza["file"] != file or not rest):
            flush()
        m = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)", rest)
        if m:
            opts = dict(o.partition("=")[::2] for o in (m[1] or "").split())
            out.append(AptSource(file, m[2], opts.get("signed-by")))
        elif rest.startswith(("URIs:", "Signed-By:", "Enabled:")):
            field_, _, value = rest.partition(":")
            stanza["file"] = file
            if field_ == "URIs":
                stanza["urls"] = value.split()
            else:
                stanza["key" if field_ == "Signed-By" else "enabled"] = value.strip() or None
    if stanza:
        flush()
    return tuple(out)


def same_repository(a: str, b: str) -> bool:
    """Two source URLs apt takes for one repository (a trailing slash does not count)."""
    return a.rstrip("/") == b.rstrip("/")


def smi_version(gpu_csv: str | None) -> str | None:
    """The driver version nvidia-smi reports — the loaded kernel module's — from the preflight query's CSV."""
    for line in (gpu_csv or "").splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) >= 5 and re.fullmatch(r"\d+\.\d+(\.\d+)?", cols[4]):
            return cols[4]
    return None


def upstream(version: str) -> str:
    """``580.95.05`` of a Debian version: ``580.95.05-0ubuntu0.24.04.2`` or ``1:580.95.05-1``."""
    return version.split(":", 1)[-1].split("-", 1)[0]


def branch_of(version: str | None) -> str | None:
    return version.split(".", 1)[0] if version else None


# ---- what to install -----------------------------------------------------------------------------------------
def os_family(os_id: str | None) -> str | None:
    return {"ubuntu": "ubuntu", "debian": "debian"}.get((os_id or "").lower())


def cuda_distro(os_id: str, os_version: str) -> str:
    """The CUDA repository's folder: ``debian12``, ``debian13``, ``ubuntu2404``."""
    return f"{os_id}{os_version.replace('.', '')}"


def cuda_arch(machine: str) -> str:
    """The CUDA repository's architecture folder for ``uname -m``: x86_64, sbsa (arm64 servers)."""
    return {"aarch64": "sbsa", "arm64": "sbsa"}.get(machine, machine or "x86_64")


def cuda_key(key_url: str, fingerprint: str, repo_url: str, os_id: str, os_version: str, machine: str
             ) -> tuple[str, str]:
    """The key's URL and pinned fingerprint, ``auto`` resolved for the repository folder (:data:`CUDA_KEYS`).

    + key_url / fingerprint: the nvidia_cuda_repo_key_url / _fingerprint data, e.g. ``"auto"``
    + repo_url: the nvidia_cuda_repo_url data (a template)
    """
    file, fpr = CUDA_KEYS.get(cuda_distro(os_id, os_version), CUDA_KEY)
    url = fill(repo_url, os_id, os_version, machine).rstrip("/") + "/" + file if key_url == "auto" else \
        fill(key_url, os_id, os_version, machine)
    return url, fpr if fingerprint == "auto" else fingerprint


def fill(template: str, os_id: str, os_version: str, machine: str) -> str:
    """A repository URL template with ``{distro}`` and ``{arch}`` filled in."""
    return template.replace("{distro}", cuda_distro(os_id, os_version)).replace("{arch}", cuda_arch(machine))


def kernel_flavour(kernel: str, packages: dict, os_version: str, wanted: str = "auto") -> str:
    """The Ubuntu kernel flavour of the precompiled-module metapackage.

    + kernel: ``uname -r``, e.g. ``"6.8.0-45-generic"`` (flavour ``generic``) or ``"6.8.0-1015-aws"``
    + packages: installed packages: ``linux-image-generic-hwe-24.04`` makes it ``generic-hwe-24.04``
    + wanted: the ``nvidia_kernel_flavour`` data, ``auto`` or a flavour that wins
    """
    if wanted != "auto":
        return wanted
    m = re.match(r"^\d+\.\d+\.\d+-\d+-(.+)$", kernel)
    flavour = m[1] if m else "generic"
    hwe = f"linux-image-{flavour}-hwe-{os_version}"
    return f"{flavour}-hwe-{os_version}" if hwe in packages else flavour


@dataclass(frozen=True)
class Packages:
    """The packages of one branch on one OS.

    + driver: installed unconditionally, e.g. ``("nvidia-headless-no-dkms-580-server", "nvidia-utils-580-server")``
    + modules: the precompiled modules' metapackage (Ubuntu), e.g. ``"linux-modules-nvidia-580-server-generic"``
    + kernel_modules_prefix: with ``-$(uname -r)`` appended, the running kernel's module package, whose presence
      in the archive decides precompiled vs DKMS, e.g. ``"linux-modules-nvidia-580-server"``
    + dkms: the fallback, e.g. ``"nvidia-dkms-580-server"``
    + fabric: the fabric manager's packages of the branch
    + source: where they come from, for messages; pin: e.g. ``"nvidia-driver-pinning-590"`` (Debian, 590 on)
    """

    driver: tuple[str, ...]
    modules: str | None
    kernel_modules_prefix: str | None
    dkms: str | None
    fabric: tuple[str, ...]
    source: str
    pin: str | None = None  # installed first, in its own apt run: it pins the unversioned packages to the branch


def packages_for(family: str, branch: str, modules: str, flavour: str) -> Packages:
    """What vlmfleet installs for ``branch`` (``"580"``) on ``family`` (ubuntu | debian).

    + modules: ``proprietary`` or ``open`` (nvidia_driver_modules)
    + flavour: from :func:`kernel_flavour`, e.g. ``"generic"``
    """
    open_ = "-open" if modules == "open" else ""
    if family == "ubuntu":
        return Packages(
            driver=(f"nvidia-headless-no-dkms-{branch}-server{open_}", f"nvidia-utils-{branch}-server"),
            modules=f"linux-modules-nvidia-{branch}-server{open_}-{flavour}",
            kernel_modules_prefix=f"linux-modules-nvidia-{branch}-server{open_}",
            dkms=f"nvidia-dkms-{branch}-server{open_}",
            fabric=(f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"),
            source="Ubuntu's archive")
    # the versioned metapackage alone is not a pin: its dependencies are ">=", so apt would take the newest branch's
    # packages; NVIDIA's pinning package of the branch goes first, in its own apt run
    meta = "nvidia-open" if open_ else "cuda-drivers"
    new = int(branch) >= 590  # NVIDIA drops the branch from the package names from 590 on
    return Packages(driver=(meta,) if new else (f"{meta}-{branch}",), modules=None, kernel_modules_prefix=None,
                    dkms=None, fabric=("nvidia-fabricmanager", "libnvidia-nscq") if int(branch) >= 580
                    else (f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"),
                    source="NVIDIA's CUDA repository", pin=f"nvidia-driver-pinning-{branch}")


#: the packages a hold covers: everything of the driver, whichever branch (and the kernel's module packages)
HOLD_PATTERN = r"^(nvidia-|libnvidia-|cuda-drivers|linux-modules-nvidia-|libxnvctrl|xserver-xorg-video-nvidia)"


#: packages whose version is the driver's, whichever source installed them (Ubuntu's archive, the CUDA repository)
#: (not the metapackages cuda-drivers-<B> / nvidia-open-<B>: one of another branch stays behind after a move)
DRIVER_MARKERS = r"^(nvidia-utils|nvidia-driver(?!-pinning)|nvidia-headless|nvidia-compute-utils|libnvidia-compute)"


#: the kernel module packages of each kind (Ubuntu's archive, NVIDIA's CUDA repository)
#: (and Debian's own nvidia-open-kernel-dkms, Ubuntu's desktop branches without -server)
MODULE_KINDS = {
    "open": re.compile(r"^(nvidia-kernel-open-dkms|nvidia-open-kernel-dkms|nvidia-headless-no-dkms-\d+(-server)?-open"
                       r"|nvidia-dkms-\d+(-server)?-open|linux-modules-nvidia-\d+(-server)?-open-.+)$"),
    "proprietary": re.compile(r"^(nvidia-kernel-dkms|nvidia-headless-no-dkms-\d+(-server)?|nvidia-dkms-\d+(-server)?"
                              r"|linux-modules-nvidia-\d+(-server)?-(?!open-|server-).+)$"),
}
#: a module package of one kernel: linux-modules-nvidia-580-server-6.8.0-45-generic
KERNEL_MODULES = re.compile(r"^linux-modules-nvidia-\d+(?:-server)?(?:-open)?-(\d+\.\d+\.\d+-\d+-.+)$")


def installed_kind(packages: dict, branch: str, kernel: str = "") -> str | None:
    """Which kernel modules apt installed for ``branch``: ``"open"``, ``"proprietary"``, ``"mixed"`` (both), or None.

    + packages: installed package -> version, e.g. ``{"nvidia-kernel-open-dkms": "580.95.05-1"}`` (open)
    + kernel: the running kernel: module packages of other kernels (Ubuntu keeps old kernels') do not count
    """
    def counts(p: str) -> bool:
        m = KERNEL_MODULES.match(p)
        return not (m and kernel and m[1] != kernel)

    kinds = {kind for p, v in packages.items() for kind, rx in MODULE_KINDS.items()
             if rx.match(p) and counts(p) and (f"-{branch}-" in p or branch_of(upstream(v)) == branch)}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)


def installed_version(packages: dict, branch: str) -> str | None:
    """The driver version of ``branch`` apt has installed (the newest, when several packages say), else None.

    + packages: installed package -> Debian version, e.g. ``{"nvidia-utils-580-server": "580.95.05-0ubuntu1"}``
    """
    found = [upstream(v) for p, v in packages.items() if re.match(DRIVER_MARKERS, p)
             and branch_of(upstream(v)) == branch]
    return max(found, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v))) if found else None


#: Ubuntu's module metapackage of a kernel flavour (linux-modules-nvidia-580-server-generic): never held, so it
#: follows the kernel metapackage and brings the next kernel's module package with it
FLAVOUR_META = re.compile(r"^linux-modules-nvidia-[0-9]+-server(-open)?-[a-z]")


def driver_packages(packages: dict) -> list[str]:
    """The installed packages a hold covers (HOLD_PATTERN), sorted."""
    return sorted(p for p in packages if re.match(HOLD_PATTERN, p) and p != "nvidia-container-toolkit"
                  and not FLAVOUR_META.match(p)
                  and not p.startswith("nvidia-container-toolkit") and not p.startswith("libnvidia-container"))


def install_command(pk: Packages, extra: tuple[str, ...] = (), driver: bool = True,
                    unhold: tuple[str, ...] = (), secure_boot: bool = False, downgrade: bool = False) -> str:
    """The shell command that installs ``pk`` non-interactively (held packages of another branch may move).

    On Ubuntu it asks the archive, on the host and at install time, whether the running kernel has precompiled
    modules of the branch, and falls back to DKMS (with that kernel's headers) only when it has not; on Debian the
    CUDA repository's DKMS modules need the running kernel's headers, installed when Debian has them.

    + extra: more packages of the branch, e.g. the fabric manager's
    + driver: False: only ``extra`` (the driver is installed already)
    + unhold: held packages of the driver now installed (another branch): released first, as apt moves held
      packages only when each is named; the stage holds the new ones after
    + secure_boot: the firmware enforces Secure Boot and DKMS's key is not enrolled: Ubuntu's DKMS fallback fails
      before installing anything (its module would not load), naming the fix
    + downgrade: ``extra`` names exact versions that may be older than the installed ones (``--allow-downgrades``)
    """
    apt = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
           "--allow-change-held-packages -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")
    if downgrade:
        apt += " --allow-downgrades"
    base = " ".join(shlex.quote(p) for p in (pk.driver if driver else ()) + tuple(extra))
    release = f"apt-mark unhold {' '.join(shlex.quote(p) for p in unhold)} >/dev/null || exit 1; " if unhold else ""
    if not driver:
        return f"{release}{apt} {base}"
    if pk.modules:
        per_kernel = f'{pk.kernel_modules_prefix}-"$k"'
        return (f"{release}k=$(uname -r); if apt-cache show --no-all-versions {per_kernel} 2>/dev/null | grep -q '^Package:'; then "
                f"{apt} {base} {pk.modules} {per_kernel}; "
                + (f'else echo "vlmfleet: the archive has no precompiled NVIDIA module for kernel $k, and {SECURE_BOOT_DKMS}" '
                   ">&2; exit 1; fi" if secure_boot else
                   f'else echo "vlmfleet: the archive has no precompiled NVIDIA module for kernel $k: building it with '
                   f'DKMS ({pk.dkms})" >&2; {apt} {base} {pk.dkms} linux-headers-"$k"; fi'))
    return (release + 'k=$(uname -r); if apt-cache show --no-all-versions linux-headers-"$k" 2>/dev/null | grep -q "^Package:"; '
            'then h=linux-headers-"$k"; else '
            'h=; echo "vlmfleet: no linux-headers-$k package: DKMS needs the running kernel\'s headers to build the '
            'module" >&2; fi; ' + (f"{apt} {pk.pin} && " if pk.pin else "") + f"{apt} {base} $h")


#: why a DKMS module cannot serve under Secure Boot until DKMS's key is enrolled, and the fix (no backquotes: it is
#: echoed by the shell)
SECURE_BOOT_DKMS = ("Secure Boot is on: a module DKMS builds is signed with this host's own key "
                    "(/var/lib/dkms/mok.pub), which the firmware refuses until it is enrolled — fix: enroll it "
                    "(dkms generate_mok creates it where it is missing, DKMS 3.1 and later; mokutil --import "
                    "/var/lib/dkms/mok.pub, then confirm in the MOK manager at the console on the next boot), or turn "
                    "Secure Boot off in the firmware, then run again")


def hold_command() -> str:
    """Hold every installed package of the driver (HOLD_PATTERN), so that an unattended upgrade cannot move the
    kernel module under a running server; the list is read on the host, after the install."""
    return ("dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' | awk '$1 ~ /^[hi]i/ {print $2}' "
            f"| grep -E {shlex.quote(HOLD_PATTERN)} | grep -vE '^(nvidia-container-toolkit|libnvidia-container)' "
            f"| grep -vE {shlex.quote(FLAVOUR_META.pattern)} "
            "| xargs -r apt-mark hold")


def key_command(key_url: str, fingerprint: str, keyring: str = CUDA_KEYRING) -> str:
    """Fetch the repository key, refuse it unless its fingerprint is the pinned one, install it dearmoured."""
    return (f"t=$(mktemp) && curl -fsSL --retry 3 --connect-timeout 20 --max-time 120 {shlex.quote(key_url)} -o \"$t\" && "
            f"got=$(gpg --show-keys --with-colons \"$t\" | awk -F: '$1 == \"fpr\" {{print $10; exit}}') && "
            f"if [ \"$got\" != {shlex.quote(fingerprint)} ]; then echo \"vlmfleet: the key at {key_url} has "
            f"fingerprint ${{got:-none}}, not the pinned {fingerprint} (nvidia_cuda_repo_key_fingerprint): refused\" "
            f">&2; rm -f \"$t\"; exit 1; fi && gpg --dearmor --yes -o {shlex.quote(keyring)} \"$t\" && "
            f"chmod 644 {shlex.quote(keyring)} && rm -f \"$t\"")


def cuda_source_line(url: str, keyring: str = CUDA_KEYRING) -> str:
    """NVIDIA's flat repository line, e.g. ``deb [signed-by=...] https://.../repos/debian12/x86_64/ /``."""
    return f"deb [signed-by={keyring}] {url.rstrip('/')}/ /\n"


def check_command(branch: str, gpus: int, installed: str | None = None) -> str:
    """After the reboot: nvidia-smi must answer with the pinned branch (the installed version, when known) and
    list every GPU of the PCI bus; the failure names what it saw."""
    want = f"the installed {installed}" if installed else f"branch {branch}"
    cond = (f'[ "$v" = {shlex.quote(installed)} ]' if installed else f'[ "${{v%%.*}}" = {shlex.quote(branch)} ]')
    return (f"out=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1); rc=$?; "
            f"v=$(printf '%s\\n' \"$out\" | head -1); n=$(printf '%s\\n' \"$out\" | grep -c .); "
            f"if [ $rc -ne 0 ]; then echo \"vlmfleet: nvidia-smi failed after the reboot (exit $rc): $out\" >&2; exit 1; fi; "
            f"if ! {cond}; then echo \"vlmfleet: the loaded NVIDIA driver is $v, not {want}\" >&2; exit 1; fi; "
            f"if [ \"$n\" -ne {gpus} ]; then echo \"vlmfleet: nvidia-smi lists $n GPUs, the PCI bus has {gpus}\" >&2; "
            "exit 1; fi; echo \"NVIDIA driver $v answers for $n GPUs\"")


def drain_command(agent_state: str, agent_unit: str, drain_s: int) -> str:
    """Before a reboot where the gateways' drain agent runs: tell them to send this replica nothing new, and give
    in-flight requests ``drain_s`` to finish. The state file is in /run: the reboot clears it (``ready``), and the
    gateways' health checks take the replica back once it serves again."""
    return (f"if systemctl is-active --quiet {shlex.quote(agent_unit)}; then mkdir -p "
            f"{shlex.quote(agent_state.rsplit('/', 1)[0])} && echo drain > {shlex.quote(agent_state)} && "
            f"echo 'draining: the gateways send this replica nothing new; rebooting in {drain_s}s' && sleep {drain_s}; "
            f"else echo 'no drain agent runs here ({agent_unit} is not active): nothing to drain'; fi")


def active_command(unit: str) -> str:
    """Fail, with the unit's last journal lines, unless ``unit`` is active (e.g. after a reboot)."""
    u = shlex.quote(unit)
    return (f"systemctl is-active --quiet {u} || {{ echo \"vlmfleet: {unit} is not running after the reboot "
            f"($(systemctl is-active {u})):\" >&2; journalctl -u {u} -b --no-pager -n 5 -q >&2; exit 1; }}")


# ---- the decision ------------------------------------------------------------------------------------------
@dataclass
class DriverPlan:
    """What the driver stage does on one host; every field decided at planning time from the facts.

    + install: the install command, None when the branch is installed already (or a working driver of the
      branch came from elsewhere, e.g. NVIDIA's .run installer, which apt must not overwrite)
    + reboot: why the host must reboot (None: it need not): the module is missing, or not the installed version
    + notes: one sentence per decision, for the run's output
    """

    branch: str
    family: str
    arch: str  # uname -m, e.g. "x86_64"
    packages: Packages
    gpus: int
    nvswitches: int
    fabricmanager: bool
    install: str | None = None
    hold: bool = False
    reboot: str | None = None
    apt_managed: bool = True
    blacklist_nouveau: bool = False  # write NOUVEAU_CONF: the kernel has nouveau, nothing blacklists it yet
    persistenced: bool = True  # write vlmfleet's persistence daemon unit (False: persistence mode is on already)
    installed: str | None = None  # the installed driver version (upstream), when the packages are there
    expect: str | None = None  # the version nvidia-smi must answer with after the reboot (None: the branch's)
    cuda_source: str | None = None  # another apt source file has NVIDIA's CUDA repository (cuda-keyring's): used
    loaded: str | None = None  # what answers now (nvidia-smi / /proc), None: nothing
    notes: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.install or self.hold or self.reboot)

    def summary(self) -> str:
        """One line for preflight and --dry: e.g. "will install branch 580 (cuda-drivers-580 from NVIDIA's CUDA
        repository), then reboot (no NVIDIA kernel module is loaded)"."""
        if self.install:
            what = f"will install driver branch {self.branch} ({', '.join(self.packages.driver)} from {self.packages.source})"
        elif self.loaded and not self.reboot:
            what = f"driver {self.loaded} (branch {self.branch}) is loaded"
        else:
            what = f"driver {self.installed or 'branch ' + self.branch} is installed"
        if self.fabricmanager:
            what += f", fabric manager for {self.nvswitches} NVSwitches"
        return what + (f", then reboot ({self.reboot})" if self.reboot else "")


def plan(host: str, branch: str, family: str, state: DriverState, pci: tuple[PciDevice, ...],
         gpu_csv: str | None, gpu_error: str | None, modules: str = "auto", flavour: str = "auto",
         os_version: str = "", fabricmanager="auto", cuda_repo_url: str | None = None) -> DriverPlan:
    """Decide what the driver stage does on ``host``.

    + branch: the pinned ``nvidia_driver_branch``, e.g. ``"580"``
    + family: ``"ubuntu"`` or ``"debian"`` (os_family)
    + state: parse_state of the host; pci: parse_pci of the host
    + gpu_csv / gpu_error: the preflight nvidia-smi query's output, or its error text (None / None: no nvidia-smi)
    + modules: the ``nvidia_driver_modules`` data: ``"auto"`` (the installed kind, else proprietary), ``"open"``
      or ``"proprietary"`` (a host with the other kind installed is switched, and reboots)
    + fabricmanager: the ``nvidia_fabricmanager`` data: ``"auto"`` (on NVSwitch systems), True or False
    + cuda_repo_url: the ``nvidia_cuda_repo_url`` data (a template), to find the repository in the host's own
      apt sources (Debian)
    """
    if not any(d.is_gpu for d in pci):
        raise DriverError(f"{host}: the PCI bus shows no NVIDIA GPU (lspci -d 10de: lists none) — fix: check the "
                          "host is a GPU server and its GPUs are seated, or unset nvidia_driver_branch")
    gpus = sum(d.is_gpu for d in pci)
    switches = sum(d.is_nvswitch for d in pci)
    fm = bool(switches) if fabricmanager == "auto" else bool(fabricmanager)
    kind = installed_kind(state.packages, branch, state.kernel) if installed_version(state.packages, branch) else None
    loaded_kind = None if state.proc_open is None else ("open" if state.proc_open else "proprietary")
    if modules == "auto":  # what is installed, else what is loaded, else proprietary
        modules = kind if kind in ("open", "proprietary") else loaded_kind or "proprietary"
    pk = packages_for(family, branch, modules, kernel_flavour(state.kernel, state.packages, os_version, flavour))
    p = DriverPlan(branch=branch, family=family, arch=state.arch, packages=pk, gpus=gpus, nvswitches=switches, fabricmanager=fm)
    p.installed = installed_version(state.packages, branch)
    p.expect = p.installed
    loaded = smi_version(gpu_csv) or state.proc_version
    p.loaded = loaded
    mismatch = bool(gpu_error and MISMATCH in gpu_error)
    ours = driver_packages(state.packages)
    answering = smi_version(gpu_csv)
    moved = sorted({branch_of(upstream(v)) for x, v in state.packages.items() if re.match(DRIVER_MARKERS, x)
                    and re.search(rf"-{branch}(-server)?(-open)?$", x) and branch_of(upstream(v)) != branch})
    if moved:  # Ubuntu turns a retired branch's packages into empty ones that pull the next branch
        raise DriverError(f"{host}: data key 'nvidia_driver_branch' = '{branch}': the packages named for branch "
                          f"{branch} install branch {', '.join(moved)} (a retired branch) — fix: nvidia_driver_branch "
                          f"= '{moved[-1]}'")
    if answering and not ours and branch_of(answering) != branch:
        raise DriverError(f"{host}: driver {answering} is loaded and no driver package is installed (NVIDIA's .run "
                          f"installer?): apt must not install branch {branch} over it — fix: uninstall it first "
                          f"(nvidia-uninstall), or nvidia_driver_branch = '{branch_of(answering)}'")
    if p.installed is None and branch_of(answering) == branch and not ours:
        # a working driver of the branch that apt did not install (NVIDIA's .run installer, a vendor image)
        p.apt_managed = False
        p.notes.append(f"driver {loaded} (branch {branch}) is loaded and no driver package is installed: it came "
                       "from elsewhere (NVIDIA's .run installer?); left alone — apt must not install over it")
        return p
    p.blacklist_nouveau = (state.nouveau_module or state.nouveau_loaded) and (
        not state.nouveau_blacklisted or state.nouveau_blacklisted == NOUVEAU_CONF)
    if state.nouveau_blacklisted and state.nouveau_blacklisted != NOUVEAU_CONF:
        p.notes.append(f"nouveau is blacklisted already ({state.nouveau_blacklisted})")
    p.persistenced = state.persistenced_ours or state.persistence_mode != "Enabled"
    if not p.persistenced:
        p.notes.append("persistence mode is on already (the host's own nvidia-persistenced): its unit is left alone")
    # a fabric manager package counts only at the driver's version: unversioned names stay on a branch change, and
    # the fabric manager refuses to start beside a driver of another version
    have = lambda x: upstream(state.packages.get(x, ""))  # noqa: E731
    fabric = tuple(x for x in pk.fabric if (have(x) != p.installed if p.installed else branch_of(have(x)) != branch)
                   ) if fm else ()
    if family == "debian" and cuda_repo_url:
        url = fill(cuda_repo_url, family, os_version, state.arch)
        other = [s for s in state.sources if same_repository(s.url, url) and s.file != CUDA_SOURCES]
        if other:
            p.cuda_source = other[0].file
            key = other[0].signed_by or "apt's trusted keys"
            p.notes.append(f"NVIDIA's CUDA repository is configured already in {other[0].file} (signed by "
                           f"{key}; cuda-keyring's?): vlmfleet uses it and adds "
                           "no source of its own (apt refuses one repository with two keys)")
    switch = bool(kind and kind != modules)
    if state.secure_boot and not state.mok_enrolled and family == "debian" and (p.installed is None or switch):
        if not state.mokutil:
            raise DriverError(f"{host}: data key 'nvidia_driver_branch' = '{branch}': Secure Boot is on and mokutil "
                              "is not installed, so whether DKMS's signing key is enrolled is not known (NVIDIA's CUDA "
                              "repository builds the module with DKMS) — fix: apt-get install mokutil, then run again")
        raise DriverError(f"{host}: data key 'nvidia_driver_branch' = '{branch}': NVIDIA's CUDA repository builds "
                          f"the driver's module with DKMS, and {SECURE_BOOT_DKMS}")
    held = tuple(x for x in ours if x in state.held)
    # Ubuntu: the running kernel needs its own module package (precompiled) or DKMS; a kernel update without it
    # would boot with no module at all
    no_module = bool(pk.kernel_modules_prefix and p.installed and state.kernel
                     and f"{pk.kernel_modules_prefix}-{state.kernel}" not in state.packages
                     and pk.dkms not in state.packages)
    sb = state.secure_boot and not state.mok_enrolled  # Ubuntu's DKMS fallback then fails, naming the fix
    if p.installed is None or no_module or switch:
        # apt takes the branch's newest version for what it installs, and may move the installed parts with it:
        # the fabric manager goes along, and the check after the reboot goes by the branch
        p.install = install_command(pk, pk.fabric if fm and p.installed else fabric, unhold=held, secure_boot=sb)
        p.expect = None
        p.notes.append(f"branch {branch} is not installed ({', '.join(pk.driver)} from {pk.source})"
                       if p.installed is None else
                       f"the installed driver {p.installed} has {kind} kernel modules, nvidia_driver_modules = "
                       f"{modules!r}: {', '.join(pk.driver)} replace them" if switch else
                       f"the running kernel {state.kernel} has no NVIDIA {branch} module "
                       f"package ({pk.kernel_modules_prefix}-{state.kernel}): installed for it")
    elif fabric:
        # the driver stays: the fabric manager of exactly its version (apt's candidate may be newer, or older)
        p.install = install_command(pk, tuple(f"{x}={p.installed}-*" for x in fabric), driver=False, unhold=held,
                                    downgrade=True)
        p.notes.append(f"the fabric manager is added at the installed driver's version {p.installed}")
    if fm:
        p.notes.append(f"{switches} NVSwitches on the PCI bus: the fabric manager ({', '.join(pk.fabric)}) runs "
                       "before any CUDA work" if switches else "fabric manager on (nvidia_fabricmanager)")
    want = p.installed  # the version after the install is unknown until apt has run
    unheld = [x for x in ours if x not in state.held]
    p.hold = bool(p.install) or bool(unheld)
    if p.installed is None:
        p.reboot = ("no NVIDIA kernel module is loaded" if not loaded and not mismatch
                    else f"the loaded module is {loaded or 'another version'}, not branch {branch}")
    elif mismatch:
        p.reboot = f"the loaded module is not the installed {want} (nvidia-smi: {MISMATCH})"
    elif not loaded:
        p.reboot = f"the installed driver {want} is not loaded"
    elif want and loaded != want:
        p.reboot = f"the loaded module is {loaded}, the installed driver {want}"
    elif loaded_kind and loaded_kind != modules and (switch or kind == modules):
        # only where apt's packages say which kind is installed: an unknown kind is no reason to reboot
        p.reboot = f"the loaded module is the {loaded_kind} one, nvidia_driver_modules = {modules!r}"
    if state.nouveau_loaded and not p.reboot:
        p.reboot = "nouveau holds the GPUs"
    return p
