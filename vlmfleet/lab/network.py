"""The lab's network: one bridge, one network namespace and veth pair per host, a fence.

Hosts get an address on the bridge's /24 and **no default route**: they reach each other, the bridge address
(apt-cacher-ng, the lab registry) and nothing else. The FORWARD rules make sure this machine never routes
lab traffic anywhere but the bridge, even with ip_forward on or a Docker engine's DROP policy.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess

from .config import LabConfig
from .errors import LabError
from .sh import ok, run

TAG = "vlmfleet-lab"


def netns(host: str) -> str:
    return f"vlmlab-{host}"


def veth(host: str) -> str:
    return f"vl-{host}"


def _firewall_rules(cfg: LabConfig) -> list[list[str]]:
    br = cfg.bridge
    tag = ["-m", "comment", "--comment", TAG]
    return [
        ["FORWARD", "-i", br, "-o", br, *tag, "-j", "ACCEPT"],  # host to host across the bridge
        ["FORWARD", "-i", br, "!", "-o", br, *tag, "-j", "DROP"],  # never out of the lab
        ["FORWARD", "!", "-i", br, "-o", br, *tag, "-j", "DROP"],  # never into the lab from elsewhere
    ]


def check_free(cfg: LabConfig) -> None:
    """Fail before changing anything when the lab's bridge name or subnet is taken by something else."""
    if ok("ip", "link", "show", cfg.bridge):
        return  # ours from an earlier `lab up`; bridge_up() reuses it
    lab_net = ipaddress.ip_network(f"{cfg.net}.0/24")
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True).stdout or "[]"
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("family") != "inet":
                continue
            net = ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}").network
            if net.overlaps(lab_net):
                raise LabError(
                    f"the lab subnet {lab_net} overlaps {net} on interface {link['ifname']}; "
                    f"pick another with VLMFLEET_LAB_NET (e.g. 10.78.0)"
                )


def bridge_up(cfg: LabConfig) -> None:
    if not ok("ip", "link", "show", cfg.bridge):
        run("ip", "link", "add", cfg.bridge, "type", "bridge", what=f"create bridge {cfg.bridge}")
        run("ip", "addr", "add", f"{cfg.gateway}/24", "dev", cfg.bridge, what=f"address bridge {cfg.bridge}")
    run("ip", "link", "set", cfg.bridge, "up", what=f"bring bridge {cfg.bridge} up")
    for rule in reversed(_firewall_rules(cfg)):
        if not ok("iptables", "-C", *rule):
            run("iptables", "-I", *rule, what="add the lab's FORWARD rule")


def bridge_down(cfg: LabConfig) -> list[str]:
    """Remove the fence and the bridge; return what could not be removed."""
    problems = []
    for rule in _firewall_rules(cfg):
        while ok("iptables", "-C", *rule):
            if not ok("iptables", "-D", *rule):
                problems.append(f"iptables rule {' '.join(rule)}")
                break
    if ok("ip", "link", "show", cfg.bridge) and not ok("ip", "link", "del", cfg.bridge):
        problems.append(f"bridge {cfg.bridge}")
    return problems


def host_net_up(cfg: LabConfig, host: str, ip: str) -> None:
    """Namespace + veth for one host: eth0 inside with its address, the peer enslaved to the bridge."""
    ns, v = netns(host), veth(host)
    if ok("ip", "netns", "exec", ns, "ip", "-4", "addr", "show", "dev", "eth0"):
        return
    if not ok("ip", "netns", "pids", ns):
        run("ip", "netns", "add", ns, what=f"create network namespace {ns}")
    if ok("ip", "link", "show", v):
        run("ip", "link", "del", v, what=f"remove stale veth {v}")
    run("ip", "link", "add", v, "type", "veth", "peer", "name", "eth0", "netns", ns, what=f"create veth for {host}")
    run("ip", "link", "set", v, "master", cfg.bridge, "up", what=f"attach {v} to {cfg.bridge}")
    run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0", what=f"address {host}")
    run("ip", "-n", ns, "link", "set", "eth0", "up", what=f"bring up eth0 of {host}")
    run("ip", "-n", ns, "link", "set", "lo", "up", what=f"bring up lo of {host}")
    # nspawn mounts /proc/sys read-only; the host's Docker engine wants forwarding on in its own namespace
    # (packets still cannot leave: no default route, and this machine's FORWARD rules drop them)
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", what=f"enable forwarding in {ns}")


def host_net_down(host: str) -> list[str]:
    problems = []
    ns, v = netns(host), veth(host)
    if ok("ip", "link", "show", v) and not ok("ip", "link", "del", v):
        problems.append(f"veth {v}")
    if ok("ip", "netns", "pids", ns) and not ok("ip", "netns", "del", ns):
        problems.append(f"netns {ns}")
    return problems


def lab_namespaces() -> list[str]:
    """Host names of every lab namespace on this machine (found by name, for `lab down`)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n.removeprefix("vlmlab-") for n in names if n.startswith("vlmlab-")]
