"""Loading user data from ``.npy`` / ``.csv`` files and splitting it into train / val / test."""
from __future__ import annotations

import csv
import itertools
import math
import os
from pathlib import Path

import numpy as np

from .._warn import warn_user

__all__ = ["load_array", "column_names", "split", "SUFFIXES"]

SUFFIXES = (".npy", ".csv")


def _finite_rows(arr: np.ndarray, where: str, line_numbers: list[int] | None = None) -> None:
    # A single NaN poisons every gradient step; say which rows so the user can clean the file
    # (for a .csv, by its line number, which an editor shows).
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        at = f"row {first}" if line_numbers is None else f"line {line_numbers[first]} of the file"
        raise ValueError(f"{where} has {int(bad.sum())} row(s) with NaN or inf values (first: {at})")


def check_npy_header(p: Path) -> None:
    """Refuse a file that does not start as a .npy array does, before numpy reads it: an .npz
    (np.load would return an archive), and text or an empty file (numpy's own errors speak of
    pickles, or end in EOFError)."""
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"PK"):
        raise ValueError(f"{str(p)!r} is not a single .npy array (an .npz archive?)")
    if magic != b"\x93NUMPY":
        csv = (" (for a .csv, pass the path itself: jkofast.train and --data read it; or convert it once "
               "with np.save(name, jkofast.datasets.load_array(path)))" if p.suffix.lower() == ".csv" else "")
        empty = " (the file is empty)" if not magic else ""
        raise ValueError(f"{str(p)!r} is not a .npy file: it does not start with numpy's header{empty}{csv}")


def _read_npy(path: Path) -> np.ndarray:
    check_npy_header(path)
    try:
        # allow_pickle=False: a .npy of objects would run arbitrary code when unpickled.
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # (EOFError: a header cut short)
        raise ValueError(f"could not read {str(path)!r} as a numeric .npy array: {e}") from e
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{str(path)!r} must hold a numeric array, got dtype {arr.dtype}")
    return arr


def _csv_lines(path: Path, limit: int | None = None) -> list[str]:
    """The lines of a .csv that may hold data or a header (the first ``limit`` of them): blank
    lines are left out, and so are comment lines, which start with ``#`` as numpy's loadtxt and
    savetxt have them, except a first line (np.savetxt's header: :func:`_header_comment`)."""
    # utf-8-sig: spreadsheet exports often start with a byte-order mark. Lines end at \n only
    # (after \r\n and \r are read as \n), as an editor counts them: str.splitlines also breaks
    # at form feeds and other separators.
    try:
        if limit is None:
            text = path.read_text(encoding="utf-8-sig")
            lines = text.split("\n")
            lines = [lines[i] for i in _kept(lines, comments="#" in text)]
        else:
            with open(path, encoding="utf-8-sig") as fh:
                lines = [line.rstrip("\n") for line in itertools.islice(_kept_lines(fh), limit)]
    except UnicodeDecodeError as e:  # (a UTF-16 "Unicode text" export, a Latin-1 header)
        raise ValueError(f"{str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 "
                         "(a spreadsheet's \"CSV UTF-8\") or as a .npy array") from e
    if not lines:
        raise ValueError(f"{str(path)!r} is empty (no rows)")
    return lines


