"""What every command-line entry point shares (biformer-export/-parity/-bench/-zoo and the apps/ scripts): one error
boundary and an argparse that fails in one line.

Exit status: 0 ok / parity passed; 1 artifact written but parity failed; 2 bad input or environment (one
``error: ...`` line on stderr, no traceback, nothing left behind); 3 an internal error (one line saying what to
report; the traceback with ``--debug`` or ``BIFORMER_EDGE_DEBUG=1``); 130 Ctrl-C, 143 SIGTERM (cleaned up).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import signal
import sys
import tempfile
import traceback
import warnings

from .errors import UserError, first_line
from .targets import install_hints

DEBUG_ENV = "BIFORMER_EDGE_DEBUG"


# What to install for a missing library: the backends' table, plus what the tools themselves use.
INSTALL_HINTS = {
    **install_hints(),
    "torch": "pip install 'biformer-edge[export]' (exporting and --data re-references need PyTorch; re-checking an "
             "artifact does not)",
    # Not pip's OpenCV on a Jetson: it would shadow JetPack's, whose GStreamer the CSI camera needs.
    "cv2": "on a Jetson JetPack's OpenCV (sudo apt install libopencv-python, in a venv made with "
           "--system-site-packages); elsewhere pip install 'biformer-edge[device]'",
    "matplotlib": "pip install 'biformer-edge[apps]'",
}


def missing_library_line(exc: ModuleNotFoundError) -> str:
    """The one line for a library a command needs and this machine lacks: its name and how to install it."""
    missing = (exc.name or str(exc)).split(".")[0]
    hint = INSTALL_HINTS.get(missing, f"pip install {missing}")
    return f"error: {missing} is not installed, and this command needs it: {hint}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, CI cancellation, ``docker stop``) or SIGHUP (a closed terminal), raised like Ctrl-C so
    every cleanup path runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def quiet_libraries() -> None:
    """Keep stderr to our one line: FFmpeg, libjpeg/OpenCV and Python warnings of the libraries we call."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    try:  # OpenCV reads OPENCV_LOG_LEVEL once, at import: set the level too where it was imported already
        import cv2
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:
        pass
    try:
        import onnxruntime
        onnxruntime.set_default_logger_severity(3)  # e.g. "Failed to persist telemetry device ID" with no HOME
    except Exception:
        pass


@contextlib.contextmanager
def captured_native_stderr():
    """Capture what native libraries (libjpeg, FFmpeg) print straight to file descriptor 2 while decoding, so a
    command's stderr stays the one line it promises; yields a list that receives the captured lines."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def one_line(text: str) -> str:
    """A message made of one line whatever paths it quotes (a newline in a file name stays visible as \\n)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def os_error_line(exc: OSError) -> str:
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}: free some space or choose another --output; nothing was kept"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}: choose a writable location"
    return f"{exc.strerror or exc}{where}: check the path and try again"


def error_boundary(main):
    """Wrap ``main(argv) -> int``: map every expected failure to one line and its exit status, SIGTERM to Ctrl-C."""
    @functools.wraps(main)
    def wrapper(argv=None):
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        if "--debug" in argv:
            argv.remove("--debug")
            debug = True
        if not debug:
            quiet_libraries()
        previous = {}
        try:  # SIGHUP too: a closed terminal or ssh session must clean up like Ctrl-C
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, _raise_terminated)
        except ValueError:  # not the main thread (an entry point called from a worker thread): leave signals alone
            previous = {}
        try:
            code = main(argv)
        except UserError as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            code = exc.exit_code
        except Terminated as exc:   # a command that keeps resumable state says so in the exception
            print(f"terminated: {str(exc) or 'temporary files were removed, nothing was written'}", file=sys.stderr)
            code = 143
        except KeyboardInterrupt as exc:
            print(f"interrupted: {str(exc) or 'temporary files were removed, nothing was written'}", file=sys.stderr)
            code = 130
        except ModuleNotFoundError as exc:  # a library this command needs is not installed here
            if debug:
                traceback.print_exc()
            print(missing_library_line(exc), file=sys.stderr)
            code = 2
        except OSError as exc:
            if debug:
                traceback.print_exc()
            print(f"error: {one_line(os_error_line(exc))}", file=sys.stderr)
            code = 2
        except MemoryError:
            print("error: out of memory: use a smaller --input-size, --batch or --samples", file=sys.stderr)
            code = 2
        except Exception as exc:  # a bug of ours: say what to report, keep the traceback for --debug
            if debug:
                traceback.print_exc()
            detail = first_line(exc)
            print(f"internal error: {type(exc).__name__}: {detail} (a bug: report it with the output of the same "
                  f"command plus --debug, as the README's Exit status says)", file=sys.stderr)
            code = 3
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sys.exit(code or 0)
    return wrapper


class OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors also exit 2 with one line that says what to do."""

    def error(self, message):
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


def utf8_path(text: str, what: str) -> str:
    """Refuse a path that is not valid UTF-8 (undecodable bytes in a file name): OpenCV and the runtimes cannot open
    it and some crash on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} {text.encode('utf-8', 'surrogateescape')!r} is not a valid UTF-8 path: rename "
                        f"it") from None
    return text
