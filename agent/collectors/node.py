"""The node itself: CPU, memory, load, disk space and I/O, network, PSI pressure.

Rates (CPU %, disk and network MB/s) need two readings, so they are reported from the second
collection on. PSI comes from /proc/pressure where the kernel has it (4.20+, CONFIG_PSI), as the
10-second averages; where it is missing, those metrics are simply absent.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

import psutil

from agent.model import ResourceType, Sample

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.config import Config

ALL_METRICS = ("cpu_usage", "memory_usage", "load", "disk_usage", "disk_io", "network", "pressure")
PRESSURE = Path("/proc/pressure")
MB = 2**20

Reading = tuple[str, float, str]


def default_route_interface(route: Path = Path("/proc/net/route")) -> str | None:
    """The interface of the IPv4 default route (destination 0.0.0.0 with the lowest metric)."""
    try:
        lines = route.read_text().splitlines()[1:]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) >= 7 and fields[1] == "00000000" and fields[7:8] != ["FFFFFFFF"]:
            metric = int(fields[6]) if fields[6].isdigit() else 0
            if best is None or metric < best[0]:
                best = (metric, fields[0])
    return None if best is None else best[1]


def host_address(route: Path = Path("/proc/net/route")) -> str | None:
    """The node's IPv4 address: that of the default route's interface, else the first address
    of any interface that is not loopback; None when there is none (hostIP)."""
    addresses = psutil.net_if_addrs()
    interface = default_route_interface(route)
    order = [interface] if interface in addresses else []
    order += sorted(name for name in addresses if name not in order)
    for name in order:
        for address in addresses[name]:
            if address.family.name == "AF_INET" and not address.address.startswith("127."):
                return str(address.address)
    return None


class HostAddress:
    """`host_address()`, read again at most every `every_s` (an address can change)."""

    def __init__(self, every_s: float = 30.0) -> None:
        self._every_s = every_s
        self._at = -every_s
        self._address: str | None = None

    def get(self) -> str | None:
        now = time.monotonic()
        if now - self._at >= self._every_s:
            self._at = now
            self._address = host_address()
        return self._address


def read_pressure(root: Path = PRESSURE) -> list[Reading]:
    """`psi_{resource}_{some|full}` avg10 percentages from /proc/pressure/{cpu,memory,io}."""
    readings: list[Reading] = []
    for resource in ("cpu", "memory", "io"):
        try:
            text = (root / resource).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            kind, _, fields = line.partition(" ")
            values = dict(field.split("=", 1) for field in fields.split())
            if "avg10" in values:
                readings.append((f"psi_{resource}_{kind}", float(values["avg10"]), "%"))
    return readings


class NodeCollector:
    def __init__(self, node: str, metrics: frozenset[str], disk_path: Path = Path("/")) -> None:
        self._node = node
        self._metrics = metrics
        self._disk_path = disk_path
        self._last: tuple[float, int, int, int, int] | None = None
        self._primed = False

    @classmethod
    def from_config(cls, config: Config) -> Self:
        wanted = config.resource_monitoring.node.metrics
        return cls(config.node.name, frozenset(wanted or ALL_METRICS))

    def _counters(self) -> tuple[float, int, int, int, int]:
        disk = psutil.disk_io_counters() if "disk_io" in self._metrics else None
        rx = tx = 0
        if "network" in self._metrics:
            for name, counters in psutil.net_io_counters(pernic=True).items():
                if name != "lo":
                    rx += counters.bytes_recv
                    tx += counters.bytes_sent
        return (
            time.monotonic(),
            disk.read_bytes if disk else 0,
            disk.write_bytes if disk else 0,
            rx,
            tx,
        )

    def _rates(self) -> list[Reading]:
        now = self._counters()
        last, self._last = self._last, now
        if last is None or now[0] <= last[0]:
            return []
        elapsed = now[0] - last[0]

        def rate(index: int) -> float:
            return max(0, now[index] - last[index]) / MB / elapsed

        readings: list[Reading] = []
        if "disk_io" in self._metrics:
            readings += [("disk_read", rate(1), "MB/s"), ("disk_write", rate(2), "MB/s")]
        if "network" in self._metrics:
            readings += [("network_rx", rate(3), "MB/s"), ("network_tx", rate(4), "MB/s")]
        return readings

    def _read(self) -> list[Reading]:
        values: list[Reading] = []
        wanted = self._metrics
        if "cpu_usage" in wanted:
            cpu = psutil.cpu_percent(interval=None)
            if self._primed:
                values.append(("cpu_usage", cpu, "%"))
        if "memory_usage" in wanted:
            memory = psutil.virtual_memory()
            values.append(("memory_usage", memory.used / MB, "MB"))
            values.append(("memory_usage_percent", memory.percent, "%"))
        if "load" in wanted:
            load1, load5, load15 = os.getloadavg()
            values += [("load1", load1, ""), ("load5", load5, ""), ("load15", load15, "")]
        if "disk_usage" in wanted:
            disk = psutil.disk_usage(str(self._disk_path))
            values.append(("disk_used", disk.used / MB, "MB"))
            values.append(("disk_usage_percent", disk.percent, "%"))
        if wanted & {"disk_io", "network"}:
            values += self._rates()
        if "pressure" in wanted:
            values += read_pressure()
        self._primed = True
        return values

    async def collect(self) -> Sequence[Sample]:
        values = await asyncio.to_thread(self._read)
        now = time.time_ns()
        return [
            Sample(ResourceType.NODE, self._node, name, round(value, 6), unit, now)
            for name, value, unit in values
        ]
