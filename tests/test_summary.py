"""Display (hpo.summary, hpo.progress): tables and lines as a user reads them."""

from __future__ import annotations

import io
import re
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from rich.console import Console

from hpo.progress import StudyBars
from hpo.spec import load_spec
from hpo.storage.backend import open_storage
from hpo.storage.stored import KIND, SPEC, TASK, Leaderboard
from hpo.summary import best_line, best_lines, fmt_mapping, leaderboard_table, trials_table

BOARD: dict[str, Any] = {
    "method": "greedy",
    "metric": "accuracy",
    "higher_is_better": True,
    "loss": "log_loss",
    "rows": [
        {"name": "nn#2", "kind": "nn", "trial": 2, "weight": 1.0, "val_loss": 0.2,
         "val_metric": 0.9412345, "test_metric": 0.93},
        {"name": "ensemble (average)", "kind": "ensemble", "trial": None, "weight": None,
         "val_loss": 0.19, "val_metric": 0.95, "test_metric": 0.955},
        {"name": "ensemble (greedy)", "kind": "ensemble", "trial": None, "weight": None,
         "val_loss": 0.18, "val_metric": 0.952, "test_metric": 0.958},
    ],
}  # fmt: skip


def text(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(renderable)
    return console.export_text()


def gbm_study(write_spec, n_trials: int = 3) -> optuna.Study:
    spec, _ = load_spec(write_spec())
    study = optuna.create_study(study_name="tiny-gbm", storage=open_storage())
    study.set_user_attr(SPEC, spec.model_dump(mode="json"))
    study.set_user_attr(KIND, "gbm")
    study.set_user_attr(TASK, "multiclass")
    study.set_metric_names(["val_log_loss"])
    dists = {"max_depth": IntDistribution(2, 4), "learning_rate": FloatDistribution(1e-3, 0.3)}
    for i in range(n_trials):
        study.add_trial(
            optuna.trial.create_trial(
                params={"max_depth": 2 + i % 3, "learning_rate": 0.0123456},
                distributions=dists,
                value=0.5 + i / 10,
                user_attrs={
                    "n_estimators_used": 11 + i,
                    "val_accuracy": 0.9694444537162781,
                    "test_accuracy": 0.95,
                    "train_seconds": 0.31,
                    "architecture": f"xgboost {11 + i} rounds, depth {2 + i % 3}",
                },
            )
        )
    return study


def test_a_gbm_table_has_gbm_columns_and_counts_its_rows(write_spec) -> None:
    shown = text(trials_table(gbm_study(write_spec), top=5))
    header = next(line for line in shown.splitlines() if "val_log_loss" in line)
    assert re.findall(r"\b(rounds|depth|lr)\b", header) == ["rounds", "depth", "lr"]
    assert "epochs" not in header and "optimizer" not in header
    assert shown.startswith("tiny-gbm: best 3 trials")  # 3 rows, not "best 5"
    assert re.search(r"│\s+0\s+│\s+0\.5000\s+│\s+0\.9694\s+│\s+0\.9500\s+│\s+11\s+│\s+2\s+│", shown)


def test_best_lines_round_and_show_no_python_dict(write_spec) -> None:
    study = gbm_study(write_spec)
    line = best_line(study, study.best_trial)
    assert line == "Best trial #0: val_log_loss 0.5000 (val_accuracy 0.9694, test_accuracy 0.9500)"
    summary = {
        "number": 0,
        "value": 0.5,
        "objective": "val_log_loss",
        "architecture": "a",
        "metrics": {"val_accuracy": 0.9694444537162781},
        "params": {"max_depth": 2, "learning_rate": 0.0012345, "optimizer": "adam"},
    }
    lines = best_lines("tiny-gbm", summary)
    assert lines[1] == "  metrics: val_accuracy 0.9694"
    assert lines[3] == "  params: max_depth 2, learning_rate 0.001234, optimizer adam"
    assert not any("{" in line for line in lines)
    assert fmt_mapping({"a": 1.23456789, "b": True}) == "a 1.2346, b True"
    assert fmt_mapping({"l2": 7.0132e-05, "x": 1.0}, significant=True) == "l2 7.013e-05, x 1"


def test_the_leaderboard_title_says_how_to_export_the_chosen_ensemble() -> None:
    board = Leaderboard.model_validate(BOARD)
    as_spec = text(leaderboard_table("tiny", board, "greedy"))
    assert "(* greedy ensemble; `hpo export` writes it)" in as_spec
    assert "ensemble (greedy) *" in as_spec and "0.9412" in as_spec and "0.9412345" not in as_spec
    other = board.model_copy(update={"method": "average"})
    shown = text(leaderboard_table("tiny", other, "greedy"))
    assert "(* average ensemble; `hpo export --method average` writes it)" in shown
    assert "ensemble (average) *" in shown


def test_bars_show_pruned_trials_an_eta_and_start_each_clock_with_its_study() -> None:
    storage = open_storage()
    study = optuna.create_study(study_name="t-nn", storage=storage)
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    bars = StudyBars({"t-nn": 4, "t-gbm": 4}, console, storage=storage)
    nn, gbm = bars.tasks["t-nn"], bars.tasks["t-gbm"]
    study.optimize(lambda t: 1.0, n_trials=1, callbacks=[bars.on_trial])
    study.optimize(_pruned, n_trials=1, callbacks=[bars.on_trial])
    tasks = {t.id: t for t in bars.progress.tasks}
    assert tasks[nn].completed == 2 and tasks[nn].started
    assert not tasks[gbm].started  # the GBM study has not begun: its clock waits
    shown = text(bars.progress.make_tasks_table(bars.progress.tasks))
    nn_line = next(line for line in shown.splitlines() if "t-nn" in line)
    assert "2/4" in nn_line and "1 pruned" in nn_line and "eta" in nn_line
    assert "best 1.0000" in nn_line
    bars.study_started("t-gbm")
    assert {t.id: t for t in bars.progress.tasks}[gbm].started


def _pruned(trial: optuna.Trial) -> float:
    raise optuna.TrialPruned


def test_without_a_terminal_each_trial_is_a_line_unless_quiet() -> None:
    storage = open_storage()
    study = optuna.create_study(study_name="t-nn", storage=storage)
    for quiet, expected in ((False, "t-nn trial 0 complete 1.0000 best 1.0000\n"), (True, "")):
        out = io.StringIO()
        with StudyBars({"t-nn": 2}, Console(file=out), quiet=quiet) as bars:
            study.optimize(lambda t: 1.0, n_trials=1, callbacks=[bars.on_trial])
        assert out.getvalue() == expected
        storage.delete_study(storage.get_study_id_from_name("t-nn"))
        study = optuna.create_study(study_name="t-nn", storage=storage)
