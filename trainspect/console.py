"""What trainspect shows on the console: alerts as one line each, through `logging`.

Library code never prints. `verbose=True` asks for output, so the run gives the
`trainspect` logger a stderr handler unless the application configured logging.
"""

from __future__ import annotations

import logging

from trainspect.records import Alert

log = logging.getLogger("trainspect")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING}


def log_alert(alert: Alert) -> None:
    """The console's copy of an alert: one readable line at the alert's level."""
    log.log(_LEVELS.get(alert.level, logging.ERROR), "trainspect [%s] step %d: %s%s",
            alert.level, alert.step, alert.message,
            f" -> {alert.action}" if alert.action else "")


def console_for_verbose() -> None:
    """A stderr handler at INFO for the `trainspect` logger, unless one is configured."""
    logger = logging.getLogger("trainspect")
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
