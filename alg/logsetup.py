"""Logging for the ALG: named loggers, Call-ID context, RFC 5424 syslog over UDP.

The seed talk names remote logging "a key benefit" of a proxy (customer care,
troubleshooting, intrusion and DoS detection). The pieces:

* Named loggers under `sipwall.alg` (`LOGGERS`), configured in one place with
  `logging.config.dictConfig` from a frozen `LogSettings` (the uvicorn way).
* The Call-ID of the call being handled travels in a context variable (`call_context`)
  or per logger (`CallLogger`); `CallIdFilter` puts it on every record, so every line
  about a call can be found with one grep or one structured-data query.
* `Rfc5424Formatter` renders the syslog protocol (RFC 5424 §6) byte-exactly:
  `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM MSG`, the Call-ID as an
  SD-PARAM under the documentation enterprise number 32473 (RFC 5612).
* `SyslogUdpHandler` sends one datagram per record (RFC 5426) from a non-blocking
  socket: logging never stalls the event loop; if the socket buffer is full the record
  is dropped and counted, which is the nature of UDP syslog anyway.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import socket
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from alg.errors import LogConfigError

LOGGERS: Final = (
    "sipwall.alg",
    "sipwall.alg.sip",
    "sipwall.alg.routing",
    "sipwall.alg.dns",
    "sipwall.alg.ratelimit",
    "sipwall.alg.cdr",
    "sipwall.alg.policy",
    "sipwall.alg.dialogs",
    "sipwall.alg.transactions",
    "sipwall.alg.registrar",
    "sipwall.alg.auth",
)

CALL_ID: ContextVar[str | None] = ContextVar("sipwall_call_id", default=None)

# RFC 5424 §6.2.1 facilities by name (RFC 3164 names) and severities of Python levels.
FACILITIES: Final = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13,
    "alert": 14, "clock": 15, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
_SEVERITY: Final = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
ENTERPRISE_ID: Final = 32473  # RFC 5612: reserved for documentation and examples
NILVALUE: Final = "-"
BOM: Final = "\ufeff"


@contextlib.contextmanager
def call_context(call_id: str | None) -> Iterator[None]:
    """Log records made inside the block (same task/thread) carry this Call-ID."""
    token = CALL_ID.set(call_id)
    try:
        yield
    finally:
        CALL_ID.reset(token)


class CallLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one call: `CallLogger(log, call_id).info(...)`."""

    def __init__(self, logger: logging.Logger, call_id: str) -> None:
        super().__init__(logger, {"call_id": call_id})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class CallIdFilter(logging.Filter):
    """Sets `record.call_id` (from `extra`, else the context variable, else None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "call_id", None) is None:
            record.call_id = CALL_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`2023-11-14 22:13:20,500 INFO sipwall.alg.routing [call-id] message`."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        default = "%(asctime)s %(levelname)s %(name)s%(call_tag)s %(message)s"
        super().__init__(fmt or default, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None) or CALL_ID.get()
        record.call_tag = f" [{call_id}]" if call_id else ""
        return super().format(record)


def _printusascii(text: str, limit: int) -> str:
    """RFC 5424 §6: header fields are PRINTUSASCII (33..126), bounded; empty -> NILVALUE."""
    clean = "".join(ch for ch in text if 33 <= ord(ch) <= 126)[:limit]
    return clean or NILVALUE


def _sd_escape(value: str) -> str:
    # RFC 5424 §6.3.3: '"', '\' and ']' inside PARAM-VALUE are escaped with '\'.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def severity(levelno: int) -> int:
    for threshold, value in _SEVERITY:
        if levelno >= threshold:
            return value
    return 7  # debug


class Rfc5424Formatter(logging.Formatter):
    def __init__(
        self,
        app_name: str = "sipwall",
        facility: str | int = "local0",
        hostname: str | None = None,
        procid: str | None = None,
    ) -> None:
        super().__init__()
        self.facility = _facility(facility)
        self.hostname = _printusascii(hostname or socket.gethostname(), 255)
        self.app_name = _printusascii(app_name, 48)
        self.procid = _printusascii(procid or str(os.getpid()), 128)

    def format(self, record: logging.LogRecord) -> str:
        pri = self.facility * 8 + severity(record.levelno)
        moment = datetime.fromtimestamp(record.created, UTC)
        timestamp = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
        msgid = _printusascii(record.name, 32)  # which part of the ALG speaks
        call_id = getattr(record, "call_id", None) or CALL_ID.get()
        sd = f'[sipwall@{ENTERPRISE_ID} callid="{_sd_escape(call_id)}"]' if call_id else NILVALUE
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        header = f"<{pri}>1 {timestamp} {self.hostname} {self.app_name} {self.procid} {msgid}"
        # §6.4: a UTF-8 MSG starts with the BOM.
        return f"{header} {sd} {BOM}{message}"

    def format_bytes(self, record: logging.LogRecord) -> bytes:
        return self.format(record).encode("utf-8", "replace")


def _facility(value: str | int) -> int:
    if isinstance(value, int) and 0 <= value <= 23:
        return value
    if isinstance(value, str) and value.lower() in FACILITIES:
        return FACILITIES[value.lower()]
    raise LogConfigError(f"unknown syslog facility {value!r}")


class SyslogUdpHandler(logging.Handler):
    """RFC 5426 syslog over UDP, one record per datagram, never blocking.

    The collector's address is resolved once, here (give an address literal to avoid
    DNS at start-up). Datagrams are cut at `max_size` (RFC 5426 §3.2: 2048 octets
    SHOULD be accepted by a receiver; 480 for IPv4 MUST)."""

    def __init__(self, host: str, port: int = 514, *, max_size: int = 2048) -> None:
        super().__init__()
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except (OSError, UnicodeError) as exc:
            raise LogConfigError(f"syslog collector {host}:{port}: {exc}") from None
        self.address = address
        self.max_size = max_size
        self.dropped = 0
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.setFormatter(Rfc5424Formatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self.formatter
            if isinstance(formatter, Rfc5424Formatter):
                data = formatter.format_bytes(record)
            else:
                data = self.format(record).encode("utf-8", "replace")
            self.sock.sendto(data[: self.max_size], self.address)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # socket buffer full: dropping beats stalling the loop
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.dropped += 1
            self.handleError(record)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            super().close()


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "INFO"
    levels: Mapping[str, str] = field(default_factory=dict)  # per logger name
    console: bool = True
    syslog_host: str | None = None
    syslog_port: int = 514
    app_name: str = "sipwall"
    facility: str = "local0"
    hostname: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", MappingProxyType(dict(self.levels)))
        for name, level in {"root": self.level, **self.levels}.items():
            if not isinstance(logging.getLevelName(str(level).upper()), int):
                raise LogConfigError(f"unknown log level {level!r} for {name}")
        _facility(self.facility)
        if not 0 < self.syslog_port < 65536:
            raise LogConfigError(f"bad syslog port {self.syslog_port}")


def logging_config(settings: LogSettings) -> dict[str, Any]:
    """The dictConfig dictionary for `settings` (pure; `configure_logging` applies it)."""
    handlers: dict[str, dict[str, Any]] = {}
    if settings.console:
        handlers["console"] = {
            "class": "logging.StreamHandler",
            "formatter": "text",
            "filters": ["call_id"],
        }
    if settings.syslog_host is not None:
        handlers["syslog"] = {
            "()": SyslogUdpHandler,
            "host": settings.syslog_host,
            "port": settings.syslog_port,
            "formatter": "syslog",
            "filters": ["call_id"],
        }
    loggers = {name: {"level": level.upper()} for name, level in settings.levels.items()}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"call_id": {"()": CallIdFilter}},
        "formatters": {
            "text": {"()": TextFormatter},
            "syslog": {
                "()": Rfc5424Formatter,
                "app_name": settings.app_name,
                "facility": settings.facility,
                "hostname": settings.hostname,
            },
        },
        "handlers": handlers,
        "loggers": {
            "sipwall": {
                "level": settings.level.upper(),
                "handlers": list(handlers),
                "propagate": False,
            },
            **loggers,
        },
    }


def configure_logging(settings: LogSettings) -> None:
    try:
        logging.config.dictConfig(logging_config(settings))
    except ValueError as exc:
        raise LogConfigError(str(exc)) from exc
