"""The venue emulator: one small HTTP/1.1 server that answers ccxt's real Kraken and
Coinbase requests, and can be told to go slow, fail or go silent.

    python -m lab.venues --listen 127.0.0.1:0 \\
        [--api-key kraken=KEY] [--api-key coinbase=KEY] [--data DIR]

prints ``venue-emulator ready http://HOST:PORT`` (the real port) on stdout once it
listens, and exits 0 on SIGTERM or SIGINT. Point ccxt at it by replacing
``scheme://host`` of every URL in ``exchange.urls["api"]`` with that address (paths are
kept); both venues share the port because their paths differ (Kraken ``/0/public/*``,
``/0/private/*``; Coinbase ``/v2/*``, ``/api/v3/*``).

What is served, and where it comes from
---------------------------------------
*Recorded* answers are the ``httpResponse`` bodies of ccxt's offline "static" test
responses (MIT, https://github.com/ccxt/ccxt, ``ts/src/test/static/response/
{kraken,coinbase}.json``), read at run time from ``lab/data/ccxt_static/``, shipped in the repository (see
``lab/data/README.md``; ``--data`` overrides the folder).

Kraken: ``Ticker`` (XBTUSDT: fetchTicker), ``OpenOrders`` (the three fetchOpenOrders
cases merged into the initial open orders), ``OpenPositions`` (fetchPositions),
``QueryOrders`` (the two fetchOrder cases, plus the emulator's own orders).

Coinbase: ``/api/v3/brokerage/market/products/BTC-USDC/ticker`` (fetchTicker),
``/v2/accounts`` (the two fetchBalance cases, chosen by ``?limit=``; ccxt's default
fetchBalance method is v2PrivateGetAccounts), ``/api/v3/brokerage/orders/historical/
batch`` for non-open statuses (the fetchClosedOrders case),
``/api/v3/brokerage/intx/positions/<portfolio>`` (the INTX fetchPositions case; ccxt
4.5 no longer calls it, see below).

*Derived* answers: Coinbase's initial open order is the recorded closed order
(fetchClosedOrders) turned into an OPEN limit order (same ids, nothing filled);
``/api/v3/brokerage/accounts`` lists the recorded v2 accounts in the v3 shape.

*Hand-written* answers (not recorded; minimal, values approximate, only what ccxt
needs): the markets and currencies ``load_markets`` fetches (Kraken ``Assets`` and
``AssetPairs`` for XBTUSDT, LTCUSDT, XXRPZUSD, ADAUSDT, the fixtures' pairs; Coinbase
``/v2/currencies``, ``/v2/currencies/crypto``, ``/v2/exchange-rates``,
``/api/v3/brokerage/market/products`` for BTC-USDC, BTC-USD, ADA-USDT and no futures,
``/api/v3/brokerage/transaction_summary``), Kraken ``Balance``/``BalanceEx`` (no
recorded balance exists), Coinbase ``/api/v3/brokerage/cfm/positions`` (no futures
positions), and the time/status endpoints, which answer with the current time.

Behaviour
---------
* Orders per venue: seeded as above; more can be added (:meth:`~lab.venues.server.VenueEmulator.add_orders`,
  ``POST /_emulator/orders``); Kraken ``CancelOrder``/``CancelOrderBatch``/``CancelAll``
  and Coinbase ``orders/batch_cancel`` remove them (they are then listed as cancelled).
* Kraken ``CancelAllOrdersAfter`` (the dead-man switch) arms a timer on trio's clock
  (so ``MockClock`` drives it in tests); when it fires every open Kraken order is
  cancelled; ``timeout=0`` disarms it. The state shows whether it is armed, its trigger
  time and how many orders it cancelled.
* Faults per venue, optionally only for clients whose source address is in given CIDRs
  (the lab makes a venue silent "through the fibre only" this way):
  ``ok``; ``silent`` (read the request, never answer; the connection is held until the
  fault is lifted, the client hangs up or the server stops, and then closed without an
  answer; TCP connects still succeed, the kernel accepts them, so a client sees a read
  timeout rather than a connect timeout); ``slow`` (wait ``delay`` seconds, then answer normally); ``error`` (HTTP
  ``status``, default 503, with the venue's error body: Kraken ``{"error":
  ["EService:Unavailable"]}``, Coinbase a plain-text status line, so ccxt raises
  ExchangeNotAvailable for both); ``exchange_error`` (HTTP 200 with the venue's error
  body: Kraken ``EService:Deadline elapsed``, Coinbase ``{"success": false,
  "error_response": ...}``, so ccxt raises a plain ExchangeError). ``message`` replaces
  the venue's error text.
* Credentials: ccxt signs private calls itself; the emulator does not verify signatures.
  With ``--api-key VENUE=KEY`` a private call with another key gets the venue's auth
  error (Kraken HTTP 200 ``{"error": ["EAPI:Invalid key"]}``, Coinbase HTTP 401), which
  ccxt turns into AuthenticationError.
* Control under ``/_emulator/`` (never faulted, never counted as venue requests):
  ``GET /_emulator/state``; ``POST /_emulator/fault {"venue", "mode", "delay", "status",
  "sources", "message"}``; ``POST /_emulator/orders {"venue", "orders": [...],
  "replace": false}``; ``POST /_emulator/system_status {"venue", "status"}``;
  ``POST /_emulator/reset``. The same operations are methods of :class:`~lab.venues.server.VenueEmulator`
  (call them from trio's thread, e.g. a test's task, never from a worker thread).
* Unknown paths answer 404 with a body naming the missing route (logged as a warning).

Not emulated: order placement, signature checks, rate limits. Coinbase has no
status endpoint in ccxt (``fetch_status`` raises NotSupported without a request), and
ccxt 4.5's Coinbase ``fetch_positions`` refuses INTX portfolios and asks
``/api/v3/brokerage/cfm/positions`` (hand-written, empty).

The HTTP side is deliberately small (h11, see :mod:`lab.venues.server`): HTTP/1.1 with
keep-alive and pipelining, ``Content-Length`` bodies only (chunked requests get 501),
head ≤ 16 KiB, body ≤ 1 MiB, a started request complete within 10 s, a malformed
request gets 400 and closes that connection only, idle connections close after a
minute, at most 512 connections at once.

Modules: :mod:`~lab.venues.server` (the trio shell and the Python control API),
:mod:`~lab.venues.kraken` and :mod:`~lab.venues.coinbase` (each venue's routes, sans-IO),
:mod:`~lab.venues.venue` (what they share), :mod:`~lab.venues.faults`,
:mod:`~lab.venues.recorded`, :mod:`~lab.venues.control` (``/_emulator/``),
:mod:`~lab.venues.messages` (request and response), ``__main__`` (the command line).
"""
