"""Execute a notebook into reports/ with papermill and render it to HTML, atomically.

    python -m selenc.report 02_architecture_sweep --name 02_architecture_sweep_<name> -p arch <name>

The notebook runs into a temporary file; only when every cell succeeded are the executed `.ipynb` and its `.html`
moved to `reports/<name>.*`. A failing cell exits non-zero (so `dvc repro` fails) and removes any earlier report of
that name, so reports/ never shows a stale or half-executed notebook.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def render(notebook: Path, out_dir: Path, name: str, parameters: dict) -> Path:
    """Run `notebook` with `parameters` and write out_dir/name.ipynb and .html; on failure write nothing."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    out_dir.mkdir(parents=True, exist_ok=True)
    final_nb, final_html = out_dir / f"{name}.ipynb", out_dir / f"{name}.html"
    for stale in (final_nb, final_html):
        stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{name}-") as tmp:
        executed = Path(tmp) / f"{name}.ipynb"
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=parameters,
            cwd=str(REPO_ROOT),
            progress_bar=True,
            kernel_name="python3",
        )
        html, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
        (Path(tmp) / f"{name}.html").write_text(html, encoding="utf-8")
        executed.replace(final_nb)
        (Path(tmp) / f"{name}.html").replace(final_html)
    return final_nb


def _value(text: str):
    return yaml.safe_load(text)  # "name" -> str, "0.1" -> float, "[a, b]" -> list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selenc.report", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", help="notebook name in notebooks/ (without .ipynb)")
    parser.add_argument("--name", help="report name (default: the notebook's)")
    parser.add_argument("--notebooks", type=Path, default=REPO_ROOT / "notebooks")
    parser.add_argument("--reports", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="a parameter")
    args = parser.parse_args(argv)
    parameters = {k: _value(v) for k, v in args.p} | {"reports": str(args.reports)}
    try:
        render(args.notebooks / f"{args.notebook}.ipynb", args.reports, args.name or args.notebook, parameters)
    except Exception as exc:  # papermill's PapermillExecutionError names the failing cell and its error
        print(f"error: notebook {args.notebook} failed, no report written: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
