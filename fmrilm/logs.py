"""Keep library warnings out of what a user reads: conversations, demos, evaluation reports.

Warnings and log messages of the libraries underneath (transformers, peft, datasets, accelerate, nilearn, torch,
...: deprecations, hints about generation settings) go to a log file when one is given and to stderr only with
``verbose``; otherwise they are dropped. fmrilm's own warnings (a repaired bad region, a sidecar TR that overrides
the header) are about the user's data, so they stay on stderr as one ``warning: ...`` line.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

#: Library loggers whose WARNING messages are routed (their children follow them).
LIBRARY_LOGGERS = (
    "transformers",
    "peft",
    "datasets",
    "accelerate",
    "huggingface_hub",
    "nilearn",
    "torch",
    "tokenizers",
    "fsspec",
    "urllib3",
)
#: Where routed Python warnings are logged.
WARNINGS_LOGGER = "fmrilm.library"
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
#: how many `library_warnings` blocks are open (a nested quiet block keeps the outer routing)
_active = 0


def _is_ours(category: type, filename: str) -> bool:
    return category.__module__.split(".")[0] == "fmrilm" or str(Path(filename).resolve()).startswith(
        _PACKAGE_DIR
    )


@contextmanager
def library_warnings(verbose: bool = False, log_file: str | Path | None = None) -> Iterator[None]:
    """Within the block, library warnings go to ``log_file`` (appended) and, with ``verbose``, to stderr.

    Everything is put back on exit, so the block can run inside a test or a longer program. Inside another
    such block (a command the demo runs in its own process), a block that asks for neither a log file nor
    ``verbose`` keeps the outer routing: the demo's warnings.log gets the training's and evaluation's warnings.
    """
    global _active
    if _active and not verbose and log_file is None:
        yield
        return
    handlers: list[logging.Handler] = []
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            from fmrilm.errors import FmriInputError

            raise FmriInputError(
                f"Cannot open the log file ({exc.strerror or exc})",
                file=log_file,
                fix="give --log-file a path in an existing, writable folder",
            ) from exc
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        handlers.append(handler)
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        handlers.append(stream)
    routed = handlers or [logging.NullHandler()]
    saved = []
    for name in (*LIBRARY_LOGGERS, WARNINGS_LOGGER):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
        logger.handlers = list(routed)
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    library = logging.getLogger(WARNINGS_LOGGER)
    original_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if _is_ours(category, filename):
            print(f"warning: {message}", file=sys.stderr)
        else:
            library.warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    warnings.showwarning = show
    _active += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each library warning once per place, into the log
            warnings.showwarning = show
            yield
    finally:
        _active -= 1
        warnings.showwarning = original_show
        for logger, old_handlers, propagate, level in saved:
            logger.handlers = old_handlers
            logger.propagate = propagate
            logger.setLevel(level)
        for handler in handlers:
            handler.close()


def add_warning_options(parser: Any) -> None:
    """The options every command that loads a model takes: ``--verbose`` and ``--log-file FILE``."""
    parser.add_argument(
        "--verbose", action="store_true", help="show library warnings (transformers, peft, ...) on stderr"
    )
    parser.add_argument("--log-file", metavar="FILE", help="append library warnings and messages to FILE")


def warnings_as_asked(args: Any) -> AbstractContextManager[None]:
    """`library_warnings` as a command's `add_warning_options` ask for (absent options: quiet)."""
    return library_warnings(verbose=getattr(args, "verbose", False), log_file=getattr(args, "log_file", None))


@contextmanager
def no_library_progress_bars() -> Iterator[None]:
    """Within the block transformers prints no progress bars of its own ("Loading weights", "Writing model
    shards"): a command that shows its own progress, or none, stays readable. The setting is restored after."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
