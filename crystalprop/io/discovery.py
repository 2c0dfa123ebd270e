"""Find structure files from command-line arguments and read them as records.

Paths are streamed: a folder is listed one directory at a time, so the
first structure of a 100,000-file tree is read before the tree is walked.
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

from crystalprop.io.formats import is_pw_x_file, looks_like_structure_name, may_be_pw_x_name
from crystalprop.io.limits import READ_TIMEOUT_S
from crystalprop.io.result_files import is_own_output

if TYPE_CHECKING:
    from crystalprop.io.readers import StructureRecord

_GLOB_CHARS = ("*", "?", "[")


def printable(path: str) -> str:
    """``path`` as text that any encoder takes: bytes of a file name that are not UTF-8 (which Python keeps as
    lone surrogates) written as ``\\xff`` escapes. Result files and ``--resume`` name structures by this."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def has_glob(arg: str) -> bool:
    """Whether ``arg`` holds a glob character (``*``, ``?``, ``[``)."""
    return any(c in arg for c in _GLOB_CHARS)


def _as_pattern(arg: str) -> bool:
    """Whether an argument is read as a glob pattern: it has glob characters and names no existing path."""
    return has_glob(arg) and not os.path.exists(arg)


def _matches(arg: str) -> list[str]:
    """The paths an argument names: a pattern's sorted matches, else the argument itself."""
    return sorted(glob.glob(arg, recursive=True)) if _as_pattern(arg) else [arg]


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _cannot_stat(path: str) -> bool:
    """Whether nothing can be found behind a path: a link to nothing (a purged scratch file), an entry
    removed since its folder was listed, a link loop, or one that may not be looked at."""
    try:
        os.stat(path)
    except OSError:
        return True
    return False


def _is_candidate(entry: os.DirEntry[str]) -> bool:
    """A regular file (or link to one) named like a structure, or a ``.in``/``.out`` file that
    starts like pw.x input or output (those names are too common to trust); dot files are skipped,
    and so are crystalprop's own JSON results, which a run may have written into the folder
    (predict's tables and sidecars, evaluate's metrics.json: :func:`~crystalprop.io.result_files.is_own_output`).
    A structure name with nothing behind it (a broken link, an entry gone since the listing) or with a named
    pipe or a device behind it is a candidate too, so that the reader reports it instead of it vanishing
    from the results; such files are not opened here, where one could block."""
    by_name = looks_like_structure_name(entry.name)
    if entry.name.startswith(".") or not (by_name or may_be_pw_x_name(entry.name)):
        return False
    regular = _is_file(entry)
    if by_name:
        return not (_is_subdir(entry) or (regular and is_own_output(entry.path)))
    return regular and is_pw_x_file(entry.path)


def _is_subdir(entry: os.DirEntry[str]) -> bool:
    """A sub-folder, or a link to one (followed with ``-r``; :func:`_walk` lists each folder once)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_broken_link(entry: os.DirEntry[str]) -> bool:
    """A link to nothing (a purged scratch file or folder), which a scan cannot follow."""
    try:
        return entry.is_symlink() and _cannot_stat(entry.path)
    except OSError:
        return False


def _list_dir(folder: str) -> list[os.DirEntry[str]] | None:
    """Entries of one folder sorted by name, or None when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError:
        return None


