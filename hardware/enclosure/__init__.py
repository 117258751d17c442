"""Enclosure sensors: temperature / humidity over Modbus RTU, and the door contact.

What this package owns, in the order of the issue-8 contract:

1. **Sans-IO Modbus RTU core** (no trio, no serial; :mod:`hardware.enclosure.modbus`,
   :mod:`hardware.enclosure.registers`, :mod:`hardware.enclosure.door`): :func:`crc16_modbus`,
   :func:`read_request`, :class:`RtuReadTransaction` (the master's side of one read:
   request bytes out, answer bytes in with ``receive_data``, ``next_event`` answers
   :data:`NEED_DATA`, a :class:`RegistersReply` or an :class:`ExceptionReply`), the
   slave's side for the simulator (:class:`RtuRequestParser`, :func:`registers_response`,
   :func:`exception_response`) and the :class:`RegisterMap` that turns registers into
   a :class:`ClimateReading`.
2. **Trio drivers over pyserial** (:mod:`hardware.enclosure.driver`): :class:`ModbusSensor`
   (RS-485 temperature/humidity sensor) and :class:`DoorContact` (a dry contact on a
   modem-status line). Both open a device path or any pyserial URL
   (``serial.serial_for_url``: ``/dev/ttyUSB0``, ``socket://host:port`` behind an RS-485
   gateway, ``loop://``, ``spy://``, ``rfc2217://``).
3. **Simulator** (the lab's, :mod:`lab.sim.enclosure`): :class:`EnclosureSimulator`, a
   Modbus RTU sensor on the master side of a pty, scriptable (temperature, humidity, silent,
   garbage, bad CRC, exception, wrong unit). ptys have no modem lines, so the door is
   simulated with ``loop://`` instead.
4. **Monitor** (:mod:`hardware.enclosure.monitor`, sans-IO): :class:`EnclosureMonitor`,
   readings → events with thresholds, hysteresis, door debounce and staleness.

Why the Modbus framing is ours and not pymodbus's client
--------------------------------------------------------
The daemon reads two registers from one sensor; the whole protocol needed is one
request frame, one answer frame and CRC-16/MODBUS. Doing that here gives what the
contract asks of every device and what pymodbus's sync client does not:

* errors in our vocabulary: ``ModbusSerialClient.connect()`` swallows the open error into
  a log line and returns False (so "no such port" and "port busy" look the same), and a
  silent device, a bad CRC and a wrong unit come back as differently shaped
  ``ModbusIOException``\\ s whose texts changed between 3.x releases;
* prompt cancellation: reads run in 50 ms slices through ``trio.to_thread.run_sync``
  (the sync client blocks for ``timeout`` × ``retries`` in one call);
* a core the tests can feed one byte at a time and fuzz, as the other parsers are;
* no dependence on the pymodbus API, which moved inside 3.x (``slave=`` → ``device_id=``
  in 3.10, keyword-only arguments from 3.8, ``ModbusSlaveContext`` →
  ``ModbusDeviceContext``, server contexts deprecated for v4).

pymodbus does the job better as an *independent* implementation to test against: the
integration tests read :class:`EnclosureSimulator` with pymodbus's ``ModbusSerialClient``
and read pymodbus's own serial server with :class:`ModbusSensor`, over real ptys.

The default register map and the presets: :mod:`hardware.enclosure.registers`; the door's
wiring: :mod:`hardware.enclosure.door`.
"""
