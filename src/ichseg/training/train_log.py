"""Where `ichseg train` says what it does: the console always (unless the caller set up logging),
progress bars on a terminal, and RUN/train.log once the run folder may be written."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from ichseg.config import Config


def show_bars(cfg: Config) -> bool:
    """Progress bars only on a terminal, and not with --quiet (a log file gets no bar junk)."""
    return not cfg.training.quiet and sys.stderr.isatty()


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """Messages of ichseg.training on stderr, unless the caller configured logging already."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("ichseg")
    added = None
    if not logger.handlers and not logging.getLogger().handlers:
        added = logging.StreamHandler(sys.stderr)
        added.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(added)
        logger.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        if added is not None:
            logger.removeHandler(added)


class TrainLog(logging.Handler):
    """train.log. Records logged before the run folder may be written (planning must not touch
    the disk) are kept, and written first once `open` is called."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pending: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def open(self, path: Path) -> None:
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        # On a full disk the record still reaches the console; no traceback for each line.
        self.file.handleError = lambda record: None  # type: ignore[method-assign]
        for record in self.pending:
            self.file.handle(record)
        self.pending.clear()

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            self.pending.append(record)
        else:
            self.file.handle(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


@contextlib.contextmanager
def collected_train_log() -> Iterator[TrainLog]:
    handler = TrainLog()
    logger = logging.getLogger("ichseg")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()
