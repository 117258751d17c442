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

from daemon.core import events
from daemon.core.events import EventBus
from daemon.core.log import get_logger, human
from daemon.core.service import MetricFamily, Sample, ServiceStatus
from hardware.config import HardwareSettings

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

    def __init__(self, config: HardwareSettings, bus: EventBus, *, clean_stop: Callable[[], bool] = lambda: True,
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
        # One metric per quantity, in base units (a reading's field → metric, scale).
        samples: dict[str, list[Sample]] = {name: [] for name, _, _ in READING_METRICS.values()}
        samples.update({name: [] for name, _ in DERIVED_METRICS.values()})
        for d in self.devices:
            labels = {"device": d.name, "kind": d.kind}
            reading = d.reading or {}
            for field, value in reading.items():
                if field not in READING_METRICS or value is None:
                    continue
                name, scale, _ = READING_METRICS[field]
                if isinstance(value, bool):
                    value = 1.0 if value else 0.0
                if isinstance(value, (int, float)) and math.isfinite(value):
                    samples[name].append(Sample(labels, float(value) * scale))
            if d.kind == "ups" and reading:
                status = set(reading.get("status") or ())
                on_battery = reading.get("on_battery", bool(status & {"OB", "FSD"}))
                battery_low = reading.get("battery_low", bool(status & {"LB", "FSD"}))
                samples["lifeline_hardware_ups_on_battery"].append(Sample(labels, 1.0 if on_battery else 0.0))
                samples["lifeline_hardware_ups_battery_low"].append(Sample(labels, 1.0 if battery_low else 0.0))
        if self.settings.ups is not None:
            samples["lifeline_hardware_battery_runtime_threshold_seconds"].append(
                Sample({"device": "ups", "kind": "ups"}, float(self.settings.ups.runtime_threshold)))
        if self.settings.gnss is not None:
            samples["lifeline_hardware_clock_offset_threshold_seconds"].append(
                Sample({"device": "gnss", "kind": "gnss"}, float(self.settings.gnss.offset_threshold)))
        helps = {name: help_ for name, _, help_ in READING_METRICS.values()}
        helps.update({name: help_ for name, help_ in DERIVED_METRICS.values()})
        for name, values in samples.items():
            yield MetricFamily(name, "gauge", helps[name], values)
        if self.watchdog is not None:
            yield MetricFamily.single("lifeline_watchdog_feeds_total", "counter", "Watchdog keepalives sent.",
                                      self.feeds)


#: A device reading's numeric fields as metrics: field → (metric, factor to base units, help).
READING_METRICS: dict[str, tuple[str, float, str]] = {
    "input_v": ("lifeline_hardware_input_volts", 1.0, "UPS input (mains) voltage."),
    "input_fault_v": ("lifeline_hardware_input_fault_volts", 1.0, "UPS input fault voltage (Q1)."),
    "output_v": ("lifeline_hardware_output_volts", 1.0, "UPS output voltage."),
    "battery_v": ("lifeline_hardware_battery_volts", 1.0, "UPS battery voltage (per cell on some Q1 units)."),
    "load_percent": ("lifeline_hardware_load_ratio", 0.01, "UPS load, 0 to 1."),
    "frequency_hz": ("lifeline_hardware_frequency_hertz", 1.0, "UPS input frequency."),
    "battery_charge": ("lifeline_hardware_battery_charge_ratio", 0.01, "UPS battery charge, 0 to 1."),
    "runtime_s": ("lifeline_hardware_battery_runtime_seconds", 1.0, "UPS estimated runtime on battery."),
    "temperature_c": ("lifeline_hardware_temperature_celsius", 1.0, "Temperature (UPS or enclosure sensor)."),
    "celsius": ("lifeline_hardware_temperature_celsius", 1.0, "Temperature (UPS or enclosure sensor)."),
    "humidity_percent": ("lifeline_hardware_humidity_ratio", 0.01, "Enclosure relative humidity, 0 to 1."),
    "offset_ms": ("lifeline_hardware_clock_offset_seconds", 0.001,
                  "Host clock minus the GNSS receiver's UTC at the epoch's arrival."),
    "arrival": ("lifeline_hardware_gnss_epoch_timestamp_seconds", 1.0,
                "When the GNSS receiver's last epoch arrived (Unix time)."),
    "satellites": ("lifeline_hardware_gnss_satellites", 1.0, "Satellites in use."),
    "fix": ("lifeline_hardware_gnss_fix", 1.0, "1 while the GNSS receiver has a usable fix."),
    "open": ("lifeline_hardware_door_open", 1.0, "1 while the enclosure door is open."),
}

#: Metrics computed from a reading or the config rather than copied from a field.
DERIVED_METRICS: dict[str, tuple[str, str]] = {
    "on_battery": ("lifeline_hardware_ups_on_battery", "1 while the UPS runs on battery (OB or FSD)."),
    "battery_low": ("lifeline_hardware_ups_battery_low", "1 while the UPS reports a low battery (LB or FSD)."),
    "runtime_threshold": ("lifeline_hardware_battery_runtime_threshold_seconds",
                          "hardware.ups.runtime_threshold: UpsRuntimeBelow under this runtime."),
    "offset_threshold": ("lifeline_hardware_clock_offset_threshold_seconds",
                         "hardware.gnss.offset_threshold: ClockOffsetHigh above this offset."),
}


def _summary(kind: str, reading: dict[str, Any]) -> str:
    keys = {"ups": ("on_battery", "battery_low", "runtime_s", "load_percent"),
            "gnss": ("fix", "satellites", "offset_ms"),
            "enclosure": ("celsius", "humidity", "temperature_c", "humidity_percent"),
            "door": ("open",)}.get(kind, ())
    shown = [f"{k}={human(reading[k])}" for k in keys if reading.get(k) is not None]
    return ", ".join(shown) if shown else ", ".join(f"{k}={human(v)}" for k, v in list(reading.items())[:4])
