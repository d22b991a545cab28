"""A network namespace joined to this one by a veth pair, for traffic that crosses a netns.

Addresses come from 10.200.0.0/16 and exist only on the test's own veth pair inside this machine;
the route to the namespace address is checked to leave through that pair and nowhere else.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import require_binary


def ip(*args: str) -> str:
    return subprocess.run(
        [require_binary("ip"), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout


@contextmanager
def joined_namespace() -> Iterator[tuple[str, str, str, str]]:
    """Yields (namespace, host interface, namespace interface, namespace address).

    IPv6 address generation is off on both ends, so nothing but the test's own flows crosses the
    link. Deleting the namespace at the end destroys its veth end, and with it the pair.
    """
    suffix = uuid.uuid4().hex[:6]
    namespace, host_if, ns_if = f"piccolo-test-{suffix}", f"pcl{suffix}h", f"pcl{suffix}n"
    subnet = f"10.200.{int(suffix, 16) % 256}"
    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", namespace)
        ip("link", "set", host_if, "addrgenmode", "none")
        ip("-n", namespace, "link", "set", ns_if, "addrgenmode", "none")
        ip("addr", "add", f"{subnet}.1/30", "dev", host_if)
        ip("-n", namespace, "addr", "add", f"{subnet}.2/30", "dev", ns_if)
        ip("link", "set", host_if, "up")
        ip("-n", namespace, "link", "set", ns_if, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        route = ip("-o", "route", "get", f"{subnet}.2")
        if f"dev {host_if} " not in route:
            raise RuntimeError(f"the namespace address does not route through {host_if}: {route}")
        yield namespace, host_if, ns_if, f"{subnet}.2"
    finally:
        ip("netns", "delete", namespace)
