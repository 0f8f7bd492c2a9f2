"""The one error contract of every command: an expected failure is one line naming the file, exit 2.

Every command's ``main`` runs inside :func:`run_main` (the ``exiflang`` dispatcher wraps each
command in it, and direct script paths can call it too).  What escapes ``main`` becomes:

- an *expected* failure (unreadable or damaged data, an unusable model or checkpoint, an
  unwritable output, a bad option value; see :func:`is_expected`): one line on stderr,
  ``PROG: error: FILE: reason``, exit code 2 (:data:`EXIT_BAD_INPUT`);
- anything else (a bug): one line ``PROG: internal error: Type: message`` plus a hint to rerun
  with ``--debug``, exit code 1 (:data:`EXIT_INTERNAL`, what Python itself uses for an uncaught
  exception);
- ``KeyboardInterrupt``: one line ``PROG: interrupted``, exit code 130 (:data:`EXIT_INTERRUPTED`).

The traceback is printed (before the line) only with ``--debug`` on the command line or
``EXIFLANG_DEBUG=1`` in the environment.  The file is taken from ``OSError.filename``, from a
``path`` attribute (``ImageError``, ``SourceError``, :class:`CommandError`), or from the file a
``with naming(path):`` block was reading when the exception passed through it.

This module imports nothing of the project and no heavy library, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Union

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: an exception no command expects
EXIT_BAD_INPUT = 2  # bad usage, data, model, checkpoint or output path: the user can fix it
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT (128 + 2)
DEBUG_FLAG = "--debug"
DEBUG_ENV = "EXIFLANG_DEBUG"
MAX_REASON = 1000  # characters: a pyarrow or Pillow message can be long, a line must stay readable

PathLike = Union[str, "os.PathLike[str]"]
MainFn = Callable[[list[str]], int | None]

# Exception types that mean "this input cannot be used", named by "module.QualName" so that
# checking them never imports pyarrow, Pillow, safetensors, yaml or torch (an exception of a
# type whose module was never imported cannot occur).  Subclasses count: the MRO is searched.
EXPECTED_TYPES = frozenset(
    {
        "builtins.OSError",  # PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError,
        # FileNotFoundError, pyarrow's ArrowIOError, PIL.UnidentifiedImageError
        "builtins.ValueError",  # bad option values, json.JSONDecodeError, UnicodeError, ArrowInvalid
        "builtins.EOFError",  # truncated pickles, gzip/bz2 streams
        "builtins.KeyError",  # a key missing from a damaged JSON / table
        "builtins.MemoryError",  # an input too large for this machine
        "pyarrow.lib.ArrowException",
        "PIL.Image.DecompressionBombError",
        "safetensors._safetensors_rust.SafetensorError",
        "yaml.error.YAMLError",
        "zipfile.BadZipFile",
        "tarfile.TarError",
        "_pickle.UnpicklingError",
        "pickle.UnpicklingError",
        "zlib.error",
        "_lzma.LZMAError",
        "exiflang.eval.images.ImageError",
        "exiflang.train.data.samples.ShardError",
        "exiflang.train.data.samples.SampleError",
        "exiflang.errors.CommandError",
    }
)

_active_debug: list[bool] = []  # one entry per run_main on the stack: nested mains inherit --debug


class CommandError(Exception):
    """An expected failure a command raises itself: ``str(err)`` is ``"PATH: reason"`` on one line.

    ``path`` may be ``None`` for a failure that concerns no file (a bad option combination).
    """

    def __init__(self, path: PathLike | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(self.reason if self.path is None else f"{self.path}: {self.reason}")


def _type_names(exc: BaseException) -> Iterator[str]:
    for cls in type(exc).__mro__:
        yield f"{cls.__module__}.{cls.__qualname__}"


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the input (exit 2) rather than a bug (exit 1)."""
    return any(name in EXPECTED_TYPES for name in _type_names(exc))


@contextlib.contextmanager
def naming(path: PathLike) -> Iterator[None]:
    """Attach ``path`` to an exception leaving the block, so its one line names the file.

    The innermost ``naming`` wins (it is the most specific file); the exception itself is
    re-raised unchanged otherwise.  Use it around reads of a damaged-file-prone format whose
    library does not say which file it was (pyarrow, json, safetensors, zip, pickle).
    """
    try:
        yield
    except Exception as exc:
        if getattr(exc, "exiflang_file", None) is None:
            try:
                exc.exiflang_file = str(path)  # type: ignore[attr-defined]
            except AttributeError:  # a few C types refuse new attributes: the message stays as is
                pass
        raise


