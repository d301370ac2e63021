"""The files the commands write: an output file named on the command line checked before the
work, a .npy written whole or not at all, a .csv header line, and train's report files."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .._atomic import replaced_atomically
from .._checks import check_folder


# What the report writes after training; metrics.json last, so its presence says the report is whole.
_REPORT_FILES = ("samples.npy", "plot.png", "metrics.json")


def _drop_report(out: Path) -> None:
    """Delete an earlier run's report files from ``out``."""
    for name in _REPORT_FILES:
        (out / name).unlink(missing_ok=True)


def _output_file(text: str, flag: str, suffixes: tuple[str, ...] | None = None, what: str = "") -> Path:
    """A file named on the command line for a command's output, checked before the work: not
    empty, not a folder, a known ending (``suffixes``: np.save would quietly append .npy, and
    savefig writes the format it is told whatever the name), in a folder that exists or is made
    here."""
    if not text.strip():
        raise ValueError(f"{flag} is empty; pass a file name")
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"{flag} {text!r} is a folder; pass a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        endings = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise ValueError(f"{flag} {text!r}: {what} written as {endings}; end the name in one of those")
    check_folder(path.parent, flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, whole or not at all, to the name as given (np.save on a path adds .npy to "s.NPY")."""
    with replaced_atomically(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _csv_header(names: list[str]) -> str:
    """One .csv line of names, quoted where a name holds a comma or a quote (csv module rules)."""
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(names)
    return line.getvalue()
