"""Separate hosts on one machine: network namespaces on a private bridge (needs root and iproute2).

Every host is a namespace with one interface, ``eth0``, at ``10.203.0.N/24``; the bridge lives in
a namespace of its own, so no address of the machine itself is reachable from (or a target of)
the hosts. Removed on exit, also after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess

SUBNET = "10.203.0"


def netns_available() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"fgprobe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class VirtualHosts:
    """Namespaces ``<tag>-<name>`` for each name, wired to one bridge."""

    def __init__(self, names: list[str]) -> None:
        self.tag = f"fg{os.getpid() % 100000}"
        self.names = names
        self.lan = f"{self.tag}-lan"
        self.created: list[str] = []

    def namespace(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, name: str) -> str:
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def prefix(self, name: str) -> list[str]:
        """Prepend to a command line to run it on host ``name``."""
        return ["ip", "netns", "exec", self.namespace(name)]

    def __enter__(self) -> VirtualHosts:
        try:
            _ip("netns", "add", self.lan)
            self.created.append(self.lan)
            _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.lan, "link", "set", "br0", "up")
            for index, name in enumerate(self.names, start=1):
                ns = self.namespace(name)
                _ip("netns", "add", ns)
                self.created.append(ns)
                _ip("link", "add", "name", f"v{index}", "netns", self.lan, "type", "veth",
                    "peer", "name", "eth0", "netns", ns)
                _ip("-n", self.lan, "link", "set", f"v{index}", "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()
