"""The study spec: one YAML file, validated by pydantic and frozen.

A search dimension is either a range (``{low, high, log}``) or a list of choices; a plain
value instead pins it. Pinned dimensions are still suggested (as a one-point range or a
one-choice list) so that every trial carries every dimension in its params.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpo.errors import HpoError

Task = Literal["binary", "multiclass", "regression"]
Scaling = Literal["minmax", "minmax_symmetric", "standard", "robust", "quantile", "none"]
Activation = Literal["relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "tanh", "sigmoid"]
Initializer = Literal[
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "default"
]
Normalization = Literal[
    "none", "batchnorm_before", "batchnorm_after", "layernorm_before", "layernorm_after"
]
Optimizer = Literal["sgd", "momentum", "rmsprop", "adam", "nadam", "adagrad", "adamw"]
LRSchedule = Literal["constant", "cosine", "flat_cosine", "plateau"]
NumericEmbedding = Literal["none", "periodic"]

ACTIVATIONS: tuple[Activation, ...] = Activation.__args__  # type: ignore[attr-defined]
INITIALIZERS: tuple[Initializer, ...] = Initializer.__args__  # type: ignore[attr-defined]
NORMALIZATIONS: tuple[Normalization, ...] = Normalization.__args__  # type: ignore[attr-defined]
OPTIMIZERS: tuple[Optimizer, ...] = Optimizer.__args__  # type: ignore[attr-defined]
LR_SCHEDULES: tuple[LRSchedule, ...] = LRSchedule.__args__  # type: ignore[attr-defined]
# What the leaderboard ranks and the greedy ensemble optimizes (hpo.models.metrics computes them).
MetricName = Literal[
    "accuracy", "balanced_accuracy", "roc_auc", "log_loss", "f1", "rmse", "mae", "r2"
]
CLASSIFICATION_METRICS: tuple[MetricName, ...] = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "log_loss",
    "f1",
)
REGRESSION_METRICS: tuple[MetricName, ...] = ("rmse", "mae", "r2")


def metrics_for(task: Task) -> tuple[MetricName, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def default_metric(task: Task) -> MetricName:
    """What hpo reported before ``metric:`` existed: RMSE for regression, else accuracy."""
    return "rmse" if task == "regression" else "accuracy"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _pin_number(value: Any) -> Any:
    """A bare number pins a range dimension to that value."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"low": value, "high": value}
    return value


def _pin_choice(value: Any) -> Any:
    """A bare value pins a categorical dimension to that one choice."""
    return value if isinstance(value, list) else [value]


class _Range(_Frozen):
    """A numeric dimension from ``low`` to ``high``, on a log scale with ``log``."""

    if TYPE_CHECKING:  # declared by each subclass, in the order its YAML is written
        low: float
        high: float
        log: bool

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        self._check_low()
        return self

    def _check_low(self) -> None:
        """Refuse a ``low`` the dimension cannot take."""


class FloatRange(_Range):
    low: float
    high: float
    log: bool = False

    def _check_low(self) -> None:
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")


class IntRange(_Range):
    low: int
    high: int
    log: bool = False

    def _check_low(self) -> None:
        if self.low < 1:
            raise ValueError("must be at least 1")


FloatDim = Annotated[FloatRange, BeforeValidator(_pin_number)]
IntDim = Annotated[IntRange, BeforeValidator(_pin_number)]


def _choices(kind: Any) -> Any:
    return Annotated[list[kind], BeforeValidator(_pin_choice), Field(min_length=1)]


class _Space(_Frozen):
    """A search space: each field a range or a list of choices."""

    def contains(self, name: str, value: Any) -> bool:
        """Whether ``value`` lies in dimension ``name``."""
        dim = getattr(self, name)
        if isinstance(dim, IntRange | FloatRange):
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            return is_number and dim.low <= value <= dim.high
        return value in dim

    def contains_params(self, params: dict[str, Any]) -> bool:
        """Whether a trial's params all lie in this space (params it has no field for pass)."""
        fields = type(self).model_fields
        return all(self.contains(k, v) for k, v in params.items() if k in fields)


