"""Every document the repository cites is in the repository.

Readers have the repository and the sources it names (papers, official code), nothing else, so
a citation of a file outside it, or of a code from notes they cannot see, is a dead end. Three
checks over the text files git lists (tracked, and untracked but not ignored, so that a new file
is checked before its first commit) that are also on disk:

(a) a path of the repository's own shape (`docs/...`, `hierpipe/...`, `tests/...`,
    `workflow/...`, `params/...`, `benchmarks/...`, `docker/...`) names an existing file or
    folder; a pattern (`*`, `{a,b}`) or placeholder (`<name>`, `{name}`) must match one;
(b) the project's private notes are never cited: their file names (NOTE_NAMES, each with the
    Markdown suffix) only as a path to a file that exists in the repository, the folder they
    live in (beside the checkout) never, nor "<paper> reference, section N";
(c) no bare note code (H, Q, S or A and one or two digits, such as the quirk numbers of the
    notes) in comments, docstrings, strings or documents.

Each check lists every offender as file:line in its failure message.
"""

from __future__ import annotations

import fnmatch
import io
import re
import subprocess
import tokenize
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = "tests/test_citations.py"

# --- (a) paths of the repository's shape ---------------------------------------------------

TOP_FOLDERS = ("docs", "hierpipe", "tests", "workflow", "params", "benchmarks", "docker")
# Not preceded by a path or URL character, so `github.com/x/docs/...` and `./tests` are not
# taken for the repository's own paths.
REPO_PATH = re.compile(rf"(?<![\w./~$-])((?:{'|'.join(TOP_FOLDERS)})/[\w./<>*{{}},+-]*)")
PLACEHOLDER = re.compile(r"<[\w -]+>|\{\w+\}")
ALTERNATIVES = re.compile(r"\{([^{}]*,[^{}]*)\}")

# (files, path, why the path need not exist), as fnmatch patterns, each as narrow as it can be.
PATH_ALLOWED = (
    ("tests/*.py", "params/tiny.yaml", "tests write it into their throwaway workflow copies"),
    ("benchmarks/*.py", "params/tiny.yaml", "so do benchmarks"),
    (
        "tests/test_data_imagefolder.py",
        "docs/readme.txt",
        "a fixture the test writes under its temporary folder",
    ),
    (".github/workflows/*", "docker/*-action", "a GitHub Action (owner/name), not a path"),
    ("tests/test_containers.py", "docker/*-action", "the GitHub Actions the release uses"),
)

# --- (b) the notes ---------------------------------------------------------------------------

# Spelled without their suffix here, so that this file does not contain the names it forbids.
NOTE_NAMES = ("hier", "proxydr", "pipeline-practice", "runtimes", "ARCHITECTURE")
NOTE_FILE = re.compile(
    rf"(?<![\w./-])((?:[\w.-]*/)*(?:{'|'.join(map(re.escape, NOTE_NAMES))})\.md)(?![\w-])",
    re.IGNORECASE,
)
NOTES_FOLDER = re.compile(r"(?<![\w.-])(\.\./" + "shared" + r"(?:/[\w./-]*)?)")
NOTES_BY_DESCRIPTION = re.compile(
    r"\b(?:ProxyDR|HIER) reference,? section \d|\breference section \d", re.IGNORECASE
)

# --- (c) bare codes ------------------------------------------------------------------------

NOTE_CODE = re.compile(r"\b[HQSA]\d{1,2}\b")
# Real names that contain such a code.
CODE_ALLOWED = re.compile(
    r"Audi S4"  # a Cars196 class (the car model)
    r"|Amazon S3"  # the storage service
)


