"""Rendering a report: a notebook executed with its parameters into .ipynb and .html, or nothing when a cell fails."""

import json
import subprocess
import sys

from tests.conftest import REPO


def notebook(path, *cells: str) -> None:
    code = [
        {
            "cell_type": "code",
            "id": f"c{i}",
            "metadata": {"tags": ["parameters"]} if i == 0 else {},
            "execution_count": None,
            "outputs": [],
            "source": src,
        }
        for i, src in enumerate(cells)
    ]
    book = {
        "cells": code,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(book))


def render(tmp_path, name: str, *params: str) -> subprocess.CompletedProcess:
    args = ["--notebooks", str(tmp_path / "notebooks"), "--reports", str(tmp_path / "reports")]
    return subprocess.run(
        [sys.executable, "-m", "selenc.report", name, *args, *params], capture_output=True, text=True, cwd=REPO
    )


def test_a_report_runs_with_its_parameters_and_a_failing_cell_leaves_nothing(tmp_path):
    (tmp_path / "notebooks").mkdir()
    notebook(tmp_path / "notebooks" / "demo.ipynb", 'arch = "lenet"\nratio = 0.1', "print(f'{arch} at {ratio * 2}')")
    done = render(tmp_path, "demo", "--name", "demo_cnn", "-p", "arch", "cnn", "-p", "ratio", "0.25")
    assert done.returncode == 0, done.stderr[-2000:]
    executed = json.loads((tmp_path / "reports" / "demo_cnn.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "cnn at 0.5" in printed  # yaml-typed parameters: a string and a float
    assert "cnn at 0.5" in (tmp_path / "reports" / "demo_cnn.html").read_text()

    notebook(tmp_path / "notebooks" / "demo.ipynb", 'arch = "lenet"', "raise RuntimeError('broken cell')")
    failed = render(tmp_path, "demo", "--name", "demo_cnn")
    assert failed.returncode == 1 and "broken cell" in failed.stderr and "no report written" in failed.stderr
    assert not list((tmp_path / "reports").glob("demo_cnn.*"))  # the older report is gone too
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]  # no temporary left
