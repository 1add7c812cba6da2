"""Logging for the agent (uvicorn style): one dictConfig, named loggers under `sipwall`."""

from __future__ import annotations

import logging.config
from typing import Any


def logging_config(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "sipwall": {"handlers": ["stderr"], "level": level, "propagate": False},
            "grpc": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def configure(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
