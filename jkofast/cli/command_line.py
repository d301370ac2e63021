"""main(): one command line parsed and run, and every way it can end as an exit status and a
message (an error, Ctrl-C or SIGTERM, a closed pipe, memory)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..distributed import DistributedError
from ..jko_iflow_state import CHECKPOINT_FILE
from .parser import parse
from .process import _notes_on_stderr, _print_error, _rank0, _sigterm_raises, _stdout_reader_gone, _Terminated


def _how_to_resume(args) -> str:
    """What the message of an interrupted command says about resuming it."""
    if args.command != "train":
        return ""
    if not (Path(args.out).expanduser() / CHECKPOINT_FILE).exists():
        return f"; {args.out} holds no checkpoint yet: the command starts from the beginning"
    again = "the same command without --restart" if args.restart else "the same command"
    return f"; the last checkpoint in {args.out} is kept: {again} resumes from it"


def main(argv: list[str] | None = None) -> int:
    """The ``jkofast`` command: parse ``argv`` (``sys.argv[1:]`` when None), run the subcommand,
    and return its exit status (errors are printed as one line, not a traceback)."""
    args = parse(argv)
    try:
        with _notes_on_stderr(), _sigterm_raises():  # notes with --no-progress too: a run that stopped early says so
            code = args.func(args)
        sys.stdout.flush()  # a pipe's reader that went away shows here, in the handler below, not at exit
        return code
    except (CheckpointError, DistributedError, FileNotFoundError, FloatingPointError, ImportError, ValueError,
            TypeError) as exc:
        _print_error(exc)
        return 2
    except KeyboardInterrupt as exc:
        stopped = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        if _rank0():  # under torchrun every rank is stopped: one says so
            print(f"\n{stopped}{_how_to_resume(args)}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except BrokenPipeError:
        if not _stdout_reader_gone():  # another pipe (a worker's, a socket's) broke: a real failure
            raise
        # ``jkofast eval ... | head``: not an error of ours. Point stdout at devnull so the
        # interpreter's final flush does not raise again (Python docs, signal: SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a full disk, a permission, a path that is a file: the message names it
        _print_error(exc)
        return 1
    except (torch.OutOfMemoryError, MemoryError) as exc:
        hint = "\n(a smaller --batch or --hidden needs less memory)" if args.command == "train" else ""
        _print_error(str(exc) or "out of memory", hint)
        return 1
    except SystemExit as exc:
        if isinstance(exc.code, str):  # one of our refusals ("error: ..."): as the others, status 2 (named by rank)
            _print_error(exc.code.removeprefix("error: "))
            return 2
        raise
