"""The hardware service: the host's serial devices and its watchdog, as events.

One loop per configured device (``[hardware.ups]``, ``[hardware.gnss]``,
``[hardware.enclosure]``): poll the driver (:mod:`hardware.ups`, :mod:`hardware.gnss`,
:mod:`hardware.enclosure`), hand each reading to the device's sans-IO monitor, publish
what it decides (``UpsOnBattery``, ``GnssFixLost``, ``EnclosureOpened``, ...), and tick
the monitor even when the device is silent, so a device that stops answering becomes
``DeviceStale`` — never a healthy one with an old reading. A driver error (port gone,
garbage, timeout) is logged once per change and retried at the device's interval; it
never stops the daemon.

``[hardware.watchdog]``: the device is armed at start and fed from this trio loop every
third of its timeout, so a daemon whose loop hangs stops feeding it and the host
reboots. It is magic-closed (disarmed) only on a clean stop (SIGTERM); on a crash it
stays armed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Awaitable, Callable, Iterable

import trio

from daemon import events
from daemon.config import Config
from daemon.events import EventBus
from daemon.log import get_logger
from daemon.service import MetricFamily, Sample, ServiceStatus

log = get_logger("hardware")

EVENT_CLASSES: dict[str, type[events.Event]] = {
    cls.__name__: cls for cls in vars(events).values()
    if isinstance(cls, type) and issubclass(cls, events.Event)}


def _plain(reading: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(reading) and not isinstance(reading, type):
        data = dataclasses.asdict(reading)
    elif isinstance(reading, dict):
        data = dict(reading)
    else:
        data = {"value": reading}
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in data.items()}


@dataclasses.dataclass
class Device:
    """One configured device: how to poll it, its monitor, and what it last said."""

    kind: str                      # ups | gnss | enclosure | door
    name: str                      # the config name (the events' ``device``)
    poll: Callable[[], Awaitable[Any]]
    monitor: Any
    interval: float
    close: Callable[[], Awaitable[None]] | None = None
    reading: dict[str, Any] | None = None
    read_at: float | None = None
    error: str | None = None
    stale: bool = False
    polls: int = 0
    failures: int = 0


class HardwareService:
    name = "hardware"

    def __init__(self, config: Config, bus: EventBus, *, clean_stop: Callable[[], bool] = lambda: True,
                 devices: list[Device] | None = None, watchdog: Any = None) -> None:
        assert config.hardware is not None
        self.config = config
        self.settings = config.hardware
        self.bus = bus
        self.clean_stop = clean_stop
        self.devices: list[Device] = devices if devices is not None else []
        self._built = devices is not None
        self.watchdog = watchdog
        self.feeds = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self._built:
            from hardware.devices import build_devices

            self.devices = build_devices(self.settings)
        armed = False
        if self.settings.watchdog is not None:
            if self.watchdog is None:
                from hardware.watchdog import LinuxWatchdog

                self.watchdog = LinuxWatchdog(self.settings.watchdog.device, required=True)
            # Arming may fail (no device, another holder): that stops the daemon with
            # the watchdog's own message naming the device and the fix.
            self.watchdog.arm(int(self.settings.watchdog.timeout))
            armed = True
            log.info("watchdog.armed", device=str(self.settings.watchdog.device),
                     timeout_s=int(self.settings.watchdog.timeout))
        try:
            async with trio.open_nursery() as nursery:
                for device in self.devices:
                    nursery.start_soon(self._device_loop, device)
                if armed:
                    nursery.start_soon(self._feed_loop)
                log.info("hardware.started", devices=",".join(f"{d.kind}:{d.name}" for d in self.devices) or "-",
                         watchdog=armed)
                task_status.started()
        finally:
            if armed:
                if self.clean_stop():
                    self.watchdog.disarm()
                    log.info("watchdog.disarmed", reason="clean stop")
                else:
                    self.watchdog.close_without_disarm()
                    log.warning("watchdog.left_armed", reason="not a clean stop: the host reboots unless the "
                                                              "daemon is back in time")
            for device in self.devices:
                if device.close is not None:
                    with trio.move_on_after(1, shield=True):
                        await device.close()

    async def _feed_loop(self) -> None:
        assert self.settings.watchdog is not None
        period = float(self.settings.watchdog.timeout) / 3
        while True:
            self.watchdog.keepalive()
            self.feeds += 1
            await trio.sleep(period)

    async def _device_loop(self, device: Device) -> None:
        while True:
            now = trio.current_time()
            emits: list[tuple[str, dict[str, Any]]] = []
            try:
                with trio.fail_after(max(device.interval, 1.0) * 3):
                    reading = await device.poll()
            except trio.TooSlowError:
                self._failed(device, "no answer within three intervals")
            except Exception as exc:  # a driver error is a device fault, never the daemon's
                self._failed(device, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
            else:
                now = trio.current_time()
                device.polls += 1
                device.reading = _plain(reading)
                device.read_at = now
                if device.error is not None:
                    log.info("device.answering", device=device.name, kind=device.kind)
                device.error = None
                emits += device.monitor.reading(reading, now)
            emits += device.monitor.tick(trio.current_time())
            self._publish(device, emits)
            await trio.sleep(device.interval)

    def _failed(self, device: Device, message: str) -> None:
        device.failures += 1
        if device.error != message:
            log.warning("device.error", device=device.name, kind=device.kind, error=message)
        device.error = message

    def _publish(self, device: Device, emits: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for kind, fields in emits:
            if kind == "DeviceStale":
                device.stale = True
            elif kind == "DeviceRecovered":
                device.stale = False
            if "kind" in fields:  # the monitors say kind; the event calls it device_type
                fields = {**fields, "device_type": fields["kind"]}
                del fields["kind"]
            cls = EVENT_CLASSES.get(kind)
            if cls is None:
                log.error("hardware.unknown_event", device=device.name, event=kind)
                continue
            self.bus.publish(cls(source=self.name, **fields))

    # ------------------------------------------------------------------ reporting

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.devices:
            age = None if d.read_at is None else round(trio.current_time() - d.read_at, 1)
            out[f"{d.kind}:{d.name}"] = {"reading": d.reading, "age_s": age, "stale": d.stale, "error": d.error,
                                         "polls": d.polls, "failures": d.failures}
        if self.watchdog is not None:
            out["watchdog"] = {"feeds": self.feeds, **(self.watchdog.details() if hasattr(self.watchdog, "details")
                                                       else {})}
        return out

    def status(self) -> ServiceStatus:
        parts = []
        health: Any = "ok"
        for d in self.devices:
            if d.stale or (d.reading is None and d.error):
                health = "degraded"
                parts.append(f"{d.kind} {d.name} STALE" + (f" ({d.error})" if d.error else ""))
            elif d.reading is None:
                parts.append(f"{d.kind} {d.name}: waiting for a first reading")
            else:
                parts.append(f"{d.kind} {d.name}: " + _summary(d.kind, d.reading))
        if self.settings.watchdog is not None:
            parts.append(f"watchdog fed {self.feeds} times")
        return ServiceStatus(health, "; ".join(parts) or "no devices", self.details())

    def metrics(self) -> Iterable[MetricFamily]:
        stale = [Sample({"device": d.name, "kind": d.kind}, 1.0 if d.stale else 0.0) for d in self.devices]
        yield MetricFamily("lifeline_hardware_stale", "gauge", "1 while a device is stale (not answering).", stale)
        values = []
        for d in self.devices:
            for field, value in (d.reading or {}).items():
                if isinstance(value, bool):
                    value = 1.0 if value else 0.0
                if isinstance(value, (int, float)) and math.isfinite(value):
                    values.append(Sample({"device": d.name, "kind": d.kind, "field": field}, float(value)))
        yield MetricFamily("lifeline_hardware_reading", "gauge", "The last reading of each device, field by field.",
                           values)
        if self.watchdog is not None:
            yield MetricFamily.single("lifeline_watchdog_feeds_total", "counter", "Watchdog keepalives sent.",
                                      self.feeds)


def _summary(kind: str, reading: dict[str, Any]) -> str:
    keys = {"ups": ("on_battery", "battery_low", "runtime_s", "load_percent"),
            "gnss": ("fix", "satellites", "offset_ms"),
            "enclosure": ("celsius", "humidity", "temperature_c", "humidity_percent"),
            "door": ("open",)}.get(kind, ())
    shown = [f"{k}={reading[k]}" for k in keys if k in reading]
    return ", ".join(shown) if shown else ", ".join(f"{k}={v}" for k, v in list(reading.items())[:4])