@cache
def _text_files() -> tuple[tuple[str, str], ...]:
    """(path relative to the root, text) of every text file git lists and the disk holds."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout ({error})")
    files = []
    for name in sorted(set(listed.decode().split("\0")) - {""}):
        path = ROOT / name
        if not path.is_file():  # listed, but deleted or renamed in the working tree
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return tuple(files)


def _lines(text: str):
    return enumerate(text.splitlines(), start=1)


def _prose_lines(name: str, text: str):
    """(line number, text) of what a reader reads: for Python, its comments and strings (the
    names of variables are code, not citations); for any other file, every line."""
    if not name.endswith(".py"):
        yield from _lines(text)
        return
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        yield from _lines(text)
        return
    prose = {tokenize.COMMENT, tokenize.STRING}
    prose |= {getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for token in tokens:
        if token.type in prose:
            for offset, line in enumerate(token.string.splitlines()):
                yield token.start[0] + offset, line


def _expansions(path: str) -> list[str]:
    """The path with every `{a,b}` alternative expanded."""
    match = ALTERNATIVES.search(path)
    if match is None:
        return [path]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in _expansions(path[: match.start()] + choice + path[match.end() :])
    ]


def _exists(path: str) -> bool:
    for candidate in _expansions(path):
        pattern = PLACEHOLDER.sub("*", candidate)
        if any(char in pattern for char in "*?["):
            if next(ROOT.glob(pattern), None) is not None:
                return True
        elif (ROOT / pattern).exists():
            return True
    return False


def _path_allowed(name: str, path: str) -> bool:
    if name == SELF:  # the lists above, which may name files that have moved since
        return any(path == allowed for _, allowed, _ in PATH_ALLOWED)
    return any(
        fnmatch.fnmatch(name, files) and fnmatch.fnmatch(path, allowed)
        for files, allowed, _ in PATH_ALLOWED
    )


def _inside_repository(name: str, reference: str) -> bool:
    """Whether `reference`, read from file `name` (relative to that file, as a Markdown link
    is, or to the root), is a file or folder inside the repository."""
    root = ROOT.resolve()
    for base in (ROOT / name).parent, ROOT:
        target = (base / reference).resolve()
        if target.is_relative_to(root) and target.exists():
            return True
    return False


def _report(what: str, offenders: list[str]) -> str:
    return f"{len(offenders)} {what}:\n" + "\n".join(offenders)


def test_paths_of_the_repository_exist():
    offenders = []
    for name, text in _text_files():
        for number, line in _lines(text):
            for match in REPO_PATH.finditer(line):
                path = match.group(1).rstrip(".,:;")
                if path and not _exists(path) and not _path_allowed(name, path):
                    offenders.append(f"{name}:{number}: {path}")
    assert not offenders, _report("paths that name nothing in the repository", offenders)


def test_notes_outside_the_repository_are_not_cited():
    offenders = []
    for name, text in _text_files():
        if not any(p.search(text) for p in (NOTE_FILE, NOTES_FOLDER, NOTES_BY_DESCRIPTION)):
            continue
        for number, line in _lines(text):
            for pattern in (NOTE_FILE, NOTES_FOLDER):
                for match in pattern.finditer(line):
                    if not _inside_repository(name, match.group(1)):
                        offenders.append(f"{name}:{number}: {match.group(1)}")
            for match in NOTES_BY_DESCRIPTION.finditer(line):
                offenders.append(f"{name}:{number}: {match.group(0)}")
    offenders = list(dict.fromkeys(offenders))  # a path into the notes' folder matches twice
    assert not offenders, _report(
        "citations of notes outside the repository (cite the paper, the official code or "
        "docs/methods/ instead)",
        offenders,
    )


def test_no_bare_note_codes():
    offenders = []
    for name, text in _text_files():
        if not NOTE_CODE.search(CODE_ALLOWED.sub("", text)):
            continue  # the common case, without tokenizing
        for number, line in _prose_lines(name, text):
            masked = CODE_ALLOWED.sub(lambda allowed: " " * len(allowed.group()), line)
            for match in NOTE_CODE.finditer(masked):
                offenders.append(f"{name}:{number}: {match.group()} in {line.strip()!r}")
    assert not offenders, _report(
        "bare note codes (cite the paper, the official code or docs/methods/ instead)",
        offenders,
    )
