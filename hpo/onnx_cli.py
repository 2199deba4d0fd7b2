"""The ``hpo`` entry point: ``hpo predict`` on ONNX Runtime without loading the training stack.

``hpo.cli`` imports optuna (and its storages) at start-up; a slim install has neither. So
``hpo predict`` with ``--engine onnx``, or on an install without torch or xgboost, runs
here with numpy and onnxruntime only; every other command goes to :mod:`hpo.cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hpo.ensemble.onnx_runtime import predict_with_engine, use_onnx
from hpo.errors import HpoError

slim = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

# The options of `hpo predict`, here and in hpo.cli.
BundleArg = Annotated[Path, typer.Argument(metavar="DIR", help="Bundle directory (hpo export)")]
OutputOpt = Annotated[Path | None, typer.Option("--output", help="CSV [default: stdout]")]
ProbaOpt = Annotated[bool, typer.Option("--proba", help="Add one probability column per class")]


@slim.command()
def predict(
    bundle: BundleArg,
    input_path: Annotated[Path, typer.Option("--input", help="Raw features: .csv or .npy")],
    output: OutputOpt = None,
    proba: ProbaOpt = False,
    engine: Annotated[str, typer.Option("--engine", help="auto or onnx")] = "auto",
) -> None:
    """Predict with a bundle's model.onnx on ONNX Runtime."""
    try:
        if not predict_with_engine(bundle, input_path, output, proba=proba, engine=engine):
            raise HpoError("--engine native needs torch and xgboost (pip install hpo)")
    except HpoError as e:
        print(f"Error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None


def _slim_predict(args: list[str]) -> bool:
    """Whether the command line is ``hpo predict`` on the ONNX engine (asked for or needed)."""
    if not args or args[0] != "predict":
        return False
    engine = "auto"
    for i, arg in enumerate(args):
        if arg.startswith("--engine="):
            engine = arg.removeprefix("--engine=")
        elif arg == "--engine" and i + 1 < len(args):
            engine = args[i + 1]
    return engine in ("auto", "onnx") and use_onnx(engine)  # type: ignore[arg-type]


def main() -> None:
    args = sys.argv[1:]
    if _slim_predict(args):
        slim(args[1:], prog_name="hpo predict")
        return
    from hpo.cli import main as full_main

    full_main()
