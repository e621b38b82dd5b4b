"""What fmrilm writes, what it reads from a model folder, and how resumable work is keyed.

Output folders (cohorts, evaluation reports): a command writes its result into a staging folder beside the
target (``.<name>.tmp-XXXXXXXX``, created with the permissions the user's umask gives) and renames it into
place only when complete. An existing target is used only when it is empty, or when it is a complete earlier
result of the same kind that holds nothing else (then only with ``overwrite``): the old result is moved aside,
the new one renamed in, and the old one removed last, entry by entry, so that a failure at any moment leaves
either the old result or the new one whole, and nothing the command did not write is ever deleted.

Model folders are data, never code: every JSON file is checked to parse, every safetensors file to be whole,
paths named inside the folder must stay inside it, and transformers is always called with
``trust_remote_code=False`` (see `model_folder_errors`).

Resumable work is keyed on content: `content_hash` hashes the files a result depends on (a model's weights and
configs, a cohort's dataset), so replacing them in place starts the work afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from fmrilm.errors import FmriInputError


# ------------------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class OutputKind:
    """A kind of result folder: the file a complete one holds, and every top-level entry its command writes."""

    name: str
    marker: str
    entries: frozenset[str]


COHORT_OUTPUT = OutputKind(
    "cohort", "cohort.json", frozenset({"cohort.json", "dataset", "nifti", "fmriprep"})
)
REPORT_OUTPUT = OutputKind(
    "evaluation report", "report.json", frozenset({"report.json", "report.md", "plots", "split.json"})
)
INSTRUCTIONS_OUTPUT = OutputKind(
    "instruction set", "instructions.json", frozenset({"instructions.json", "dataset", "tasks"})
)
#: A corpus is built inside its folder (resumable shards); ``reference.json`` is written first, so it marks a
#: corpus folder whether finished (``corpus.json``) or still being built.
CORPUS_OUTPUT = OutputKind(
    "descriptor corpus",
    "reference.json",
    frozenset({"reference.json", "build.json", "feature_names.json", "shards", "dataset", "corpus.json"}),
)


def _new(flag: str, adjective: str = "new") -> str:
    """'a new --out folder' for a flag, 'a new folder' for a description such as 'the output folder'."""
    words = " ".join(w for w in (adjective, flag if flag.startswith("--") else "", "folder") if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def _a(noun: str) -> str:
    """'a cohort', 'an evaluation report'."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _folder_names(out: Path, flag: str) -> list[str]:
    """The entries of an output folder ([] when it does not exist); a file or an unreadable folder is refused."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise FmriInputError(f"{flag} exists and is a file, not a folder", file=out, fix=f"give {_new(flag)}")
    try:
        return sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise FmriInputError(
            f"Cannot read {flag} ({exc.strerror or exc})", file=out, fix=f"give {_new(flag)}"
        ) from exc


def check_output(
    out: str | PathLike,
    kind: OutputKind,
    *,
    overwrite: bool,
    flag: str = "--out",
    option: str = "--overwrite (overwrite=True in Python)",
) -> bool:
    """Whether ``out`` holds an earlier result to replace; an FmriInputError when it must not be written.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) a complete earlier result of
    ``kind`` holding only the entries its command writes. Anything else is refused, naming what is in the way.
    """
    out = Path(out)
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise FmriInputError(
            f"{flag} is the working folder or a folder holding it, which fmrilm will not replace",
            file=out,
            fix=f"give a new folder for the {kind.name}"
            + (f", e.g. {flag} results/NAME" if flag.startswith("--") else ""),
        )
    if out.is_symlink():
        raise FmriInputError(
            f"{flag} is a symbolic link, so replacing it would not write where it points",
            file=out,
            fix=f"give the real folder, or {_new(flag)}",
        )
    names = _folder_names(out, flag)
    if not names:
        return False
    if kind.marker not in names:
        raise FmriInputError(
            f"{flag} exists and holds files that are not {_a(kind.name)} written by fmrilm ({_listing(names)}); "
            "fmrilm never deletes what it did not write",
            file=out,
            fix=f"give {_new(flag, 'new or empty')}",
        )
    extra = [n for n in names if n not in kind.entries]
    if extra:
        raise FmriInputError(
            f"{flag} holds an earlier {kind.name} but also {_listing(extra)}, which this command did not write "
            "and would not delete",
            file=out,
            fix=f"move {_listing(extra)} out of the folder, or give {_new(flag)}",
        )
    if not overwrite:
        raise FmriInputError(
            f"{flag} already holds {_a(kind.name)}",
            file=out,
            fix=f"give {_new(flag)}, or pass {option} to replace it (the old one is removed only after "
            "the new one is complete)",
        )
    return True


def check_run_folder(
    out: str | PathLike,
    markers: tuple[str, ...],
    what: str,
    *,
    resume: bool,
    overwrite: bool,
    flag: str = "--out",
    allowed: frozenset[str] | None = None,
) -> bool:
    """Whether ``out`` holds an earlier run of this command (one of ``markers`` is in it); an FmriInputError when
    the run must not write there.

    For commands that work inside their output folder (training runs that checkpoint and resume): allowed are a
    path that does not exist, an empty folder, and a folder holding one of ``markers`` (this command's own
    earlier run) when ``resume`` or ``overwrite`` says what to do with it. A non-empty folder without a marker
    is never written into, whatever the flags; nor, when ``allowed`` names every entry the command writes, one
    that also holds anything else (hidden names are the command's own temporary files).
    """
    out = Path(out)
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise FmriInputError(
            f"{flag} is the working folder or a folder holding it, which fmrilm will not write {_a(what)} into",
            file=out,
            fix=f"give a new folder, e.g. {flag} runs/NAME",
        )
    names = _folder_names(out, flag)
    if not names:
        return False
    if not any(m in names for m in markers):
        raise FmriInputError(
            f"{flag} exists and holds files that are not {_a(what)} written by fmrilm ({_listing(names)}); "
            "fmrilm never writes into or deletes what it did not write",
            file=out,
            fix=f"give {_new(flag, 'new or empty')}",
        )
    extra = [n for n in names if allowed is not None and n not in allowed and not n.startswith(".")]
    if extra:
        raise FmriInputError(
            f"{flag} holds an earlier {what} but also {_listing(extra)}, which this command did not write",
            file=out,
            fix=f"move {_listing(extra)} out of the folder, or give {_new(flag)}",
        )
    if not (resume or overwrite):
        raise FmriInputError(
            f"{flag} already holds {_a(what)}",
            file=out,
            fix="pass --resume to continue it, --overwrite to start it afresh (its finished result is replaced "
            f"only when the new one is written), or give {_new(flag)}",
        )
    return True


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"


def make_stage(out: str | PathLike, flag: str = "--out") -> Path:
    """A new empty folder beside ``out`` (hidden, umask permissions) to write the result into."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            stage = _sibling(out, "tmp")
            try:
                os.mkdir(stage)  # mode 0o777 minus the umask, like any folder the user makes
                return stage
            except FileExistsError:
                continue
    except OSError as exc:
        raise FmriInputError(
            f"Cannot write beside {flag} ({exc.strerror or exc})",
            file=out.parent,
            fix=f"give {_new(flag, '')} in a place you can write to",
        ) from exc
    raise FmriInputError("Cannot create a staging folder", file=out.parent, fix=f"give {_new(flag, 'other')}")


def publish(
    stage: str | PathLike, out: str | PathLike, kind: OutputKind, *, overwrite: bool, flag: str = "--out"
) -> Path:
    """Move the complete ``stage`` to ``out``; an earlier result is moved aside first and removed last."""
    stage, out = Path(stage), Path(out)
    replacing = check_output(out, kind, overwrite=overwrite, flag=flag)  # again: the folder may have changed
    if not replacing:
        try:
            os.rename(stage, out)  # an empty folder at ``out`` is replaced; a non-empty one makes this fail
        except OSError as exc:
            raise FmriInputError(
                f"Cannot move the new {kind.name} into place ({exc.strerror or exc})",
                file=out,
                fix=f"give {_new(flag)}",
            ) from exc
        return out
    aside = _sibling(out, "old")
    try:
        os.rename(out, aside)
    except OSError as exc:
        raise FmriInputError(
            f"Cannot move the earlier {kind.name} aside ({exc.strerror or exc})",
            file=out,
            fix=f"check that you can write in the folder holding it, or give {_new(flag)}",
        ) from exc
    try:
        os.rename(stage, out)
    except BaseException:
        os.rename(aside, out)  # the old result goes back where it was
        raise
    remove_owned(aside, kind)
    return out


def remove_owned(folder: Path, kind: OutputKind) -> None:
    """Remove the entries of an earlier result that its command wrote, then the folder if nothing else is left."""
    try:
        for name in sorted(kind.entries):
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        folder.rmdir()
    except OSError as exc:
        warnings.warn(
            f"The new {kind.name} is in place, but the earlier one, moved to '{folder}', could not be removed "
            f"completely ({exc.strerror or exc}); remove that folder yourself",
            UserWarning,
            stacklevel=3,
        )


def discard_stage(stage: Path) -> None:
    """Remove a staging folder this process created (never anything else)."""
    shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staged_output(
    out: str | PathLike, kind: OutputKind, *, overwrite: bool, flag: str = "--out"
) -> Iterator[Path]:
    """``with staged_output(out, kind, overwrite=...) as stage:`` write into ``stage``; published on success."""
    check_output(out, kind, overwrite=overwrite, flag=flag)
    stage = make_stage(out, flag)
    try:
        yield stage
        publish(stage, out, kind, overwrite=overwrite, flag=flag)
    except BaseException:
        discard_stage(stage)
        raise


def file_mode(base: int = 0o666) -> int:
    """``base`` minus the process umask: the permissions a plain ``open(path, 'w')`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


# -------------------------------------------------------------------------------------------- model folders
def inside(folder: str | PathLike, name: str, what: str, file: str | PathLike | None = None) -> Path:
    """``folder / name`` when it stays inside ``folder``; an FmriInputError when ``name`` leads out of it."""
    folder = Path(folder)
    text = str(name)
    candidate = folder / text
    if (
        not text
        or Path(text).is_absolute()
        or ".." in Path(text).parts
        or not _within(candidate.resolve(), folder.resolve())
    ):
        raise FmriInputError(
            f"{what} is '{text}', which leads outside the model folder; fmrilm reads only files inside it",
            file=file if file is not None else folder,
            fix="name a subfolder of the model folder (e.g. 'fmri_tokenizer'), or re-save the model with "
            "FmriLM.save_pretrained",
        )
    return candidate


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_model_folder(folder: str | PathLike) -> None:
    """Every JSON file parses and every safetensors file is whole, or one FmriInputError naming the file."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise FmriInputError(
                    f"The model folder's JSON file is not valid JSON (truncated or edited by hand?): {exc}",
                    file=path,
                    fix="re-download or re-save the model (FmriLM.save_pretrained)",
                ) from exc
        elif path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
            if problem:
                raise FmriInputError(
                    f"The weights file is corrupt or truncated ({problem})",
                    file=path,
                    fix="re-download or re-save the model (FmriLM.save_pretrained)",
                )


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be whole (header unreadable, data shorter than it says), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"the header says {length} bytes but the file has {size - 8} after it"
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"unreadable header: {exc}"
    if not isinstance(header, dict):
        return "the header is not a table of tensors"
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    need = 8 + length + max(ends, default=0)
    if size < need:
        return f"{size} bytes but its tensors need {need}"
    return None


