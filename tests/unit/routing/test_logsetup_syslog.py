"""alg.logsetup: Call-ID context, RFC 5424 bytes, UDP handler on a local socket, dictConfig."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Iterator

import pytest

from alg.errors import LogConfigError
from alg.logsetup import (
    LOGGERS,
    CallIdFilter,
    CallLogger,
    LogSettings,
    Rfc5424Formatter,
    SyslogUdpHandler,
    TextFormatter,
    call_context,
    configure_logging,
    logging_config,
    severity,
)

T0 = 1_700_000_000.5  # 2023-11-14T22:13:20.5Z


def record(
    msg: str = "no route for %s",
    args: tuple[object, ...] = ("sip:x@y",),
    level: int = logging.WARNING,
    name: str = "sipwall.alg.routing",
    **extra: object,
) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.created = T0
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


FORMATTER = Rfc5424Formatter(app_name="sipwall", facility="local0", hostname="gw1", procid="4242")


def test_rfc5424_exact_bytes_with_call_id() -> None:
    data = FORMATTER.format_bytes(record(call_id='a8"4]b\\c@10.77.0.10'))
    assert data == (
        b"<132>1 2023-11-14T22:13:20.500000Z gw1 sipwall 4242 sipwall.alg.routing "
        b'[sipwall@32473 callid="a8\\"4\\]b\\\\c@10.77.0.10"] '
        b"\xef\xbb\xbfno route for sip:x@y"
    )


def test_rfc5424_without_call_id_uses_nilvalue_and_severities() -> None:
    data = FORMATTER.format_bytes(record("started", (), logging.INFO, "sipwall.alg"))
    assert data == (
        b"<134>1 2023-11-14T22:13:20.500000Z gw1 sipwall 4242 sipwall.alg - \xef\xbb\xbfstarted"
    )
    assert [severity(lv) for lv in (50, 40, 30, 20, 10, 5)] == [2, 3, 4, 6, 7, 7]
    daemon = Rfc5424Formatter(facility="daemon", hostname="gw1", procid="1")
    assert daemon.format_bytes(record(level=logging.ERROR)).startswith(b"<27>1 ")


def test_rfc5424_header_fields_are_printusascii_and_bounded() -> None:
    odd = Rfc5424Formatter(app_name="a p\u00e9p" + "x" * 60, hostname=" ", procid="7")
    text = odd.format(record(name="a very long logger name that exceeds thirty-two"))
    _, _, host, app, procid, msgid, *_ = text.split(" ", 6)
    assert host == "-"
    assert app == "app" + "x" * 45  # non-ASCII and spaces removed, 48 at most
    assert procid == "7"
    assert msgid == "averylongloggernamethatexceedsth"


def _explode() -> None:
    raise RuntimeError("boom")


def test_rfc5424_includes_traceback() -> None:
    try:
        _explode()
    except RuntimeError:
        rec = record("failed", (), logging.ERROR)
        rec.exc_info = sys.exc_info()
    text = FORMATTER.format(rec)
    assert text.endswith("RuntimeError: boom")
    assert "\ufefffailed\nTraceback" in text


def test_unknown_facility() -> None:
    with pytest.raises(LogConfigError, match="facility"):
        Rfc5424Formatter(facility="local9")


def test_text_formatter_call_id_from_context_adapter_or_none() -> None:
    fmt = TextFormatter("%(name)s%(call_tag)s %(message)s")
    assert fmt.format(record()) == "sipwall.alg.routing no route for sip:x@y"
    with call_context("abc@host"):
        assert fmt.format(record()) == "sipwall.alg.routing [abc@host] no route for sip:x@y"
    assert fmt.format(record()) == "sipwall.alg.routing no route for sip:x@y"

    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            captured.append(rec)

    logger = logging.getLogger("sipwall.test.adapter")
    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        CallLogger(logger, "xyz@host").warning("hello %s", "there", extra={"k": 1})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert fmt.format(captured[0]).endswith("[xyz@host] hello there")
    assert captured[0].k == 1  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_call_id_context_is_per_task() -> None:
    filt = CallIdFilter()
    seen: dict[str, object] = {}

    async def handle(call_id: str) -> None:
        with call_context(call_id):
            await asyncio.sleep(0)
            rec = record()
            filt.filter(rec)
            seen[call_id] = rec.call_id  # type: ignore[attr-defined]

    await asyncio.gather(handle("one"), handle("two"))
    assert seen == {"one": "one", "two": "two"}


@pytest.fixture
def collector() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_udp_handler_sends_one_datagram_per_record(collector: socket.socket) -> None:
    port = collector.getsockname()[1]
    handler = SyslogUdpHandler("127.0.0.1", port)
    handler.setFormatter(FORMATTER)
    try:
        assert not handler.sock.getblocking()
        handler.handle(record(call_id="c1"))
        data, _ = collector.recvfrom(65535)
        assert data == FORMATTER.format_bytes(record(call_id="c1"))
    finally:
        handler.close()


def test_udp_handler_truncates_and_counts_drops(collector: socket.socket) -> None:
    port = collector.getsockname()[1]
    handler = SyslogUdpHandler("127.0.0.1", port, max_size=480)
    handler.setFormatter(FORMATTER)
    try:
        handler.handle(record("x" * 5000, ()))
        data, _ = collector.recvfrom(65535)
        assert len(data) == 480
        assert data.startswith(b"<132>1 ")

        class FullSocket:
            def sendto(self, data: bytes, address: object) -> int:
                raise BlockingIOError

            def close(self) -> None:
                pass

        real = handler.sock
        handler.sock = FullSocket()  # type: ignore[assignment]
        handler.handle(record())
        assert handler.dropped == 1
        handler.sock = real
    finally:
        handler.close()


def test_udp_handler_bad_collector() -> None:
    with pytest.raises(LogConfigError, match="collector"):
        SyslogUdpHandler("256.1.1.1.invalid..", 514)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("sipwall", *LOGGERS)
    saved = {
        n: (
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
        )
        for n in names
    }
    yield
    for n, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(n)
        for h in logger.handlers:
            if h not in handlers:
                h.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_sends_named_logger_records_to_collector(
    collector: socket.socket,
) -> None:
    port = collector.getsockname()[1]
    settings = LogSettings(
        level="info",
        levels={"sipwall.alg.sip": "debug"},
        console=False,
        syslog_host="127.0.0.1",
        syslog_port=port,
        hostname="gw1",
        facility="local3",
    )
    configure_logging(settings)
    assert logging.getLogger("sipwall.alg.sip").level == logging.DEBUG
    with call_context("call-42@10.77.0.10"):
        logging.getLogger("sipwall.alg.routing").warning("routing %s", "tel:+1732")
    logging.getLogger("sipwall.alg.cdr").debug("filtered out at INFO")
    data, _ = collector.recvfrom(65535)
    assert data.startswith(b"<156>1 ")  # local3 (19) * 8 + warning (4)
    assert b" gw1 sipwall " in data
    assert b' sipwall.alg.routing [sipwall@32473 callid="call-42@10.77.0.10"] ' in data
    assert data.endswith(b"\xef\xbb\xbfrouting tel:+1732")
    collector.settimeout(0.2)
    with pytest.raises(TimeoutError):
        collector.recvfrom(65535)


def test_logging_config_shape() -> None:
    config = logging_config(LogSettings())
    assert set(config["handlers"]) == {"console"}
    assert config["loggers"]["sipwall"]["level"] == "INFO"
    assert config["disable_existing_loggers"] is False


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"level": "LOUD"}, "log level"),
        ({"levels": {"sipwall.alg.sip": "chatty"}}, "sipwall.alg.sip"),
        ({"facility": "local8"}, "facility"),
        ({"syslog_port": 0}, "port"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(LogConfigError, match=fragment):
        LogSettings(**kwargs)  # type: ignore[arg-type]