def _kept(lines: list[str], comments: bool = True) -> list[int]:
    """The indices of the lines :func:`_csv_lines` keeps: the first non-blank line, then every
    line that is neither blank nor (where the text has a ``#``, ``comments``) a comment."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return []
    keep = _holds_fields if comments else str.strip
    return [first, *(i for i in range(first + 1, len(lines)) if keep(lines[i]))]


def _kept_lines(lines):
    """:func:`_kept` over an iterator of lines, lazily (the lines, not their indices)."""
    lines = (line for line in lines if line.strip())
    yield from itertools.islice(lines, 1)
    yield from filter(_holds_fields, lines)


def _holds_fields(line: str) -> bool:
    """Neither blank nor a comment."""
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _line_numbers(path: Path) -> list[int]:
    """The file's line numbers (from 1) of the lines :func:`_csv_lines` keeps, for messages:
    read again, on error paths only."""
    return [i + 1 for i in _kept(path.read_text(encoding="utf-8-sig").split("\n"))]


def _header_comment(lines: list[str], path: Path) -> tuple[list[str], bool]:
    """``lines`` with a first line that is a comment read as the header it may be (np.savetxt
    writes ``header=`` as ``# x,y``): the names after the ``#``, where they are names (no number)
    as many as the next line's fields; else it is left out as a comment. Also returns whether it
    was left out."""
    if not lines[0].lstrip().startswith("#"):
        return lines, False
    names = lines[0].lstrip()[1:].strip()
    if len(lines) > 1 and names:
        sep = _separator(lines[1])
        fields = _header_names(names, sep, path)
        # (counted as a header's are, without a trailing separator's empty fields: rows may end in one)
        if not any(reads_as_number(v) for v in fields) and len(fields) == len(_header_names(lines[1], sep, path)):
            return [names, *lines[1:]], False
    if len(lines) == 1:
        raise ValueError(f"{str(path)!r} is empty (no rows: a comment line only)")
    return lines[1:], True


def _csv_layout(lines: list[str], path: Path) -> tuple[str, list[str] | None]:
    """The separator and the header's fields (None where the first line is data) of a .csv's
    non-blank ``lines``, semicolon files' decimal commas already turned into points."""
    sep = _separator(lines[1] if len(lines) > 1 else lines[0])
    fields = _fields(lines[0], sep, path)
    if _pandas_default_names(fields) and len(lines) > 1 and not _whole_numbers(_fields(lines[1], sep, path)):
        return sep, fields
    numeric = [reads_as_number(v) for v in fields]
    own = _separator(lines[0])
    if not any(numeric) and own != sep and all(reads_as_number(v) for v in _fields(lines[0], own, path)):
        raise ValueError(f"the first line of {str(path)!r} is separated by {_SEPARATORS[own]}s, the next by "
                         f"{_SEPARATORS[sep]}s: use one separator throughout")
    if any(numeric) and not all(numeric):  # neither: say so, rather than drop a data row as a "header"
        raise ValueError(f"the first line of {str(path)!r} mixes numbers and other fields ({lines[0][:80]!r}): "
                         "it is neither a header nor a row of separated numbers")
    return sep, None if all(numeric) else fields


def _whole_numbers(fields: list[str]) -> bool:
    return all(reads_as_number(v) and float(v).is_integer() for v in fields)


def _pandas_default_names(fields: list[str]) -> bool:
    """A first line of 0, 1, ..., d-1 (after an empty name where the index was kept): the header
    that pandas' to_csv writes for a DataFrame of an unnamed array, where the next line holds a
    number that is not whole (over whole numbers, as 0/1 data, it is read as the data row it may be)."""
    names = [name.strip() for name in fields]
    names = names[1:] if names and not names[0] and len(names) > 2 else names
    return len(names) > 1 and names == [str(i) for i in range(len(names))]


def _decimal_points(lines: list[str]) -> list[str]:
    """A semicolon file's commas are decimal marks (1,5;2 is 1.5 and 2)."""
    sep = _separator(lines[1] if len(lines) > 1 else lines[0])
    return [line.replace(",", ".") for line in lines] if sep == ";" else lines


def _trailing_separator_dropped(lines: list[str]) -> list[str]:
    """Lines whose data rows all end in a separator (``1.5,2,``: a spreadsheet's export of an
    empty last column) without it, the header's too where it has one; else as they are."""
    sep = _separator(lines[1] if len(lines) > 1 else lines[0])
    rows = lines[1:] if len(lines) > 1 else lines
    if sep == " " or not all(row.rstrip(" ").endswith(sep) for row in rows):
        return lines
    return [line.rstrip(" ")[:-1] if line.rstrip(" ").endswith(sep) else line for line in lines]


def _read_csv(path: Path) -> np.ndarray:
    lines, dropped = _header_comment(_csv_lines(path), path)
    lines = _trailing_separator_dropped(_decimal_points(lines))
    sep, header = _csv_layout(lines, path)
    skipped = (header is not None) + dropped  # lines before the first data row, of those _csv_lines keeps
    if header is not None:
        header_line, lines = lines[0], lines[1:]  # a first line without numbers is a header
        if _pandas_default_names(header) and header[0].strip():  # (an empty first name: never a data row)
            warn_user(f"the first line of {str(path)!r}, {header_line[:40]!r}, is read as a header: pandas' names "
                      "0, 1, ... of an unnamed array's columns (to_csv); if it is a data row, put a header line "
                      "above it")
        if len(header) > 1 and not header[0].strip():
            warn_user(f"the header of {str(path)!r} starts with an empty name, as pandas' to_csv writes its row "
                      "index: that column is read as data; save with to_csv(index=False) if it is the index")
    if not lines:
        raise ValueError(f"{str(path)!r} is empty (a header line but no data rows)")
    try:
        # delimiter None: runs of spaces, as np.savetxt writes; quotechar: "1.5","2" as some exports write.
        arr = np.loadtxt(lines, delimiter=None if sep == " " else sep, dtype=np.float64, ndmin=2, quotechar='"')
    except ValueError as e:
        where = _first_bad_line(lines, _line_numbers(path)[skipped:], sep, path)
        raise ValueError(f"could not parse {str(path)!r} as {_SEPARATORS[sep]}-separated numbers: "
                         f"{where or e}") from e
    names = None if header is None else len(_header_names(header_line, sep, path))
    if names is not None and names != arr.shape[1]:
        single = (" (one column with decimal commas? a comma-separated file needs decimal points; "
                  "semicolons may separate columns written with decimal commas)" if names == 1 and sep == "," else "")
        raise ValueError(f"the header of {str(path)!r} has {names} name(s) but its rows have {arr.shape[1]} "
                         f"{_SEPARATORS[sep]}-separated fields{single}")
    if not np.isfinite(arr).all():
        _finite_rows(arr, f"data in {str(path)!r}", _line_numbers(path)[skipped:])
    return arr  # float64: training standardizes in it before rounding to the model's dtype


def _first_bad_line(lines: list[str], numbers: list[int], sep: str, path: Path) -> str | None:
    """Where numpy's loadtxt failed, said by the file's line number (numpy counts rows after the
    header, blank and comment lines are gone, and from 0 or 1 by the kind of error): the first
    line whose field count differs from the first row's, or with a field that is not a number.
    None where every line reads (numpy's own message is then the one to show)."""
    width = None
    for line, number in zip(lines, numbers):
        fields = _fields(line.split("#", 1)[0], sep, path)  # (loadtxt drops a trailing # comment)
        width = len(fields) if width is None else width
        if len(fields) != width:
            return f"line {number} of the file has {len(fields)} field(s), the first row {width}: {line[:80]!r}"
        bad = next((v for v in fields if not reads_as_number(v)), None)
        if bad is not None:
            return f"line {number} of the file holds {bad[:40]!r}, not a number: {line[:80]!r}"
    return None


def column_names(path) -> list[str] | None:
    """The column names of a ``.csv`` file's header line (as :func:`load_array` tells a header),
    read with the csv module's quoting rules; None for a ``.npy`` or a ``.csv`` without a header."""
    p = Path(os.fspath(path))
    if p.suffix.lower() != ".csv":
        return None
    raw, _ = _header_comment(_csv_lines(p, limit=3), p)  # the header is told from the first two lines
    sep, header = _csv_layout(_trailing_separator_dropped(_decimal_points(raw)), p)
    if header is None:
        return None
    return _header_names(raw[0], sep, p)  # as written (a semicolon file's commas kept)


def _header_names(line: str, sep: str, path: Path) -> list[str]:
    """A header line's names (``x, "y, z"`` is two), without a trailing separator's empty names
    (``a;b;``); the count load_array checks."""
    names = _fields(line, sep, path)
    while len(names) > 1 and not names[-1]:
        names.pop()
    return names


def _fields(line: str, sep: str, path: Path) -> list[str]:
    """A line's fields as the csv module reads them (quotes taken off; a quoted field may hold the
    separator), spaces around each stripped; ``sep`` " " splits at runs of spaces."""
    try:
        fields = next(csv.reader([line.strip() if sep == " " else line], delimiter=sep, skipinitialspace=True))
    except csv.Error as e:  # (a NUL byte)
        raise ValueError(f"could not read {str(path)!r} as text separated by {_SEPARATORS[sep]}s: {e}") from e
    return [field.strip() for field in fields] or [""]


_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", " ": "space"}


def _separator(line: str) -> str:
    """The field separator of a data line: a semicolon where there is one (as spreadsheets export
    in the locales whose decimal mark is a comma), else a tab, else a comma, else spaces (numpy's
    savetxt); a single column has none (read as a comma)."""
    line = line.split("#", 1)[0]  # (a trailing comment, as loadtxt reads it)
    found = next((sep for sep in (";", "\t", ",") if sep in line), None)
    return found or (" " if len(line.split()) > 1 else ",")


def reads_as_number(field: str) -> bool:
    """Whether ``float()`` parses ``field`` (how a .csv's header line is told from data)."""
    if "_" in field:  # (float() reads 1_000; numpy's loadtxt does not)
        return False
    try:
        float(field)
    except ValueError:
        return False
    return True


def load_array(path) -> np.ndarray:
    """Load a data matrix from a ``.npy`` or ``.csv`` file.

    A ``.csv`` is comma-separated (or semicolon-separated, with decimal points or commas, or
    tab-separated, or separated by runs of spaces as ``np.savetxt`` writes, told by its second
    line) with one sample per line, read as float64, UTF-8; fields may be quoted (``"1.5"``); blank
    lines and lines starting with ``#`` (comments) are skipped, but for a first one that names the
    columns (``np.savetxt(header=...)`` writes ``# x,y``): the header. A first line with no number in it
    is taken as a header and skipped (one that mixes numbers and other fields is an error: it may
    be a damaged data row), and so is one of 0, 1, ..., d-1 (the names pandas gives an unnamed
    array's columns) over a line that is not all whole numbers; a header must name as many
    columns as the rows have. Errors name the file's line (from 1). A single-column ``.csv``
    gives shape (N, 1). A ``.npy`` is read with ``allow_pickle=False``.

    Arguments:
        path: ``str`` or ``os.PathLike`` ending in ``.npy`` or ``.csv``.

    Returns:
        arr: array of shape (N, d) with N >= 1 rows, all finite; float64 if the ``.npy`` holds
        float64 or integers (exact up to 2^53), float32 for the narrower float types.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unknown suffix, unreadable or non-numeric content, not 2-D, no rows or
            columns, or rows with NaN/inf.
    """
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"data file {str(p)!r} does not exist (or is not a file)")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unsupported data file suffix {p.suffix!r} in {str(p)!r}; must be one of {list(SUFFIXES)}")
    arr = _read_npy(p) if suffix == ".npy" else _read_csv(p)
    if arr.ndim != 2:
        raise ValueError(f"data in {str(p)!r} must be a 2-D array (rows, features), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"data in {str(p)!r} is empty (shape {arr.shape}); need at least one row and one column")
    # Integers as float64, like a .csv: float32 holds them exactly only up to 2^24 (timestamps,
    # counts and ids above that would collapse onto float32's coarser grid without a word).
    # (by kind and size: a big-endian float64, '>f8', is not equal to np.float64)
    wide = (arr.dtype.kind == "f" and arr.dtype.itemsize >= 8) or arr.dtype.kind in "iub"
    arr = arr.astype(np.float64 if wide else np.float32, copy=False)
    if suffix == ".npy":  # (_read_csv checked its rows, naming the file's lines)
        _finite_rows(arr, f"data in {str(p)!r}")
    return arr


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def split(arr, val_fraction: float = 0.1, test_fraction: float = 0.1, seed=0):
    """Shuffle rows with a seeded permutation and cut them into train / val / test.

    The test split gets ``floor(test_fraction * N)`` rows, validation
    ``floor(val_fraction * N)``, training the rest. A fraction of exactly 0 gives an empty
    (0, d) split on purpose; a positive fraction that rounds to zero rows is an error.

    Arguments:
        arr: array of shape (N, d).
        val_fraction, test_fraction: numbers in [0, 1) with ``val_fraction + test_fraction < 1``.
        seed: anything ``np.random.default_rng`` accepts; the same seed gives the same split.

    Returns:
        (train, val, test): copies of shapes (N_train, d), (N_val, d), (N_test, d) with the
        dtype of ``arr``; disjoint, and together they hold every row once.
    """
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"arr must be a 2-D array (rows, features), got shape {arr.shape}")
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1 to leave training rows, "
                         f"got {val_fraction} + {test_fraction}")
    n = arr.shape[0]
    if n == 0:
        raise ValueError(f"arr has no rows (shape {arr.shape}); nothing to split")
    # The tiny epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    n_test = math.floor(test_fraction * n + 1e-9)
    n_val = math.floor(val_fraction * n + 1e-9)
    for part, frac, size in (("test", test_fraction, n_test), ("val", val_fraction, n_val)):
        if frac > 0 and size == 0:
            raise ValueError(f"too few rows to split: the data has {n} row(s), so {part}_fraction={frac} "
                             f"gives an empty {part} split; at least {math.ceil(1.0 / frac - 1e-9)} rows "
                             f"are needed (or pass {part}_fraction=0 for no {part} split)")
    if n - n_test - n_val < 1:  # only reachable through the epsilon with fractions summing to ~1
        raise ValueError(f"too few rows to split: the data has {n} row(s) and none is left for training")
    perm = np.random.default_rng(seed).permutation(n)
    return arr[perm[n_test + n_val:]], arr[perm[n_test:n_test + n_val]], arr[perm[:n_test]]