class NNSpace(_Space):
    """The MLP search space; every key has a default range."""

    depth: IntDim = IntRange(low=1, high=4)
    width: IntDim = IntRange(low=32, high=512, log=True)
    activation: _choices(Activation) = list(ACTIVATIONS)  # type: ignore[valid-type]
    initializer: _choices(Initializer) = list(INITIALIZERS)  # type: ignore[valid-type]
    normalization: _choices(Normalization) = list(NORMALIZATIONS)  # type: ignore[valid-type]
    dropout: FloatDim = FloatRange(low=0.0, high=0.5)
    l2: FloatDim = FloatRange(low=1e-6, high=1e-2, log=True)
    learning_rate: FloatDim = FloatRange(low=1e-4, high=3e-2, log=True)
    # adamw is offered but not searched by default: the default space stays what it was.
    optimizer: _choices(Optimizer) = [o for o in OPTIMIZERS if o != "adamw"]  # type: ignore[valid-type]
    batch_size: _choices(int) = [32, 64, 128, 256]  # type: ignore[valid-type]
    # Width of each category embedding; used only when a table has a column with more
    # levels than data.max_onehot, yet recorded in every trial like the other dimensions.
    embedding_dim: IntDim = IntRange(low=4, high=16, log=True)
    # Defaults pinned to the behaviour before these keys existed (PyTorch's Adam beta2,
    # a constant rate, hard labels); RealMLP's are 0.95, flat_cosine-like and 0.1.
    beta2: FloatDim = FloatRange(low=0.999, high=0.999)  # adam, adamw, nadam
    lr_schedule: _choices(LRSchedule) = ["constant"]  # type: ignore[valid-type]
    label_smoothing: FloatDim = FloatRange(low=0.0, high=0.0)  # classification only
    # --- Architecture (RealMLP, TabM; hpo.models.embeddings, hpo.models.tabm) ---
    # Each pinned to today's MLP by default. ``periodic`` embeds every dense column as RealMLP
    # does (pbld); the three settings after it only act then, yet are recorded in every trial.
    # The ranges are pytabkit's widest RealMLP search space (its TD defaults: 16, 0.1, 3).
    numeric_embedding: _choices(NumericEmbedding) = ["none"]  # type: ignore[valid-type]
    n_frequencies: IntDim = IntRange(low=4, high=64, log=True)
    frequency_scale: FloatDim = FloatRange(low=0.01, high=10.0, log=True)  # sigma of their init
    periodic_width: IntDim = IntRange(low=1, high=32, log=True)  # learned values per column
    feature_scale: _choices(bool) = [False]  # type: ignore[valid-type]
    heads: IntDim = IntRange(low=1, high=1)  # k of a TabM-mini network; 1 is the plain MLP

    @model_validator(mode="after")
    def _check_architecture(self) -> NNSpace:
        if self.frequency_scale.low <= 0:
            raise ValueError(f"frequency_scale must be > 0, got {self._show(self.frequency_scale)}")
        return self

    @model_validator(mode="after")
    def _check_bounds(self) -> NNSpace:
        if not 0.0 <= self.dropout.low <= self.dropout.high < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self._show(self.dropout)}")
        if self.l2.low < 0:
            raise ValueError(f"l2 must be >= 0, got {self._show(self.l2)}")
        if self.learning_rate.low <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self._show(self.learning_rate)}")
        if min(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.beta2.low <= self.beta2.high < 1.0:
            raise ValueError(f"beta2 must lie in (0, 1), got {self._show(self.beta2)}")
        if not 0.0 <= self.label_smoothing.low <= self.label_smoothing.high < 1.0:
            raise ValueError(
                f"label_smoothing must lie in [0, 1), got {self._show(self.label_smoothing)}"
            )
        return self

    @staticmethod
    def _show(r: FloatRange) -> str:
        return f"{r.low:g}" if r.low == r.high else f"[{r.low:g}, {r.high:g}]"


class LayerOverride(_Frozen):
    """One hidden layer of a hand-built network, for baselines the flat space cannot express."""

    width: int = Field(ge=1)
    activation: Activation
    initializer: Initializer = "default"
    normalization: Normalization = "none"


class Baseline(_Frozen):
    """A configuration to try first: search-space params, optionally with explicit layers."""

    model_config = ConfigDict(frozen=True, extra="allow")
    layers: list[LayerOverride] | None = None

    def params(self) -> dict[str, Any]:
        """Search-space params to enqueue; explicit layers are stood for by their first one,
        so that the sampler learns from a close neighbour of the hand-built network."""
        params = dict(self.model_extra or {})
        if self.layers:
            first = self.layers[0].model_dump()
            params = {"depth": len(self.layers), **first, **params}
        return params


class NNConfig(_Frozen):
    trials: int = Field(default=20, ge=0)
    timeout: float | None = Field(default=None, gt=0, description="seconds for this run")
    epochs: int = Field(default=30, ge=1)
    # Early stopping after this many epochs without improvement; a flat_cosine trial runs
    # all its epochs instead, as RealMLP does (hpo.models.train.train_mlp).
    patience: int = Field(default=5, ge=1, description="epochs without improvement")
    search_space: NNSpace = NNSpace()
    # Tabular studies (every source but idx) try RealMLP-TD's defaults first, fitted into
    # the search space (hpo.studies.defaults), before the baselines below.
    realmlp_baseline: bool = True
    baselines: list[Baseline] = []

    @model_validator(mode="after")
    def _check_baselines(self) -> NNConfig:
        for i, baseline in enumerate(self.baselines):
            for key, value in baseline.params().items():
                if key not in NNSpace.model_fields:
                    raise ValueError(f"baselines[{i}]: unknown key {key!r}")
                if not self.search_space.contains(key, value):
                    raise ValueError(f"baselines[{i}].{key}: {value!r} is outside the search space")
        return self


class GBMSpace(_Space):
    """The XGBoost search space; every key has a default range, a plain value pins it.

    ``n_estimators`` is the most boosting rounds a trial may use: early stopping on the
    validation split picks how many it keeps, and its ``high`` is the pruner's budget.
    """

    max_depth: IntDim = IntRange(low=2, high=10)
    learning_rate: FloatDim = FloatRange(low=0.01, high=0.3, log=True)
    n_estimators: IntDim = IntRange(low=100, high=1000, log=True)
    subsample: FloatDim = FloatRange(low=0.5, high=1.0)
    colsample_bytree: FloatDim = FloatRange(low=0.3, high=1.0)
    min_child_weight: FloatDim = FloatRange(low=0.5, high=20.0, log=True)
    reg_lambda: FloatDim = FloatRange(low=1e-3, high=10.0, log=True)
    reg_alpha: FloatDim = FloatRange(low=1e-3, high=10.0, log=True)
    gamma: FloatDim = FloatRange(low=0.0, high=2.0)

    @model_validator(mode="after")
    def _check_bounds(self) -> GBMSpace:
        for name in ("subsample", "colsample_bytree"):
            dim: FloatRange = getattr(self, name)
            if not 0.0 < dim.low <= dim.high <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {NNSpace._show(dim)}")
        if self.learning_rate.low <= 0:
            raise ValueError(f"learning_rate must be > 0, got {NNSpace._show(self.learning_rate)}")
        for name in ("min_child_weight", "reg_lambda", "reg_alpha", "gamma"):
            if getattr(self, name).low < 0:
                raise ValueError(f"{name} must be >= 0, got {NNSpace._show(getattr(self, name))}")
        return self


class GBMConfig(_Frozen):
    trials: int = Field(default=20, ge=0)
    timeout: float | None = Field(default=None, gt=0, description="seconds for this run")
    early_stopping_rounds: int = Field(
        default=20, ge=1, description="rounds without a better validation loss"
    )
    # None: hpo picks per trial, as for the MLP (hpo/models/threads.py): one thread on small data,
    # the idle cores on large data; OMP_NUM_THREADS pins it.
    n_jobs: int | None = Field(default=None, ge=1, description="XGBoost threads")
    # Histogram bins per feature: fewer trains faster (2.3x from 256 to 32 on Fashion-MNIST).
    max_bin: int = Field(default=256, ge=2)
    search_space: GBMSpace = GBMSpace()


class EnsembleConfig(_Frozen):
    """Which finished trials form the ensemble, and how they are weighted."""

    nn_members: int = Field(default=3, ge=0, description="best NN trials to use")
    gbm_members: int = Field(default=3, ge=0, description="best GBM trials to use")
    # average: uniform weights; greedy: Caruana ensemble selection on the validation split.
    method: Literal["average", "greedy"] = "greedy"
    greedy_rounds: int = Field(default=50, ge=1, description="greedy picks, with replacement")

    @model_validator(mode="after")
    def _check_members(self) -> EnsembleConfig:
        if self.nn_members + self.gbm_members < 1:
            raise ValueError("nn_members + gbm_members must be at least 1")
        return self


MAX_FOLDS = 100


class KFold(_Frozen):
    """``validation: {kfold: K}``: every non-test row validates once, in one of K folds."""

    kfold: int = Field(ge=2, le=MAX_FOLDS)


def _check_validation(value: Any) -> Any:
    """``holdout`` or ``{kfold: K}``; anything else is one clear line, not a union's two."""
    if value == "holdout" or isinstance(value, KFold):
        return value
    k = value.get("kfold") if isinstance(value, dict) and list(value) == ["kfold"] else None
    if isinstance(k, int) and not isinstance(k, bool) and 2 <= k <= MAX_FOLDS:
        return value
    raise ValueError(
        f"must be 'holdout' or {{kfold: K}} with a whole number K from 2 to {MAX_FOLDS}, "
        f"got {value!r}"
    )


class DataSpec(_Frozen):
    """Where the data comes from, how a table is read, and how it is split and scaled."""

    source: Literal["sklearn", "idx", "csv", "parquet"]
    name: str | None = Field(default=None, description="sklearn dataset name")
    path: str | None = Field(default=None, description="IDX directory, CSV or Parquet file")
    target: str | None = Field(default=None, description="table target column")
    scaling: Scaling = "standard"
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    # holdout: one validation split (validation_fraction); {kfold: K}: the non-test rows in
    # K folds, one model per fold (hpo.data.dataset.Dataset.fold), scored out of fold.
    validation: Annotated[Literal["holdout"] | KFold, BeforeValidator(_check_validation)] = (
        "holdout"
    )
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    limit: int | None = Field(default=None, ge=10, description="use only the first N rows")
    # Tables (csv, parquet) only. Tuples, not lists: the frozen spec is a cache key.
    sep: Literal[",", ";", "\t", "|"] | None = Field(
        default=None, description="CSV separator; sniffed from the header line when unset"
    )
    thousands: str | None = Field(default=None, max_length=1, description="e.g. ',' in 3,750")
    decimal: str = Field(default=".", min_length=1, max_length=1)
    drop: tuple[str, ...] = Field(default=(), description="ID or leak columns to leave out")
    categorical: tuple[str, ...] = Field(default=(), description="numeric-looking categories")
    max_onehot: int = Field(
        default=16, ge=1, description="most levels one-hot encoded; more get an embedding"
    )

    @model_validator(mode="after")
    def _check_source(self) -> DataSpec:
        if self.source == "sklearn" and not self.name:
            raise ValueError("source 'sklearn' needs 'name'")
        if self.source in ("idx", "csv", "parquet") and not self.path:
            raise ValueError(f"source '{self.source}' needs 'path'")
        if self.source in ("csv", "parquet") and not self.target:
            raise ValueError(f"source '{self.source}' needs 'target' (the label column)")
        if self.source not in ("csv", "parquet") and (self.drop or self.categorical):
            raise ValueError("drop and categorical apply to csv and parquet tables only")
        if self.thousands is not None and self.thousands == self.decimal:
            raise ValueError("thousands and decimal must differ")
        if self.target is not None and self.target in self.drop:
            raise ValueError(f"the target {self.target!r} cannot also be dropped")
        return self

    @property
    def n_folds(self) -> int:
        """K of ``validation: {kfold: K}``; 0 for a holdout split."""
        return self.validation.kfold if isinstance(self.validation, KFold) else 0


class Limits(_Frozen):
    """Upper limits that turn a typo (``width: 10000000``) into an error instead of a 400 TB
    allocation or a run without end. A spec that means more raises one under ``limits:``."""

    width: int = Field(default=16_384, ge=1, description="units per hidden layer")
    depth: int = Field(default=64, ge=1, description="hidden layers")
    batch_size: int = Field(default=1_048_576, ge=1)
    embedding_dim: int = Field(default=4_096, ge=1, description="units per category embedding")
    heads: int = Field(default=256, ge=1, description="members of a TabM-style network")
    n_frequencies: int = Field(default=4_096, ge=1, description="per periodic-embedded column")
    periodic_width: int = Field(default=4_096, ge=1, description="per periodic-embedded column")
    max_onehot: int = Field(default=4_096, ge=1, description="columns one category may take")
    epochs: int = Field(default=100_000, ge=1)
    patience: int = Field(default=100_000, ge=1, description="epochs without improvement")
    trials: int = Field(default=1_000_000, ge=0, description="per study")
    n_estimators: int = Field(default=100_000, ge=1, description="XGBoost boosting rounds")
    max_depth: int = Field(default=64, ge=1, description="XGBoost tree depth")
    early_stopping_rounds: int = Field(default=100_000, ge=1)
    max_bin: int = Field(default=65_536, ge=2)
    threads: int = Field(default=4_096, ge=1, description="gbm.n_jobs")
    members: int = Field(default=1_000, ge=0, description="per kind, in the ensemble")
    greedy_rounds: int = Field(default=100_000, ge=1)


# ``nn.epochs`` and ``nn.patience`` where a tabular spec leaves them out (NNConfig's 30
# and 5 stay for images). An epoch of a table of thousands of rows is a few dozen steps:
# RealMLP trains 256 epochs, and on benchmarks/tabular_suite.py 100 epochs with patience
# 20 made hpo's best MLP better than 30 and 5 did, within the same time budget.
TABLE_EPOCHS = {"epochs": 100, "patience": 20}


def is_table_source(source: str | None) -> bool:
    """Whether ``data.source`` holds a table: every source but IDX folders (images)."""
    return source is not None and source != "idx"


class StudySpec(_Frozen):
    """One study: its data, task, search space and search settings."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Task
    # Left out: the task's default (accuracy, or rmse for regression).
    metric: MetricName = Field(
        default_factory=lambda data: default_metric(data.get("task", "multiclass"))
    )
    data: DataSpec
    seed: int = 0
    sampler: Literal["tpe", "random", "gp", "qmc"] = "tpe"
    # Optuna's benchmarks find Hyperband the best pruner for TPE (median for random search).
    pruner: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "hyperband"
    nn: NNConfig = NNConfig()
    gbm: GBMConfig = GBMConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    # A worker that stops beating for grace_period seconds has its trial failed and retried.
    heartbeat_interval: int = Field(default=30, ge=1)
    grace_period: int = Field(default=120, ge=2)
    max_retry: int = Field(default=2, ge=0, description="retries of a trial whose worker died")
    limits: Limits = Limits()

    @model_validator(mode="before")
    @classmethod
    def _table_epochs(cls, values: Any) -> Any:
        """A table's ``nn.epochs`` and ``nn.patience``, where the spec leaves them out:
        :data:`TABLE_EPOCHS`."""
        if not isinstance(values, dict):
            return values
        data = values.get("data")
        source = data.get("source") if isinstance(data, dict) else getattr(data, "source", None)
        if not is_table_source(source):
            return values
        nn = values.get("nn", {})
        if isinstance(nn, NNConfig):
            unset = {k: v for k, v in TABLE_EPOCHS.items() if k not in nn.model_fields_set}
            return {**values, "nn": nn.model_copy(update=unset)}
        if isinstance(nn, dict):
            return {**values, "nn": {**TABLE_EPOCHS, **nn}}
        return values  # not a section: NNConfig's own error says so

    @model_validator(mode="after")
    def _check_limits(self) -> StudySpec:
        for key, value, limit in self._limited_values():
            most = getattr(self.limits, limit)
            if value > most:
                raise ValueError(
                    f"{key}: {value} is above the limit {most}; "
                    f"set limits.{limit} in the spec to allow it"
                )
        return self

    def _limited_values(self) -> Iterator[tuple[str, int, str]]:
        """``(key, value, limit name)`` for every value that has an upper limit."""
        nn, gbm, space = self.nn, self.gbm, self.nn.search_space
        yield "nn.trials", nn.trials, "trials"
        yield "nn.epochs", nn.epochs, "epochs"
        yield "nn.patience", nn.patience, "patience"
        yield "nn.search_space.depth", space.depth.high, "depth"
        yield "nn.search_space.width", space.width.high, "width"
        yield "nn.search_space.batch_size", max(space.batch_size), "batch_size"
        yield "nn.search_space.embedding_dim", space.embedding_dim.high, "embedding_dim"
        yield "nn.search_space.heads", space.heads.high, "heads"
        yield "nn.search_space.n_frequencies", space.n_frequencies.high, "n_frequencies"
        yield "nn.search_space.periodic_width", space.periodic_width.high, "periodic_width"
        yield "data.max_onehot", self.data.max_onehot, "max_onehot"
        for i, baseline in enumerate(nn.baselines):
            layers = baseline.layers or []
            yield f"nn.baselines.{i}.layers", len(layers), "depth"
            for j, layer in enumerate(layers):
                yield f"nn.baselines.{i}.layers.{j}.width", layer.width, "width"
        yield "gbm.trials", gbm.trials, "trials"
        yield "gbm.early_stopping_rounds", gbm.early_stopping_rounds, "early_stopping_rounds"
        yield "gbm.max_bin", gbm.max_bin, "max_bin"
        yield "gbm.n_jobs", gbm.n_jobs or 1, "threads"
        yield "gbm.search_space.n_estimators", gbm.search_space.n_estimators.high, "n_estimators"
        yield "gbm.search_space.max_depth", gbm.search_space.max_depth.high, "max_depth"
        yield "ensemble.nn_members", self.ensemble.nn_members, "members"
        yield "ensemble.gbm_members", self.ensemble.gbm_members, "members"
        yield "ensemble.greedy_rounds", self.ensemble.greedy_rounds, "greedy_rounds"

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, metric: MetricName, info: ValidationInfo) -> MetricName:
        task = info.data.get("task")
        if task is not None and metric not in metrics_for(task):
            raise ValueError(
                f"{metric!r} does not score a {task} task; choose one of "
                + ", ".join(metrics_for(task))
            )
        return metric

    @property
    def nn_study_name(self) -> str:
        return f"{self.name}-nn"

    @property
    def gbm_study_name(self) -> str:
        return f"{self.name}-gbm"


def load_spec(path: str | Path) -> tuple[StudySpec, Path]:
    """Read and validate a study spec; returns it with the folder that relative paths use.

    Raises:
        HpoError: naming the file, the key and what is wrong.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise HpoError(f"{path}: cannot read the study spec ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise HpoError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise HpoError(f"{path}: a study spec is a YAML mapping (name, task, data, ...)")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as e:
        raise HpoError(f"{path}: {_first_error(e)}") from None
    return spec, path.resolve().parent


def spec_hash(spec: StudySpec) -> str:
    """A short stable hash of the validated spec, to tell runs of changed specs apart."""
    # Limits change no result: raising one keeps the hash.
    return hashlib.sha256(spec.model_dump_json(exclude={"limits"}).encode()).hexdigest()[:12]


# Command-line flags that override spec keys, and the keys each one sets.
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("nn.trials", "gbm.trials"),
    "timeout": ("nn.timeout", "gbm.timeout"),
    "nn_members": ("ensemble.nn_members",),
    "gbm_members": ("ensemble.gbm_members",),
}


@dataclass(frozen=True)
class RunOptions:
    """What the command line may set for a run: where (``None``: ``HPO_STORAGE`` /
    ``HPO_ARTIFACTS`` or the defaults) and how much (``None``: the spec's)."""

    storage: str | None = None
    artifacts: str | None = None
    trials: int | None = None  # finished trials per study
    timeout: float | None = None  # seconds per study


def check_overrides(spec: StudySpec, **flags: Any) -> None:
    """Hold command-line overrides to the rules of the keys they override.

    Args:
        flags: flag name to value (``trials=-1``), as in :data:`FLAG_KEYS`; None keeps the spec's.

    Raises:
        HpoError: naming the flag, its value, the key and what is wrong.
    """
    given = {flag: value for flag, value in flags.items() if value is not None}
    # Each flag alone first, so that an error names the flag at fault; then all together.
    for group in [*({flag: value} for flag, value in given.items()), given]:
        raw = spec.model_dump()
        for flag, value in group.items():
            for key in FLAG_KEYS[flag]:
                section, name = key.split(".")
                raw[section][name] = value
        try:
            StudySpec.model_validate(raw)
        except ValidationError as e:
            shown = " ".join(f"--{flag.replace('_', '-')} {value}" for flag, value in group.items())
            # One flag sets both studies' keys: their errors are the same error.
            raise HpoError(f"{shown}: {_first_error(e, count_others=False)}") from None


def _first_error(error: ValidationError, *, count_others: bool = True) -> str:
    err = error.errors()[0]
    loc = list(err["loc"])
    # A list index at the end of the location is noise for pinned-or-list dimensions.
    if loc and isinstance(loc[-1], int):
        loc.pop()
    key = ".".join(str(p) for p in loc)
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] in ("literal_error", "enum") and got is not None:
        msg += f", got {got!r}"
    others = error.error_count() - 1 if count_others else 0
    more = f" (and {others} more)" if others else ""
    # A whole-spec check (the limits) names its key in the message itself.
    return f"{key}: {msg}{more}" if key else f"{msg}{more}"
