"""Shared fixtures: the repo's params, and the four victim models built once per session."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from selenc.config import load_params, parse_params
from selenc.settings import Params

REPO = Path(__file__).resolve().parent.parent
# the update columns of a FedSGD batch-1 row (`grid.update_fields`), for tables built by hand
FEDSGD_B1 = {
    "update_kind": "fedsgd",
    "batch_size": 1,
    "local_steps": 0,
    "local_lr": 0.0,
    "rounds": 1,
    "mask_policy": "fresh",
    "clients": 1,
    "server_lr": 0.0,
}


@pytest.fixture(scope="session")
def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def raw(raw_params) -> dict:
    """A mutable copy of params.yaml's content."""
    return copy.deepcopy(raw_params)


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(REPO / "params.yaml")


def with_changes(raw: dict, **changes) -> Params:
    """params.yaml with dotted keys replaced, e.g. with_changes(raw, **{"update.kind": "fedavg"})."""
    raw = copy.deepcopy(raw)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value
    return parse_params(raw)


@pytest.fixture(scope="session")
def victims(params):
    """The four default models (BERT loads 90 MB of weights: build each once)."""
    from selenc.models import build_victim

    return {arch: build_victim(arch, params) for arch in ("lenet", "cnn", "bert", "gpt2")}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`): small models run
    fastest so, and two threads on a shared 2-core machine run these small ops up to 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
