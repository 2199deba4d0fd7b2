"""Print the README's results table (Markdown) from ``benchmarks/results/*.json``.

python benchmarks/make_table.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _machine(m: dict[str, Any]) -> str:
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']}, {m['cores']} cores{gpu}, torch {m['torch']}, {m['date']}"


def trainer_throughput(r: dict[str, Any]) -> list[str]:
    with_reference = "reference_epoch_s" in r["rows"][0]
    lines = [
        f"**Trainer throughput** (`python benchmarks/trainer_throughput.py`; {r['model']}; "
        f"{r['rows_per_epoch']} rows of {r.get('data', 'Fashion-MNIST')} per epoch; "
        f"measured fp32 matmul rate {r['matmul_gflops']} GFLOP/s; {r['device']}; "
        f"{r.get('threads', 'default')} thread(s); 1-min load average before and after "
        f"{r.get('load_average_1min', '?')}; plain: "
        "`foreach=False, fused=False`, fast: what hpo uses, fused where PyTorch has it)",
        "",
        "| batch | plain epoch (s) | fast epoch (s) | fast speed-up | "
        + ("reference epoch (s) | hpo vs reference | " if with_reference else "")
        + "hpo GFLOP/s | of matmul rate |",
        "|---:|---:|---:|---:|" + ("---:|---:|" if with_reference else "") + "---:|---:|",
    ]
    for row in r["rows"]:
        reference = f"{row['reference_epoch_s']} | {row['speedup']}x | " if with_reference else ""
        lines.append(
            f"| {row['batch']} | {row['plain_epoch_s']} | {row['fast_epoch_s']} | "
            f"{row['fast_speedup']}x | {reference}{row['hpo_gflops']} | "
            f"{row['hpo_fraction_of_matmul']:.0%} |"
        )
    return lines


def optuna_overhead(r: dict[str, Any]) -> list[str]:
    if "runs" not in r:  # written before the runs compared checkouts
        r = {**r, "runs": [{"hpo": "", **r}]}
    keys = [k for k in r["runs"][0]["rows"][0] if k.startswith("ms_per_trial_at_")]
    steps = [k.rsplit("_", 1)[1] for k in keys]
    if r.get("beside_training"):
        title = (
            "**Optuna overhead beside training** (`python benchmarks/optuna_overhead.py "
            "--training`; as above, but each trial also trains on one thread for as long as "
            "the median digits trial: the ms a trial takes beyond its training)"
        )
    else:
        title = (
            "**Optuna overhead** (`python benchmarks/optuna_overhead.py`; an hpo NN trial of "
            "the digits study through the worker loop, training replaced by a made-up curve)"
        )
    lines = [
        title,
        "",
        "| hpo | storage | digits median trial (ms) | "
        + " | ".join(
            f"ms/trial at {n} | of which TPE | commits at {n} | share at {n}" for n in steps
        )
        + " |",
        "|---|---|" + "---:|" * (1 + 4 * len(steps)),
    ]
    for run in r["runs"]:
        for row in run["rows"]:
            cells = []
            for n in steps:
                share = row[f"ms_per_trial_at_{n}"] / run["digits_median_trial_ms"]
                commits = row.get(f"commits_per_trial_at_{n}", "")
                sampler = row.get(f"sampler_ms_per_trial_at_{n}", "")
                cells += [str(row[f"ms_per_trial_at_{n}"]), str(sampler), str(commits)]
                cells.append(f"{share:.1%}")
            lines.append(
                f"| {run['hpo']} | {row['storage']} | {run['digits_median_trial_ms']} | "
                + " | ".join(cells)
                + " |"
            )
    return lines


def trials_per_hour(r: dict[str, Any]) -> list[str]:
    lines = [
        f"**Trials per hour** (`python benchmarks/trials_per_hour.py --nn-trials {r['nn_trials']} "
        f"--gbm-trials {r['gbm_trials']}`; `hpo run` end to end on {r['storage']}, median of "
        f"{r['repeats']})",
        "",
        "| workload | hpo | wall (s) | NN trials/h | NN speed-up | GBM trials/h | GBM speed-up "
        "| same trials |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        same = {True: "yes", False: "no"}.get(row.get("same_trials"), "")
        lines.append(
            f"| {row['workload']} | {row['checkout']} | {row['wall_s']} | "
            f"{row['nn_trials_per_hour']:,} | {row.get('nn_speedup', '')} | "
            f"{row['gbm_trials_per_hour']:,} | {row.get('gbm_speedup', '')} | {same} |"
        )
    return lines


def search_efficiency(r: dict[str, Any]) -> list[str]:
    lines = [
        "**Search efficiency** "
        f"(`python benchmarks/search_efficiency.py --budget {r['budget_s']:g}`; "
        f"Fashion-MNIST, {r['epochs']} epochs per trial, same space, {r['budget_s']:g} s each)",
        "",
        "| search | complete | pruned | best val acc | its test acc | s to 0.88 val |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['search']} | {row['trials_complete']} | {row['trials_pruned']} | "
            f"{row['best_val_accuracy']} | {row['test_accuracy_of_best']} | "
            f"{row['seconds_to_0.88_val'] or 'not reached'} |"
        )
    return lines


def end_to_end(r: dict[str, Any]) -> list[str]:
    rows = r["rows"]
    many = len(rows) > 1  # repeated runs (--append): one line each, with their date
    lines = [
        f"**End to end** (`python benchmarks/end_to_end.py --budget {rows[0]['budget_s']:g}`; "
        f"{r['spec']}: NN study, GBM study, ensemble in one `hpo run`"
        + (f"; {len(rows)} runs)" if many else ")"),
        "",
        ("| run " if many else "")
        + "| wall (s) | peak RSS (MiB) | best MLP test | best XGBoost test "
        "| average ensemble test | greedy ensemble test | trials (NN; XGBoost) |",
        ("|---" if many else "") + "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        trials = "; ".join(
            f"{c['COMPLETE']} complete, {c['PRUNED']} pruned" for c in row["trials"].values()
        )
        lines.append(
            (f"| {row.get('date', '')} " if many else "")
            + f"| {row['wall_s']} | {row['peak_rss_mib']} | {row['best_nn_test']} | "
            f"{row['best_gbm_test']} | {row['ensemble_average_test']} | "
            f"{row['ensemble_greedy_test']} | {trials} |"
        )
    return lines


def ensemble_weighting(r: dict[str, Any]) -> list[str]:
    lines = [
        "**Ensemble weighting** (`python benchmarks/ensemble_weighting.py <kept runs>`; the "
        f"same members of {len(r['runs'])} kept runs on {r['datasets']} datasets, weighted "
        "on validation; test metric against the plain average's, relative, mean over a "
        "dataset's runs, then over datasets)",
        "",
        "| weighting | vs average | datasets better | level | worse |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['weighting']} | {row['vs_average_pct']:+.3f}% | {row['better']} | "
            f"{row['level']} | {row['worse']} |"
        )
    return lines


def workers_scaling(r: dict[str, Any]) -> list[str]:
    lines = [
        f"**Workers** (`{r['command']}`; {r['study']})",
        "",
        "| configuration | trials per hour |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {rate:,.0f} |" for name, rate in r["trials_per_hour"].items()]
    lines += [
        "",
        f"Speed-up of 2 workers: {r['speedup_vs_1_worker']}x one worker with 2 threads, "
        f"{r['speedup_vs_1_worker_1_thread']}x one worker with 1 thread.",
    ]
    return lines


def busy_machine(r: dict[str, Any]) -> list[str]:
    lines = [
        f"**Busy machine** (`python benchmarks/busy_machine.py --repeats {r['repeats']}`; "
        "seconds of one fixed trial, median of the repeats, quiet and beside one process "
        "spinning on a core)",
        "",
        "| workload | machine | threads setting | threads | seconds | vs OMP_NUM_THREADS=1 |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['workload']} | {row['machine']} | {row['setting']} | {row['threads']} | "
            f"{row['seconds']} | {row['vs_one_thread']}x |"
        )
    return lines


def predict_memory(r: dict[str, Any]) -> list[str]:
    lines = [
        f"**Predict memory** (`python benchmarks/predict_memory.py`; `hpo predict --proba` on "
        f"a {r['features']}-column CSV, a {r['task'].split()[0]} bundle; before: {r['before']}, "
        "which read the whole file)",
        "",
        "| rows | CSV (MB) | peak RSS before (MB) | peak RSS now (MB) | s before | s now "
        "| same output |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['rows']:,} | {row['csv_mb']} | {row['before_peak_rss_mb']} | "
            f"{row['after_peak_rss_mb']} | {row['before_s']} | {row['after_s']} | "
            f"{'yes' if row['same_output'] else 'no'} |"
        )
    return lines


def onnx_latency(r: dict[str, Any]) -> list[str]:
    lines = [
        "**ONNX Runtime against the native bundle** (`python benchmarks/onnx_latency.py`; "
        f"one row: median of {r['repeats']} calls; 10,000 rows in one call, best of 5)",
        "",
        "| ensemble | engine | one row (ms) | rows/s at 10,000 | max prob. difference |",
        "|---|---|---:|---:|---:|",
    ]
    for name in ("digits", "fashion_mnist"):
        if name not in r:
            continue
        for engine in ("native", "onnx"):
            e = r[name][engine]
            diff = f"{r[name]['max_abs_proba_diff']:.1e}" if engine == "onnx" else ""
            lines.append(
                f"| {name} | {engine} | {e['one_row_ms_median']:.3f} | "
                f"{e['rows_per_s_10k']:,.0f} | {diff} |"
            )
    size = r["installed_mb"]
    lines += [
        "",
        f"Installed size: the slim set (onnxruntime, numpy, typer and what they need) "
        f"{size['slim']:.0f} MB, the full install {size['full']:.0f} MB.",
    ]
    return lines


def generic(r: dict[str, Any]) -> list[str]:
    """Any other result: its rows as a table, keys as columns."""
    rows = r.get("rows", [])
    if not rows:
        return []
    keys = list(rows[0])
    lines = [f"**{r['benchmark']}** (`python benchmarks/{r['benchmark']}.py`)", ""]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return lines


TABULAR_MODELS = {
    "realmlp_td": "RealMLP-TD",
    "hgb": "HistGB",
    "xgb_default": "XGBoost default",
    "linear": "linear",
    "hpo_mlp": "hpo MLP",
    "hpo_xgb": "hpo XGBoost",
    "hpo_ensemble": "hpo ensemble",
    "hpo_ensemble_average": "hpo average ens.",
}


def _score(value: float, metric: str) -> str:
    if metric == "accuracy":
        return f"{value:.4f}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _mean_ranks(
    models: list[str], datasets: list[str], means: dict[str, dict[str, float]], metric: dict
) -> dict[str, Any]:
    """Each model's mean rank (1 best; ties share the mean of their places) over
    ``datasets``, with their count under ``n``; empty without datasets."""
    if not datasets:
        return {}
    ranks: dict[str, list[float]] = {m: [] for m in models}
    for d in datasets:
        sign = -1 if metric[d] == "accuracy" else 1
        ordered = sorted(sign * means[d][m] for m in models)
        for m in models:
            places = [i + 1 for i, v in enumerate(ordered) if v == sign * means[d][m]]
            ranks[m].append(sum(places) / len(places))
    return {"n": len(datasets), **{m: sum(v) / len(v) for m, v in ranks.items()}}


def tabular_suite(r: dict[str, Any]) -> list[str]:
    """Per dataset the mean test score over seeds of each model (best in bold), then each
    model's mean rank over the datasets where every model has a score."""
    means: dict[str, dict[str, float]] = {}  # dataset -> model -> mean over seeds
    seeds: dict[str, dict[str, int]] = {}
    metric = {}
    for row in r["results"]:
        scores = means.setdefault(row["dataset"], {})
        counts = seeds.setdefault(row["dataset"], {})
        n = counts.get(row["model"], 0)
        scores[row["model"]] = (scores.get(row["model"], 0.0) * n + row["test"]) / (n + 1)
        counts[row["model"]] = n + 1
        metric[row["dataset"]] = row["metric"]
    models = [m for m in TABULAR_MODELS if any(m in s for s in means.values())]
    datasets = [d for d in r["datasets"] if d in means]
    budgets = sorted({row["budget_s"] for row in r["results"] if "budget_s" in row})
    budget = "/".join(f"{b:g}" for b in budgets) or "50"
    most_seeds = max(n for c in seeds.values() for n in c.values())
    seed_list = ", ".join(str(s) for s in sorted({row["seed"] for row in r["results"]}))
    lines = [
        f"**Tabular suite** (`python benchmarks/tabular_suite.py --budget {budget}`; hpo's "
        f"60/20/20 splits; mean over seeds {seed_list}; test accuracy, or RMSE in target "
        f"units for regression; hpo: one `hpo run` of {budget} s per dataset and seed, 2/3 NN "
        "and 1/3 GBM; the others at their defaults, fitted once)",
        "",
        "| dataset | task | rows | num/cat | "
        + " | ".join(TABULAR_MODELS[m] for m in models)
        + " |",
        "|---|---|---:|---|" + "---:|" * len(models),
    ]
    for d in datasets:
        info, scores = r["datasets"][d], means[d]
        best = (max if metric[d] == "accuracy" else min)(scores.values())
        cells = []
        for m in models:
            if m not in scores:
                cells.append("")
                continue
            cell = _score(scores[m], metric[d])
            cell = f"**{cell}**" if scores[m] == best else cell
            n = seeds[d][m]
            cells.append(cell + (f" ({n} seed{'s' if n > 1 else ''})" if n < most_seeds else ""))
        kinds = f"{info['numeric']}/{info['categorical']}"
        kinds += " +NA" if info["missing_cells"] else ""
        lines.append(
            f"| {d} | {info['task']} | {info['rows']:,} | {kinds} | " + " | ".join(cells) + " |"
        )
    # Every model on the datasets where all have a score; while some rows are still to be
    # run, also the models that have every dataset, among themselves.
    everywhere = [m for m in models if all(m in means[d] for d in datasets)]
    for ranked in [models] + ([everywhere] if 1 < len(everywhere) < len(models) else []):
        scored = [d for d in datasets if all(m in means[d] for m in ranked)]
        ranks = _mean_ranks(ranked, scored, means, metric)
        if ranks:
            label = "all models" if ranked == models else "models with every dataset"
            lines.append(
                f"| **mean rank**, {label} ({ranks.pop('n')} of {len(datasets)} datasets) | | | | "
                + " | ".join(f"{ranks[m]:.2f}" if m in ranks else "" for m in models)
                + " |"
            )
    lines += [
        "",
        "num/cat: numeric and category columns (+NA: with missing values). RealMLP-TD is "
        "pytabkit's, fitted on train with the validation rows as its validation set; HistGB, "
        "XGBoost default and linear (imputation, scaling, one-hot; LogisticRegression or Ridge) "
        "are fitted on train + validation; hpo's members train on train and are chosen on "
        "validation.",
    ]
    return lines