@contextlib.contextmanager
def model_folder_errors(folder: str | PathLike, what: str = "model") -> Iterator[None]:
    """Turn what transformers / safetensors raise on a bad model folder into one FmriInputError sentence."""
    try:
        yield
    except FmriInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        text = " ".join(str(exc).split())
        if "trust_remote_code" in text or "custom code" in text:
            raise FmriInputError(
                f"The {what} folder needs its own Python code to load (an auto_map in config.json or "
                "tokenizer_config.json), and fmrilm never runs code from a model folder",
                file=folder,
                fix="use a model whose architecture transformers supports natively, or remove auto_map after "
                "checking the folder",
            ) from exc
        raise FmriInputError(
            f"Cannot load the {what} ({type(exc).__name__}: {text[:300]})",
            file=folder,
            fix="check that the folder was written by save_pretrained and is complete (re-download or re-save it)",
        ) from exc


HUB_ID_HINT = (
    "a Hugging Face hub id is written ORG/NAME and loads only when it is in the local cache (offline)"
)


def looks_like_hub_id(text: str, *, allow_bare: bool = False) -> bool:
    """``ORG/NAME`` meant as a hub id: one slash, no path syntax, and ``ORG`` is not a local folder.

    ``allow_bare`` also accepts a plain ``NAME`` (old hub ids such as ``gpt2``) that is not a local path.
    """
    if text.startswith(("/", ".", "~")) or "\\" in text or Path(text).suffix in (".json", ".gguf"):
        return False
    parts = text.split("/")
    if len(parts) == 1 and not allow_bare:
        return False
    if len(parts) > 2 or not all(parts) or Path(parts[0]).exists():
        return False
    return all(c.isalnum() or c in "-_." for c in "".join(parts))


