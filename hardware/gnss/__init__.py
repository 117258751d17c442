"""The GNSS time receiver: is it locked, how many satellites, does its UTC agree with ours.

A GNSS receiver on a serial line talks on its own, once a second, in NMEA 0183 (no
requests). This package reads that stream (or a running ``gpsd``'s JSON instead) and turns
it into readings and events:

* **protocol core (sans-IO)**, :mod:`hardware.gnss.nmea` and :mod:`hardware.gnss.gpsd`:
  :class:`NmeaParser` frames sentences out of a byte stream (partial lines, line noise,
  truncated and overlong lines), verifies the ``*HH`` checksum (XOR of every byte between
  ``$`` and ``*``; a bad or missing one drops the sentence and is counted) and decodes
  ``$GPRMC``/``$GNRMC`` (status A/V, UTC date and time), ``$GPGGA``/``$GNGGA`` (fix quality,
  satellites in use, UTC time) and ``$GPGSA``/``$GNGSA`` (fix type 1/2/3). Every other
  talker or sentence is ignored and counted. :class:`EpochAssembler` groups the sentences of
  one epoch (same UTC time tag) into one :class:`GnssReading`; :class:`GpsdProtocol` does
  the same for gpsd's TPV/SKY.
* **driver** (:mod:`hardware.gnss.driver`): :class:`GnssReceiver` (pyserial, any
  ``serial_for_url`` port, 4800 or 9600 baud) and :class:`GpsdClient` (TCP 2947, ``?WATCH``).
* **monitor** (:mod:`hardware.gnss.monitor`, sans-IO): :class:`GnssMonitor` turns readings
  into ``GnssFixLost``, ``GnssFixAcquired``, ``ClockOffsetHigh``, ``DeviceStale`` and
  ``DeviceRecovered``.

The clock offset is a rough check, not time keeping
----------------------------------------------------
``offset_ms`` is *host clock when the epoch's first sentence arrived* minus *the UTC the
receiver states in it* (positive: the host is ahead of the receiver's statement). NMEA
only says which second a sentence describes, not when the second began, so the figure
includes everything between the receiver's second boundary and our ``read()``:

* the receiver's output latency: sentences leave some 50-500 ms after the second they
  describe, varying with the chipset, the number of sentences enabled and the epoch;
* the serial line: 10 bits a byte, so ~1 ms a byte at 9600 baud and ~2 ms at 4800; a
  1 Hz burst of 400-600 bytes takes 0.4-0.6 s at 9600 baud and 0.8-1.25 s at 4800 (the
  first sentence of the epoch is what is timed, so enable few sentences);
* USB serial adapters buffer (an FTDI latency timer defaults to 16 ms), plus the host's
  thread scheduling (~0.1-1 ms).

So a host whose clock is right typically reads +50...+500 ms with a jitter of tens of ms,
and the check can only catch gross errors: a host clock seconds off, a receiver reporting
a stale or wrong time (a GPS week-number rollover puts it 1024 weeks in the past), a
receiver in simulation mode. The default ``ClockOffsetHigh`` threshold is therefore 1 s.
The offset is only computed when the receiver has a fix and RMC gave a full date and
time; a receiver without a fix may be running on its own RTC.

For real time keeping, let ``chronyd`` discipline the clock from gpsd and the receiver's
PPS (pulse-per-second) line, which marks the second boundary to within microseconds on
a kernel PPS device (``pps-gpio``, or the DCD line of a real serial port with
``ldattach PPS``); NMEA then only numbers the seconds. For example (chrony.conf(5),
gpsd(8) and gpsd's Time Service HOWTO; set the NMEA offset to your receiver's latency):

    # /etc/default/gpsd
    DEVICES="/dev/ttyS0 /dev/pps0"
    GPSD_OPTIONS="-n"
    # /etc/chrony/chrony.conf
    refclock SHM 0 refid NMEA offset 0.2 delay 0.2 noselect
    refclock PPS /dev/pps0 lock NMEA refid PPS prefer

``chronyc sources`` then shows the NMEA source good to a few hundred milliseconds and the
PPS source to microseconds. With gpsd on the host, configure ``[hardware.gnss] port =
"gpsd://..."`` so this module reads gpsd's JSON instead of competing for the serial port:
two readers of one serial line each get part of the bytes. (:class:`GnssReceiver` opens
its port with an exclusive lock, so a second lifeline reader is refused; gpsd and other
programs do not check that lock.)

Other limits: NMEA gives the year in two digits (taken as 2000-2079, 1980-1999);
a leap second (``23:59:60``) reads as the next day's ``00:00:00``; ``$GPZDA`` (which some
timing receivers prefer) is not decoded, so a receiver must emit RMC for the offset.

Sources: NMEA 0183 sentence layouts as pynmea2 (Knio/pynmea2) and gpsd decode them;
golden sentences in the tests come from gpsd's regression logs (test/daemon/*.log) and
pynmea2's tests; gpsd_json(5) for TPV/SKY.

The simulators (a receiver on a pty, a tiny gpsd) are the lab's: :mod:`lab.sim.gnss`.
"""
