"""Every reach into faust-streaming's and aiokafka's internals, in one place (docs/architecture.md, "What the faust
runner relies on"). faust is the transport of the Kafka -> Kafka stages; what it does not offer publicly, and
ragbus needs, is done here:

1. `FaustApp`: the consumer's fetch wait. faust builds its aiokafka consumer with `fetch_max_wait_ms=1500` and no
   setting; against a broker that holds a fetch for its whole wait (the local Tansu) that is up to 1.5 s per stage
   for every event. Four private factory hooks are overridden to set the consumer's `_fetch_max_wait_ms` before it
   starts (aiokafka reads it when `start` builds its fetcher).
2. `committed_offset`: faust has no public accessor for the offset it last committed; lag and stall detection
   (infra/ops/health.py) read `Consumer._committed_offset`.
3. `broker_connected`: faust exposes no connection state; readiness reads aiokafka's client connections.
4. `leave_unacknowledged`: `os._exit`. faust acknowledges the batch in hand when the agent's stream is closed and
   commits acknowledged offsets on every orderly way out (an exception in the agent, SystemExit, a stop), so a
   batch that must be redelivered can only be left by ending the process without running Python's clean-up.

`RELIED_ON` names each private attribute this module uses; `verify` checks them against the installed faust and
aiokafka when a faust stage starts (a ConfigurationError naming what moved), and tests/unit/test_faust_seam.py
checks them and what they do, so an upgrade that moves one fails loudly instead of ragbus silently waiting 1.5 s
per fetch, reporting no lag, or never becoming ready. Nothing outside this module touches a private name of
either library.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, NoReturn

import aiokafka
import faust
from aiokafka.conn import AIOKafkaConnection
from faust.exceptions import ConsumerNotStarted
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from kernel.errors import ConfigurationError

#: faust's own default, kept when the app says nothing else.
FAUST_FETCH_WAIT_MS = 1500

#: (owner, private attribute, the parameter names it must take; None: an attribute, not a method).
RELIED_ON: tuple[tuple[type, str, tuple[str, ...] | None], ...] = (
    (faust.App, "_new_transport", ("self",)),
    (aiokafka_driver.Transport, "Consumer", None),
    (aiokafka_driver.Consumer, "_new_consumer_thread", ("self",)),
    (aiokafka_driver.AIOKafkaConsumerThread, "_create_worker_consumer", ("self", "transport")),
    (aiokafka_driver.AIOKafkaConsumerThread, "_ensure_consumer", ("self",)),
    (AIOKafkaConnection, "connected", ("self",)),
)
#: Instance attributes, set in the constructors: (owner, attribute).
RELIED_ON_INSTANCES: tuple[tuple[type, str], ...] = (
    (faust_consumer.Consumer, "_committed_offset"),
    (faust_consumer.ThreadDelegateConsumer, "_thread"),
    (aiokafka.AIOKafkaConsumer, "_fetch_max_wait_ms"),
    (aiokafka.AIOKafkaConsumer, "_client"),
    (aiokafka.AIOKafkaClient, "_conns"),
)


class _ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: aiokafka_driver.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_wait_ms", FAUST_FETCH_WAIT_MS)
        return consumer


class _Consumer(aiokafka_driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(aiokafka_driver.Transport):
    Consumer = _Consumer


class FaustApp(faust.App):
    """A faust app whose consumer waits at the broker `fetch_wait_ms` at most."""

    fetch_wait_ms = FAUST_FETCH_WAIT_MS

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)


def committed_offset(app: faust.App, tp: TP) -> int | None:
    """The offset faust last committed for `tp`, None before its first commit."""
    committed: int | None = app.consumer._committed_offset.get(tp)  # type: ignore[attr-defined]
    return committed


def broker_connected(app: faust.App) -> tuple[bool, str | None]:
    """Whether aiokafka holds a live broker connection, and why not."""
    try:
        client = app.consumer._thread._ensure_consumer()._client  # type: ignore[attr-defined]
    except ConsumerNotStarted:
        return False, "consumer not started"
    conns: dict[Any, AIOKafkaConnection] = client._conns
    up = any(conn.connected() for conn in list(conns.values()))
    return up, None if up else "no broker connection is up"


def leave_unacknowledged(code: int) -> NoReturn:
    """End the process at once, running no clean-up: the only way out on which faust commits nothing more."""
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


def missing(app: faust.App | None = None) -> list[str]:
    """What of `RELIED_ON` the installed faust and aiokafka lack (with `app`, its consumer's attributes too)."""
    found = []
    for owner, name, params in RELIED_ON:
        attr = inspect.getattr_static(owner, name, None)
        if attr is None:
            found.append(f"{owner.__module__}.{owner.__qualname__}.{name} is gone")
        elif params is not None and tuple(inspect.signature(attr).parameters) != params:
            found.append(f"{owner.__qualname__}.{name} now takes {tuple(inspect.signature(attr).parameters)}, "
                         f"not {params}")
    if app is not None:
        consumer = app.consumer
        found += [f"faust's consumer has no {name}" for owner, name in RELIED_ON_INSTANCES
                  if isinstance(consumer, owner) and not hasattr(consumer, name)]
    return found


def verify(app: faust.App) -> None:
    """Refuse to start a faust stage on a faust or aiokafka that moved what ragbus relies on."""
    if problems := missing(app):
        raise ConfigurationError(
            f"faust-streaming {faust.__version__} / aiokafka {aiokafka.__version__} changed what ragbus relies on "
            f"({'; '.join(problems)}): install the versions in requirements.lock, or update engine/faust_seam.py")