def file_of(exc: BaseException) -> str | None:
    """The file an exception is about, or ``None`` when nothing names one."""
    # Most specific first: the OS's own file name, the file a project error names, then the
    # file an enclosing ``naming`` block was reading.
    for attr in ("filename", "path", "exiflang_file"):
        value = getattr(exc, attr, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return str(value)
        if isinstance(value, bytes) and value:
            return os.fsdecode(value)
    return None


def _blocking_file(path: str) -> str | None:
    """The nearest existing non-folder at or above ``path`` (what makes a mkdir fail), if any."""
    p = Path(path)
    for cand in (p, *p.parents):
        if cand.exists() or cand.is_symlink():
            return None if cand.is_dir() else str(cand)
    return None


def _os_reason(exc: OSError, filename: str) -> tuple[str, str]:
    """(file, reason) for an OSError, naming the file in the way when a folder cannot be made."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = _blocking_file(filename)
        if blocker == filename:
            return filename, "exists and is not a folder"
        if blocker is not None:
            return blocker, f"is a file, not a folder (so {filename} cannot be made)"
    if isinstance(exc, IsADirectoryError):
        reason = "is a folder, not a file"
    target = getattr(exc, "filename2", None)
    if isinstance(target, (str, bytes, os.PathLike)) and target:
        # A rename or link: the destination is the file the user knows (the source is our temporary).
        return os.fsdecode(target), reason
    return filename, reason


def check_out_dir(path: PathLike) -> Path:
    """``path`` as a Path, after checking it can be (or is) an output folder; nothing is created.

    Raises :class:`CommandError` naming the file in the way (``path`` is a file, or a file stands
    where one of its parent folders should be) or the nearest existing folder that this user
    cannot write to.  Run before any slow work, so that a bad ``--out`` costs nothing.
    """
    p = Path(path)
    blocker = _blocking_file(str(p))
    if blocker == str(p):
        raise CommandError(p, "exists and is not a folder")
    if blocker is not None:
        raise CommandError(blocker, f"is a file, not a folder (so {p} cannot be made)")
    existing = next((c for c in (p, *p.absolute().parents) if c.is_dir()), None)
    # os.access asks the kernel, so root (who may write anywhere) passes as it should.
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(existing, "not writable (permission denied)")
    return p


def check_out_file(path: PathLike) -> Path:
    """Like :func:`check_out_dir` for an output *file*: not a folder, and its folder can be made."""
    p = Path(path)
    if p.is_dir():
        raise CommandError(p, "is a folder, not a file")
    check_out_dir(p.absolute().parent)
    return p


def one_line(exc: BaseException) -> str:
    """``"FILE: reason"`` (or just the reason when no file is known), on one line, capped in length."""
    file = file_of(exc)
    message = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror and file:
        file, reason = _os_reason(exc, file)
    elif isinstance(exc, KeyError) and exc.args:
        reason = f"missing key {exc.args[0]!r}"
    elif isinstance(exc, MemoryError):
        reason = f"out of memory{': ' + message if message else ''}"
    else:
        reason = message or type(exc).__name__
    if file:
        # A message that already starts with the file, or quotes it, need not say it twice.
        for prefix in (f"{file}: ", f"{file}:"):
            if reason.startswith(prefix):
                reason = reason[len(prefix) :]
                break
        reason = reason.replace(f" '{file}'", "").replace(f' "{file}"', "")
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 1] + "…"
    return f"{file}: {reason}" if file else reason


def _env_debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def debug_enabled() -> bool:
    """True under ``--debug`` (of any enclosing :func:`run_main`) or ``EXIFLANG_DEBUG=1``."""
    return _env_debug() or any(_active_debug)


def pop_debug(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(whether ``--debug`` was given, ``argv`` without it); arguments after ``--`` are left alone."""
    args = list(argv)
    end = args.index("--") if "--" in args else len(args)
    found = DEBUG_FLAG in args[:end]
    return found, [a for a in args[:end] if a != DEBUG_FLAG] + args[end:]


def report(prog: str, exc: BaseException, interrupt_hint: str = "") -> int:
    """Print ``exc`` as this contract's one line (traceback first under debug); return the exit code.

    ``interrupt_hint`` follows ``interrupted`` on Ctrl-C (e.g. ``rerun the same command to resume``).
    """
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted" + (f"; {interrupt_hint}" if interrupt_hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    if is_expected(exc):
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    hint = "" if debug_enabled() else f"; rerun with {DEBUG_FLAG} (or {DEBUG_ENV}=1) for the traceback"
    print(f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)}{hint}", file=sys.stderr)
    return EXIT_INTERNAL


def run_main(
    prog: str,
    main: MainFn,
    argv: Sequence[str] | None = None,
    *,
    debug: bool = False,
    keep_debug_flag: bool = False,
    interrupt_hint: str = "",
) -> int:
    """Run ``main(argv)`` under the error contract; returns its exit code (0..2, or 130).

    ``argv`` defaults to ``sys.argv[1:]``.  ``--debug`` is taken out of ``argv`` (unless
    ``keep_debug_flag``: the command parses it itself) and turns tracebacks on for this call and
    any ``run_main`` nested in it, as do ``debug=True`` and ``EXIFLANG_DEBUG=1``.  ``SystemExit``
    (argparse's usage errors, ``--help``) passes through untouched.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    found, stripped = pop_debug(raw)
    _active_debug.append(debug or found)
    try:
        return int(main(raw if keep_debug_flag else stripped) or 0)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the one error contract; SystemExit is not caught: argparse owns it
        return report(prog, exc, interrupt_hint)
    finally:
        _active_debug.pop()
