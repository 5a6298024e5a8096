"""The trial cache: finished results stored as JSON under a hash of everything they depend on.

A key hashes a JSON-able description of the computation, which callers build from the params it reads, the data's
content (`data.data_fingerprint`), the library versions and `source_fingerprint` of the module that computes it:
the sha256 of the source of every `selenc` module that module imports, directly or not, found by reading their import
statements (function-local ones included). Editing a module a trial runs invalidates its entries; editing one it does
not import (a plot) does not.

Only finished results are stored, each beside the sha256 of its content. An entry that cannot be read, does not fit its
schema or no longer matches its hash (edited by hand) is reported with a warning naming the file, removed and treated
as missing, so it is recomputed. Writes are atomic (a temporary file, then a rename): a killed run never
leaves half an entry.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

PACKAGE = "selenc"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
M = TypeVar("M", bound=BaseModel)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def cache_dir() -> Path:
    """Where cached results live: `$SELENC_CACHE_DIR` or `<repo>/.selenc-cache`."""
    return Path(os.environ.get("SELENC_CACHE_DIR", REPO_ROOT / ".selenc-cache"))


# --- what a computation depends on ------------------------------------------------------------------------------
def _module_file(name: str) -> Path | None:
    """The source file of `selenc` module `name` (a package's __init__.py), None if it is no selenc module."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(name: str, path: Path) -> set[str]:
    """Every selenc module `path` imports (at any depth of its code), with the packages they sit in."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            targets = [base or ""] + [f"{base}.{alias.name}" for alias in node.names]  # `from selenc import data`
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[: i + 1]) for i in range(len(parts)) if _module_file(".".join(parts[: i + 1]))}
    return found


def module_closure(name: str) -> list[str]:
    """`name` and every selenc module it imports, transitively, sorted."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        path = _module_file(current)
        if current in seen or path is None:
            continue
        seen.add(current)
        todo.extend(_imports(current, path) - seen)
    return sorted(seen)


@functools.cache
def source_fingerprint(name: str) -> str:
    """sha256 of the source of `name` and of every selenc module it imports."""
    h = hashlib.sha256()
    for module in module_closure(name):
        h.update(module.encode() + b"\0" + _module_file(module).read_bytes() + b"\0")
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    """sha256 of a file outside selenc that results depend on: a model builder's (`models.builder_file`), so that
    editing a user's model file changes its trials' keys."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def key_of(description: dict) -> str:
    """The cache key of a computation described by a JSON-able dict."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


# --- the store ---------------------------------------------------------------------------------------------------
def content_hash(entry: dict) -> str:
    """sha256 of an entry's canonical JSON: what a stored entry must still hash to when it is read back."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


class Store:
    """A folder of JSON entries, each stored with the hash of its content and validated against a pydantic schema on
    read: an entry edited by hand (a PSNR changed to another valid number) no longer matches its hash and is
    recomputed, never trusted."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str, schema: type[M]) -> M | None:
        """The entry under `key`, or None when it is absent, unreadable, not a valid `schema`, or its content no
        longer matches its stored hash (then removed with a warning naming the file)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            stored = json.loads(text)
            if not isinstance(stored, dict) or set(stored) != {"content_sha256", "entry"}:
                raise ValueError("not an entry with its content hash")
            if content_hash(stored["entry"]) != stored["content_sha256"]:
                raise ValueError("its content no longer matches its hash (edited after it was stored?)")
            return schema.model_validate(stored["entry"])
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, ValidationError) as exc:
            reason = str(exc).splitlines()[0]
            warnings.warn(f"ignoring cache entry {path} ({reason}); it will be recomputed", stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, entry: BaseModel) -> None:
        """Store `entry` with its content hash, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        content = entry.model_dump()
        stored = {"content_sha256": content_hash(content), "entry": content}
        write_atomic(self.path(key), json.dumps(stored, sort_keys=True))  # inf/nan kept (PSNR)

    def get_or_compute(self, key: str, schema: type[M], compute: Callable[[], M]) -> M:
        """The cached entry, or `compute()` stored under `key`."""
        entry = self.get(key, schema)
        if entry is None:
            entry = compute()
            self.put(key, entry)
        return entry