# -------------------------------------------------------------------------------------------- content keys
def content_hash(
    path: str | PathLike, *, skip_hidden: bool = True, skip_prefixes: tuple[str, ...] = ()
) -> str:
    """SHA-256 over the relative names and bytes of every file under ``path`` (or of one file).

    Hidden files and files whose name starts with one of ``skip_prefixes`` (caches) are left out.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        rel = file.name if file == path else file.relative_to(path).as_posix()
        if skip_hidden and any(part.startswith(".") for part in Path(rel).parts):
            continue
        if file.name.startswith(skip_prefixes) and file != path:
            continue
        digest.update(rel.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def cohort_fingerprint(directory: str | PathLike) -> str:
    """Content hash of a cohort folder: ``cohort.json``, the dataset and stored splits (no ``datasets`` caches)."""
    return content_hash(directory, skip_prefixes=("cache-",))


# ------------------------------------------------------------------------------------------- numeric flags
# argparse ``type=`` callables: an impossible value (zero, negative, NaN, infinity) is refused where it enters,
# and argparse prints "argument --FLAG: <the sentence below>", so the message names the flag and the fix.
def _number(text: str, kind: type, what: str, example: str) -> float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}; give e.g. {example}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number; give {what}, e.g. {example}")
    return value


def positive_int(text: str) -> int:
    """A whole number of 1 or more (steps, batch sizes, lengths, draws)."""
    value = _number(text, int, "a whole number of 1 or more", "8")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text}; give e.g. 8")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number of 0 or more (warm-up steps, seeds, k of zero-shot)."""
    value = _number(text, int, "a whole number of 0 or more", "0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of 0 or more, got {text}; give e.g. 0")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (learning rates, seconds)."""
    value = _number(text, float, "a number above 0", "1e-4")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}; give e.g. 1e-4")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number of 0 or more (loss weights: 0 switches a term off)."""
    value = _number(text, float, "a number of 0 or more", "0.5")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text}; give e.g. 0.5")
    return value


def fraction(text: str) -> float:
    """A share strictly between 0 and 1 (test size)."""
    value = _number(text, float, "a share between 0 and 1", "0.2")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a share between 0 and 1 (both excluded), got {text}; give e.g. 0.2"
        )
    return value


def share(text: str) -> float:
    """A share from 0 to 1, both included (of rows, of a batch)."""
    value = _number(text, float, "a share from 0 to 1", "0.5")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}; give e.g. 0.5")
    return value


def probability(text: str) -> float:
    """A share from 0 (included) to 1 (excluded): dropout, a held-out fraction that may be none."""
    value = _number(text, float, "a share from 0 to below 1", "0.1")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to below 1, got {text}; give e.g. 0.1")
    return value
