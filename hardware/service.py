"""The hardware service: the host's serial devices and its watchdog, as events.

One loop per configured device (``[hardware.ups]``, ``[hardware.gnss]``,
``[hardware.enclosure]``), the same :func:`device_loop` for every kind: poll the driver
(:mod:`hardware.ups.driver`, :mod:`hardware.gnss.driver`, :mod:`hardware.enclosure.driver`),
hand each reading to the device's sans-IO monitor, publish the events it returns
(``UpsOnBattery``, ``GnssFixLost``, ``EnclosureOpened``, ...), and tick the monitor even
when the device is silent, so a device that stops answering becomes ``DeviceStale`` —
never a healthy one with an old reading. A driver error (timeout, garbage) is logged once
per change (by the driver's ``note``, in its own words: ``ups.state``, ``gnss.silent``,
``enclosure.failing``, ...) and retried at the device's interval; a missing port or lost connection is
retried with exponential backoff (from the interval up to 30 s). No error stops the daemon.

``[hardware.watchdog]``: the device is armed at start and fed from this trio loop every
third of its timeout, so a daemon whose loop hangs stops feeding it and the host
reboots. It is magic-closed (disarmed) only on a clean stop (SIGTERM); on a crash it
stays armed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import trio

from daemon.core.bus import EventBus
from daemon.core.events import DeviceRecovered, DeviceStale, Event
from daemon.core.log import get_logger, human
from daemon.core.service import MetricFamily, Sample, ServiceStatus
from hardware.config import HardwareSettings
from hardware.devices import Device, build_devices
from hardware.errors import DeviceGarbage, DeviceTimeout, HardwareError
from hardware.watchdog import LinuxWatchdog, Watchdog

__all__ = ["Device", "HardwareService", "device_loop"]

log = get_logger("hardware")

#: While a device backs off, its monitor is still ticked at least this often.
_MIN_TICK_S = 0.05


def _plain(reading: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(reading) and not isinstance(reading, type):
        data = dataclasses.asdict(reading)
    elif isinstance(reading, dict):
        data = dict(reading)
    else:
        data = {"value": reading}
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in data.items()}


class HardwareService:
    name = "hardware"

    def __init__(self, config: HardwareSettings, bus: EventBus, *, clean_stop: Callable[[], bool] = lambda: True,
                 devices: list[Device] | None = None, watchdog: Watchdog | None = None) -> None:
        assert config.hardware is not None
        self.config = config
        self.settings = config.hardware
        self.bus = bus
        self.clean_stop = clean_stop
        self.devices: list[Device] = devices if devices is not None else []
        self._built = devices is not None
        self.watchdog: Watchdog | None = watchdog
        self.feeds = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self._built:
            self.devices = build_devices(self.settings)
        armed: Watchdog | None = None  # the watchdog armed here, if any
        if self.settings.watchdog is not None:
            if self.watchdog is None:
                self.watchdog = LinuxWatchdog(self.settings.watchdog.device, required=True)
            # Arming may fail (no device, another holder): that stops the daemon with
            # the watchdog's own message naming the device and the fix.
            self.watchdog.arm(int(self.settings.watchdog.timeout))
            armed = self.watchdog
            log.info("watchdog.armed", device=str(self.settings.watchdog.device),
                     timeout_s=int(self.settings.watchdog.timeout))
        try:
            async with trio.open_nursery() as nursery:
                for device in self.devices:
                    nursery.start_soon(device_loop, device, self._publish)
                if armed is not None:
                    nursery.start_soon(self._feed_loop, armed)
                log.info("hardware.started", devices=",".join(f"{d.kind}:{d.name}" for d in self.devices) or "-",
                         watchdog=armed is not None)
                task_status.started()
        finally:
            if armed is not None:
                if self.clean_stop():
                    armed.disarm()
                    log.info("watchdog.disarmed", reason="clean stop")
                else:
                    armed.close_without_disarm()
                    log.warning("watchdog.left_armed", reason="not a clean stop: the host reboots unless the "
                                                              "daemon is back in time")
            for device in self.devices:
                if device.close is not None:
                    with trio.move_on_after(1, shield=True):
                        await device.close()

    async def _feed_loop(self, watchdog: Watchdog) -> None:
        assert self.settings.watchdog is not None
        period = float(self.settings.watchdog.timeout) / 3
        while True:
            watchdog.keepalive()
            self.feeds += 1
            await trio.sleep(period)

    def _publish(self, device: Device, emits: Iterable[Event]) -> None:
        for event in emits:
            if isinstance(event, DeviceStale):
                device.stale = True
            elif isinstance(event, DeviceRecovered):
                device.stale = False
            if not event.source:
                event = dataclasses.replace(event, source=self.name)
            self.bus.publish(event)

    # ------------------------------------------------------------------ reporting

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.devices:
            age = None if d.read_at is None else round(trio.current_time() - d.read_at, 1)
            out[f"{d.kind}:{d.name}"] = {"reading": d.reading, "age_s": age, "stale": d.stale, "error": d.error,
                                         "polls": d.polls, "failures": d.failures}
        if self.watchdog is not None:
            out["watchdog"] = {"feeds": self.feeds, **self.watchdog.details()}
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


async def device_loop(device: Device, publish: Callable[[Device, list[Event]], None]) -> None:
    """Poll ``device`` forever (see the module docstring); ``publish(device, events)`` after
    every round, with what the monitor returned (often nothing)."""
    initial = (device.backoff_initial if device.backoff_initial is not None
               else max(device.interval, _MIN_TICK_S))
    backoff, retry_at = initial, -math.inf
    while True:
        emits: list[Event] = []
        if trio.current_time() >= retry_at:
            reading: Any = None
            error: BaseException | None = None
            retry_s: float | None = None
            try:
                with trio.fail_after(max(device.interval, 1.0) * 3):
                    reading = await device.poll()
            except trio.TooSlowError:
                error = DeviceTimeout("no answer within three intervals")
                _failed(device, str(error))
            except Exception as exc:  # a driver error is a device fault, never the daemon's
                error = exc
                _failed(device, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
                if isinstance(exc, HardwareError) and not isinstance(exc, (DeviceTimeout, DeviceGarbage)):
                    # the port or the connection is gone (or unusable): retry less and less often
                    retry_s, retry_at = backoff, trio.current_time() + backoff
                    backoff = min(backoff * 2, max(device.backoff_max, initial))
            else:
                now = trio.current_time()
                backoff = initial
                device.polls += 1
                device.reading = _plain(reading)
                device.read_at = now
                if device.error is not None and device.note is None:
                    log.info("device.answering", device=device.name, kind=device.kind)
                device.error = None
                emits += device.monitor.reading(reading, now)
            if device.note is not None:
                device.note(error, reading=reading, retry_s=retry_s)
        emits += device.monitor.tick(trio.current_time())
        publish(device, emits)
        now = trio.current_time()
        if retry_at > now:
            await trio.sleep_until(min(retry_at, now + max(device.interval, _MIN_TICK_S)))
        else:
            await trio.sleep(device.interval)


def _failed(device: Device, message: str) -> None:
    device.failures += 1
    if device.error != message and device.note is None:  # else the driver logs its own state change
        log.warning("device.error", device=device.name, kind=device.kind, error=message)
    device.error = message