def _folder_key(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the folder a path leads to, which names it whatever links lead there."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _first_visits(folders: list[str], seen: set[tuple[int, int]]) -> list[str]:
    """The folders not in ``seen``, which are added to it; one that cannot be looked at stays, for the
    reader to report."""
    fresh = []
    for path in folders:
        key = _folder_key(path)
        if key not in seen:
            fresh.append(path)
            if key is not None:
                seen.add(key)
    return fresh


class _Listing(NamedTuple):
    folder: str
    entries: list[os.DirEntry[str]] | None
    """Sorted by name; None when the folder cannot be listed."""
    subdirs: list[str]
    """Every sub-folder, linked ones too."""
    entered: list[str]
    """The sub-folders walked next (with ``recursive``): those not listed before."""


def _walk(folder: str, recursive: bool) -> Iterator[_Listing]:
    """A folder's listing, then with ``recursive`` those of its sub-folders, depth first, each by name.

    Symlinked sub-folders are followed, and each folder is listed once, told by its device and inode,
    so a link back up ends the walk there and a second link to a folder does not list it again.
    """
    start = _folder_key(folder)
    seen = set() if start is None else {start}
    pending = [folder]
    while pending:
        current = pending.pop()
        entries = _list_dir(current)
        subdirs = [entry.path for entry in entries or [] if _is_subdir(entry)]
        entered = _first_visits(subdirs, seen) if recursive else []
        yield _Listing(current, entries, subdirs, entered)
        pending.extend(reversed(entered))


def _iter_folder(folder: str, recursive: bool) -> Iterator[str]:
    """Structure files of a folder (files first, then sub-folders, each sorted by name).

    A folder that cannot be listed is yielded itself, so the reader reports
    it instead of it vanishing from the results.
    """
    for listing in _walk(folder, recursive):
        if listing.entries is None:
            yield listing.folder
            continue
        yield from (entry.path for entry in listing.entries if _is_candidate(entry))


def _iter_arg(arg: str, recursive: bool) -> Iterator[str]:
    if os.path.isdir(arg):
        yield from _iter_folder(arg, recursive)
    else:
        yield arg


def _iter_glob(pattern: str, recursive: bool) -> Iterator[str]:
    """Sorted matches of a pattern (``**`` also matches the folders it walks, so a file can come twice:
    :func:`iter_structure_paths` keeps one)."""
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        yield pattern
        return
    for match in matches:
        yield from _iter_arg(match, recursive)


def iter_structure_paths(args: Iterable[str], recursive: bool = False, seen: set[str] | None = None) -> Iterator[str]:
    """Yield structure file paths from files, folders and glob patterns, each file once.

    Files are yielded as given (missing ones too, so the reader reports
    them); folders give their structure-named files, one level or
    ``recursive``; glob patterns are expanded (``**`` allowed) and sorted.
    A file given again (by name and in its folder, or by a glob) is left out where it comes again,
    told by its name in the real path of its folder (``link/..`` is where the link points); names that
    link to one file are each kept, as a folder of links picks candidates from a database. ``seen``
    holds the keys yielded so far, for a caller that lists more inputs than one call.
    """
    seen = set() if seen is None else seen
    for arg in map(os.fspath, args):
        paths = _iter_glob(arg, recursive) if _as_pattern(arg) else _iter_arg(arg, recursive)
        for path in paths:
            key = os.path.normcase(os.path.join(os.path.realpath(os.path.dirname(path) or "."),
                                                os.path.basename(path)))
            if key not in seen:
                seen.add(key)
                yield path


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def output_among_inputs(output: str, args: Iterable[str], recursive: bool = False) -> str | None:
    """The argument under which an existing ``output`` file is itself read as an input (given by name, matched
    by a glob, or a structure file in a folder scanned), else None: writing results there would destroy it
    before it is read. crystalprop's own result files are no inputs (folder scans leave them out)."""
    if not os.path.isfile(output) or is_own_output(output):
        return None
    for arg in map(os.fspath, args):
        for match in _matches(arg):
            read = _iter_folder(match, recursive) if os.path.isdir(match) else [match]
            if any(_same_file(path, output) for path in read):  # linked files and folders too, as the scan reads them
                return arg
    return None


def _given_folders(args: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(argument, folder) for each argument that is a folder or a glob pattern matching folders."""
    for arg in map(os.fspath, args):
        yield from ((arg, match) for match in _matches(arg) if os.path.isdir(match))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _not_read(listings: list[_Listing], recursive: bool) -> list[str]:
    """What the folders hold that a scan reads nothing from: other files, sub-folders without ``-r``,
    links to folders listed already, broken links."""
    entries = [entry for listing in listings for entry in listing.entries or []]
    subdirs = sum(len(listing.subdirs) for listing in listings)
    files = [entry.name for entry in entries if not _is_subdir(entry) and not _is_broken_link(entry)]
    repeated = [path for listing in listings for path in listing.subdirs if path not in listing.entered]
    broken = [entry.path for entry in entries if _is_broken_link(entry)]
    held = [f"{_plural(len(files), 'file')} not recognised as structures, e.g. {files[0]}"] if files else []
    if subdirs and not recursive:
        held.append(f"{_plural(subdirs, 'sub-folder')}: use -r to read {'it' if subdirs == 1 else 'them'}")
    if repeated and recursive:
        held.append(f"{_plural(len(repeated), 'sub-folder')} not followed, a folder read already, e.g. {repeated[0]}")
    if broken:
        held.append(f"{_plural(len(broken), 'broken link')}, e.g. {broken[0]} -> {os.path.realpath(broken[0])}")
    return held


def no_structures_found(args: Iterable[str], recursive: bool = False) -> str | None:
    """None when ``args`` give a path to read (:func:`iter_structure_paths`), else why they give none:
    the folders named, the files in them not recognised as structures, the sub-folders left unread."""
    args = list(map(os.fspath, args))
    if next(iter_structure_paths(args, recursive), None) is not None:
        return None
    given = list(_given_folders(args))
    named = list(dict.fromkeys(arg for arg, _ in given))
    listings = [listing for _, folder in given for listing in _walk(folder, recursive)]
    folders = sum(len(listing.entered) for listing in listings)
    one = len(named) == 1
    where = ", ".join(named) + (f" or {'its' if one else 'their'} {_plural(folders, 'sub-folder')}"
                                if recursive and folders else "")
    held = _not_read(listings, recursive)
    return f"no structure files found in {where} ({'; '.join(held) or ('it is' if one else 'they are') + ' empty'})"


def iter_records(
    args: Iterable[str], recursive: bool = False, timeout: float | None = READ_TIMEOUT_S
) -> Iterator[StructureRecord]:
    """Read and validate every structure in this process, one record per structure.

    A bad file gives one record with ``error`` set; nothing is raised for it.
    ``timeout`` (seconds, None or 0 for none) bounds parsing of each file.
    """
    from crystalprop.io.readers import iter_file_records  # noqa: PLC0415  (pymatgen: only where files are read)

    for path in iter_structure_paths(args, recursive):
        yield from iter_file_records(path, timeout)
