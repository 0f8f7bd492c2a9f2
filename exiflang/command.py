"""The one CLI layer: a command declares its arguments and its run function; this module runs it.

Every command module defines one :class:`Command`::

    COMMAND = Command(prog="exiflang detect", doc=__doc__, add_arguments=add_arguments, run=run)
    main = COMMAND.main          # what tests, scripts and ``python -m`` call

:meth:`Command.main` is the only place where a command's arguments are parsed, logging is
configured (once per process: ``logging.basicConfig`` does nothing the second time) and errors are
mapped to exit codes (:func:`exiflang.errors.run_main`: 2 bad input naming the file, 1 a bug,
130 Ctrl-C; the traceback only with ``--debug``).  ``run`` itself just raises.

Keep a command module's top-level imports light (no torch, faiss, ray): ``--help`` builds the parser
only, so it answers in well under a second; the heavy work is imported by what ``run`` calls.

This module imports nothing of the project but :mod:`exiflang.errors`, so every layer may use it.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exiflang.errors import DEBUG_FLAG, run_main

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ArgumentsFn = Callable[[argparse.ArgumentParser], None]
RunFn = Callable[[argparse.Namespace], "int | None"]


def configure_logging(level: int) -> None:
    """Set the root logger's level and format, once per process (later calls only lower the level
    when a nested command asks for more detail, never re-add handlers)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    elif level < root.level:
        root.setLevel(level)


@dataclass(frozen=True)
class Command:
    """One command: its program name, help text, argument declarations and run function.

    ``doc`` is the module docstring: its first paragraph is the description under ``--help``, the
    rest the epilog (shown verbatim).  ``log_level`` is the default level of the root logger; a
    command that declares ``--quiet`` gets WARNING when it is given.  ``accepts_debug``: the
    command declares ``--debug`` itself (it then also receives it when given before the command,
    ``exiflang --debug train ...``); otherwise ``--debug`` is taken out before parsing.
    ``interrupt_hint`` is added to the ``interrupted`` line (e.g. how to resume).
    """

    prog: str
    doc: str
    add_arguments: ArgumentsFn
    run: RunFn
    log_level: int = logging.INFO
    accepts_debug: bool = False
    interrupt_hint: str = ""

    def parser(self) -> argparse.ArgumentParser:
        """The command's argument parser (built fresh: parsers are cheap and hold state)."""
        head, _, rest = (self.doc or "").strip().partition("\n\n")
        p = argparse.ArgumentParser(
            prog=self.prog,
            description=" ".join(head.split()) or None,
            epilog=rest or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.add_arguments(p)
        return p

    def main(self, argv: Sequence[str] | None = None, *, debug: bool = False) -> int:
        """Parse ``argv`` (default ``sys.argv[1:]``) and run, under the error contract.

        Returns the exit code: the run function's (0 when it returns None), 2 for bad input or a
        usage error, 1 for a bug, 130 for Ctrl-C.  ``debug=True`` is ``--debug``.
        """
        if argv is not None and debug and self.accepts_debug and DEBUG_FLAG not in argv:
            argv = [DEBUG_FLAG, *argv]
        return run_main(
            self.prog,
            self._parse_and_run,
            argv,
            debug=debug,
            keep_debug_flag=self.accepts_debug,
            interrupt_hint=self.interrupt_hint,
        )

    def _parse_and_run(self, argv: list[str]) -> int:
        try:
            args = self.parser().parse_args(argv)
        except SystemExit as exc:  # --help (0) or a usage error (argparse printed it; 2)
            return 0 if exc.code in (0, None) else 2
        configure_logging(logging.WARNING if getattr(args, "quiet", False) else self.log_level)
        return int(self.run(args) or 0)
