from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.collectors.node import default_route_interface, host_address

ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"


def test_the_default_route_with_the_lowest_metric_names_the_interface(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        ROUTE_HEADER
        + "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        + "eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        + "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )
    assert default_route_interface(route) == "eth0"
    route.write_text(
        ROUTE_HEADER + "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )
    assert default_route_interface(route) is None
    assert default_route_interface(tmp_path / "missing") is None


def test_this_machine_has_an_address_that_is_not_loopback() -> None:
    address = host_address()
    assert address is not None
    assert not ipaddress.ip_address(address).is_loopback