def _seed_means(r: dict[str, Any]) -> tuple[dict[tuple[str, str], float], dict[str, str]]:
    """(dataset, model) -> mean test score over seeds; dataset -> its metric."""
    scores: dict[tuple[str, str], list[float]] = {}
    for row in r["results"]:
        scores.setdefault((row["dataset"], row["model"]), []).append(row["test"])
    metric = {row["dataset"]: row["metric"] for row in r["results"]}
    return {k: sum(v) / len(v) for k, v in scores.items()}, metric


def _a_against_b(
    a: dict[str, Any], b: dict[str, Any], datasets: list[str], heading: str
) -> list[str]:
    """hpo's rows of two tabular_suite results side by side per dataset: each cell ``a / b
    (how much better b is, relative)``, and the mean gain of each model."""
    first, metric = _seed_means(a)
    second, _ = _seed_means(b)
    models = ("hpo_mlp", "hpo_ensemble", "hpo_ensemble_average")
    lines = [
        heading,
        "",
        "| dataset | " + " | ".join(TABULAR_MODELS[m] for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    gains: dict[str, list[float]] = {m: [] for m in models}
    for d in datasets:
        cells = []
        for m in models:
            if (d, m) not in first or (d, m) not in second:
                cells.append("")
                continue
            x, y = first[(d, m)], second[(d, m)]
            gain = (x - y) / y if metric[d] == "rmse" else (y - x) / x
            gains[m].append(gain)
            cells.append(f"{_score(x, metric[d])} / {_score(y, metric[d])} ({gain:+.1%})")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean** | "
        + " | ".join(f"{sum(g) / len(g):+.2%}" if g else "" for g in gains.values())
        + " |"
    )
    return lines


def _suite() -> dict[str, Any]:
    return json.loads((RESULTS / "tabular_suite.json").read_text())


def tabular_suite_default_space(r: dict[str, Any]) -> list[str]:
    """hpo with its default NN space and scaling against the suite's tabular space (the
    tabular_suite result beside it), per dataset: how much better the tabular space is."""
    return _a_against_b(
        r,
        _suite(),
        list(r["datasets"]),
        "**Default space against the tabular space** (`python benchmarks/tabular_suite.py "
        "--only hpo --budget 40 --space default`; the same tables, splits and budget as the "
        "suite above; each cell: default space, tabular space, and how much better the "
        "tabular space is, relative)",
    )


def tabular_suite_kfold(r: dict[str, Any]) -> list[str]:
    """hpo with ``validation: {kfold: K}`` against the suite's holdout runs, and its MLP
    (a bag of fold models) against RealMLP-TD's single fit."""
    suite = _suite()
    k = int(r["protocol"]["hpo_validation"].removeprefix("kfold "))
    datasets = [d for d in r["datasets"] if any(row["dataset"] == d for row in r["results"])]
    lines = _a_against_b(
        suite,
        r,
        datasets,
        "**K-fold bagging on the small tables** (`python benchmarks/tabular_suite.py --only "
        f"hpo --budget 40 --kfold {k} --datasets {','.join(datasets)}`; the suite's tables, "
        "splits, space and budget; each cell: holdout (the suite above), "
        f"{k}-fold, and how much better {k}-fold is, relative. With folds an hpo member is "
        f"the {k} fold models of its trial, averaged, each trained on {k - 1}/{k} of the "
        "non-test rows)",
    )
    ours, _ = _seed_means(r)
    theirs, metric = _seed_means(suite)  # the suite's rows name every dataset's metric
    everywhere = list(suite["datasets"])
    views = (
        ("holdout", theirs, datasets),
        (f"{k}-fold", ours, datasets),
        (f"{k}-fold on these, holdout on the rest", theirs | ours, everywhere),
    )
    for name, scores, tables in views:
        gaps = [
            (theirs[(d, "realmlp_td")] - scores[(d, "hpo_mlp")])
            / theirs[(d, "realmlp_td")]
            * (1 if metric[d] == "rmse" else -1)
            for d in tables
            if (d, "hpo_mlp") in scores and (d, "realmlp_td") in theirs
        ]
        wins = sum(g >= 0 for g in gaps)
        lines.append("")
        lines.append(
            f"hpo MLP against RealMLP-TD ({name}), {len(gaps)} tables: "
            f"{sum(gaps) / len(gaps):+.2%} relative on average, level or better on {wins}."
        )
    return lines


def tabular_suite_epochs(r: dict[str, Any]) -> list[str]:
    """hpo with a table's default ``nn.epochs`` and ``nn.patience`` (100 and 20) against
    the same rows with 30 and 5 (``tabular_suite_epochs30.json``, run alternately with it
    on one machine), and both against the suite's defaults (RealMLP-TD and the others)."""
    epochs, patience = r["protocol"]["hpo_epochs"]
    title = (
        f"**Epochs for tables** (`python benchmarks/tabular_suite.py --only hpo --budget 40 "
        f"--epochs {epochs} {patience}`, and with `--epochs 30 5`, hpo's default before, "
        "run alternately per dataset on one machine; the suite's "
        f"tables, splits, space and budget; each cell: 30 epochs with patience 5, {epochs} "
        f"with patience {patience}, and how much better the second is, relative)"
    )
    return _variant_table("tabular_suite_epochs30.json", r, title, ("30/5", f"{epochs}/{patience}"))


def tabular_suite_flat_cosine(r: dict[str, Any]) -> list[str]:
    """hpo whose flat_cosine trials run all their epochs against the same suite run before,
    when patience stopped them (``tabular_suite_epochs100.json``)."""
    title = (
        "**flat_cosine runs its whole schedule** (`python benchmarks/tabular_suite.py --only hpo "
        "--budget 40 --results benchmarks/results/tabular_suite_flat_cosine.json`, against "
        "`tabular_suite_epochs100.json`: the run of the day before with `--epochs 100 20`, "
        "today's defaults, on the same machine kind, when early stopping (patience 20) also "
        "stopped flat_cosine trials; each cell: "
        "stopped early, whole schedule, and how much better the second is, relative)"
    )
    return _variant_table("tabular_suite_epochs100.json", r, title, ("stopped", "whole"))


def tabular_suite_calibrated(r: dict[str, Any]) -> list[str]:
    """hpo whose MLP objective is the log loss at the best temperature against the same
    code before, on the classification tables (regression is unchanged)."""
    title = (
        "**The MLP's log loss at its best temperature** (`python benchmarks/tabular_suite.py "
        "--only hpo --budget 40 --results benchmarks/results/tabular_suite_calibrated.json`, "
        "against `tabular_suite_uncalibrated.json`: the code before, the same command on "
        "the same machine just after, on the classification tables; the regression rows are "
        "one run that both share, as the change does not reach regression; both with the "
        "suite's `data.max_onehot` 8; each cell: raw log loss, calibrated, and how much "
        "better the second is, relative)"
    )
    return _variant_table("tabular_suite_uncalibrated.json", r, title, ("raw", "calibrated"))


def _variant_table(
    reference: str, r: dict[str, Any], title: str, labels: tuple[str, str]
) -> list[str]:
    """A variant's hpo rows against a reference file's, and both against the suite's
    defaults (RealMLP-TD and the others): the MLP's gap and every model's mean rank."""
    before = json.loads((RESULTS / reference).read_text())
    datasets = [d for d in r["datasets"] if any(row["dataset"] == d for row in r["results"])]
    lines = _a_against_b(before, r, datasets, title)
    suite, metric = _seed_means(_suite())
    models = list(TABULAR_MODELS)
    for name, run in zip(labels, (before, r), strict=True):
        ours, _ = _seed_means(run)
        scores = {d: {m: (ours if m.startswith("hpo") else suite)[(d, m)] for m in models}
                  for d in datasets}  # fmt: skip
        better = [
            (scores[d]["hpo_mlp"] - scores[d][b])
            / scores[d][b]
            * (-1 if metric[d] == "rmse" else 1)
            for b in ("realmlp_td", "hpo_xgb")
            for d in datasets
        ]
        n = len(datasets)
        ranks = _mean_ranks(models, datasets, scores, metric)
        ranks.pop("n", None)
        lines += [
            "",
            f"{name}: hpo MLP against RealMLP-TD {sum(better[:n]) / n:+.2%} relative on "
            f"average (level or better on {sum(g >= 0 for g in better[:n])} of {n}), against "
            f"hpo's XGBoost {sum(better[n:]) / n:+.2%}; mean ranks: "
            + ", ".join(
                f"{TABULAR_MODELS[m]} {v:.2f}"
                for m, v in sorted(ranks.items(), key=lambda kv: kv[1])
            )
            + ".",
        ]
    return lines


FORMATS = {
    "trainer_throughput": trainer_throughput,
    "optuna_overhead": optuna_overhead,
    "optuna_overhead_training": optuna_overhead,
    "trials_per_hour": trials_per_hour,
    "search_efficiency": search_efficiency,
    "end_to_end": end_to_end,
    "ensemble_weighting": ensemble_weighting,
    "workers_scaling": workers_scaling,
    "busy_machine": busy_machine,
    "predict_memory": predict_memory,
    "onnx_latency": onnx_latency,
    "tabular_suite": tabular_suite,
    "tabular_suite_default_space": tabular_suite_default_space,
    "tabular_suite_kfold": tabular_suite_kfold,
    "tabular_suite_epochs100": tabular_suite_epochs,
    "tabular_suite_epochs30": lambda r: [],  # the reference of tabular_suite_epochs100
    "tabular_suite_flat_cosine": tabular_suite_flat_cosine,
    "tabular_suite_calibrated": tabular_suite_calibrated,
    "tabular_suite_uncalibrated": lambda r: [],  # the reference of tabular_suite_calibrated
}


def main() -> None:
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        lines = FORMATS.get(result["benchmark"], generic)(result)
        if lines:  # a reference that another table shows renders nothing of its own
            print("\n".join(lines))
            print(f"\n_Machine: {_machine(result['machine'])}._\n")


if __name__ == "__main__":
    main()
