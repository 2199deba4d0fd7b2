"""The whole ensemble as one ONNX graph (``model.onnx`` in a bundle), for ONNX Runtime.

Inputs: ``X``, float ``[rows, numeric columns]`` (the preprocessing's ``numeric`` order,
which is the training column order for all-numeric data; NaN or infinity for a missing
value), and for each category column ``category_<i>``, its values as text ``[rows]`` (""
for missing). The graph does what :class:`hpo.data.preprocess.Preprocessor` and
:func:`hpo.models.members.combine` do:

- the preprocessing: infinity as missing, the training medians for missing values, the
  scaling (robust's smooth clip; quantile's piecewise-linear map, found by binary search),
  the missing-indicator columns, and per category column the level index (``LabelEncoder``)
  as one-hot columns, an embedding code, or XGBoost's native category;
- every NN member (``torch.onnx.export``, the dynamo exporter) and every XGBoost member
  (onnxmltools' converter, native categorical splits since onnx/onnxmltools#734 and #743),
  each on its own view, as :mod:`hpo.models.members` feeds them;
- softmax, sigmoid or the target's un-standardizing, and the weighted average in float64.

Outputs: ``label`` (the original class) and ``probabilities`` ``[rows, classes]``, or
``prediction`` (target units) for regression. The graph's metadata lists the members,
weights and their bundle files' sha256, so a ``model.onnx`` from another export is refused.

Checked with torch 2.13, onnx 1.23, onnxscript 0.7, onnxmltools 1.16, onnxruntime 1.32.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from typing import Any

import numpy as np
import safetensors.torch
import torch

from hpo.data.dataset import Dataset
from hpo.ensemble.selection import EnsembleReport, fold_models
from hpo.errors import HpoError

try:
    import onnx
    import onnx.version_converter
    import onnxmltools  # noqa: F401  (XGBoost members)
    import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter)
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:
    raise HpoError(
        f"--format onnx needs {e.name}: pip install 'hpo[onnx]' (onnx, onnxscript, onnxmltools)"
    ) from None
from hpo.data.preprocess import MISSING_CODE, UNSEEN_CODE, CategoryColumn, Preprocessor
from hpo.data.scaler import CLIP, Scaler
from hpo.models.members import GBMMember, Member, NNMember
from hpo.spec import Task

ONNX_FILE = "model.onnx"
OPSET = 18  # the dynamo exporter's default
GBM_OPSET = 15  # the highest onnxmltools 1.16 converts to; upgraded to OPSET after
INPUT = "X"  # the numeric columns, in the order of the preprocessing's ``numeric``
MISSING, UNSEEN = -1, -2  # level indices of a missing and an unseen category value
# JSON [[kind, trial, weight, sha256 of the member's bundle file], ...]: binds the graph to
# the very weights its bundle holds (a graph from another export is refused at load).
META_MEMBERS = "hpo.members"


def members_fingerprint(members: Sequence[Member], weights: Sequence[float]) -> str:
    """The members a graph holds, as the manifest lists them (weights rounded: JSON floats)."""
    rows = []
    for member, weight in zip(members, weights, strict=True):
        # The bytes hpo.ensemble.bundle writes for the member (safetensors, or XGBoost's UBJSON).
        if isinstance(member, NNMember):
            raw = safetensors.torch.save(member.state_dict())
        else:
            raw = member.to_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        rows.append([member.kind, int(member.trial), round(float(weight), 12), digest])
    return json.dumps(rows)


def build_onnx(
    members: Sequence[Member],
    weights: Sequence[float],
    pre: Preprocessor,
    *,
    task: Task,
    classes: Sequence[int | float | str] | None,
) -> bytes:
    """The serialized ONNX model of an ensemble (members of weight 0 already left out).

    Raises:
        HpoError: the data has category columns (not supported in ONNX yet).
    """
    graph = _Graph()
    nn_view, gbm_view = _preprocessing(graph, pre)
    outputs = []
    for i, member in enumerate(members):
        prefix = f"m{i}_{member.kind}{member.trial}_"
        if isinstance(member, NNMember):
            width = len(pre.nn_feature_names)
            out = _add_nn(graph, member, nn_view, width, prefix, task)
        else:
            own = len(pre.numeric) + len(pre.categorical)
            width = own if pre.gbm_own_view else len(pre.nn_feature_names)
            out = _add_gbm(graph, member, gbm_view, width, prefix, task)
        outputs.append(graph.op("Mul", [out, graph.const(np.float64(weights[i]))]))
    total = outputs[0] if len(outputs) == 1 else graph.op("Sum", outputs)
    if task == "regression":
        graph.node("Identity", [total], ["prediction"])
        graph.outputs.append(
            helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, [None])
        )
    else:
        assert classes is not None
        graph.node("Identity", [total], ["probabilities"])
        index = graph.op("ArgMax", [total], axis=1, keepdims=0)
        graph.node("Gather", [graph.const(_classes_array(classes)), index], ["label"], axis=0)
        label_type = helper.np_dtype_to_tensor_dtype(_classes_array(classes).dtype)
        graph.outputs += [
            helper.make_tensor_value_info("label", label_type, [None]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.DOUBLE, [None, len(classes)]
            ),
        ]
    model = graph.model(pre)
    helper.set_model_props(model, {META_MEMBERS: members_fingerprint(members, weights)})
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _classes_array(classes: Sequence[int | float | str]) -> np.ndarray:
    """The classes as one typed tensor: int64, float64 or text (as the manifest holds them)."""
    if all(isinstance(c, int) for c in classes):
        return np.asarray(classes, dtype=np.int64)
    if all(isinstance(c, int | float) for c in classes):
        return np.asarray(classes, dtype=np.float64)
    return np.asarray([str(c) for c in classes], dtype=object)


class _Graph:
    """Nodes, constants and sub-graphs collected into one ONNX graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.opsets: dict[str, int] = {"": OPSET}
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: np.ndarray | np.generic) -> str:
        name = self.name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(
        self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any
    ) -> None:
        self.nodes.append(
            helper.make_node(op, inputs, outputs, name=self.name(op), domain=domain, **attrs)
        )

    def op(self, op: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        out = self.name(op.lower())
        self.node(op, inputs, [out], domain=domain, **attrs)
        return out

    def add_model(self, model: onnx.ModelProto, prefix: str, feed: str) -> list[str]:
        """Copy a converted model in (names prefixed), its one input fed by ``feed``."""
        model = onnx.compose.add_prefix(model, prefix)
        (inp,) = [
            i.name
            for i in model.graph.input
            if i.name not in {t.name for t in model.graph.initializer}
        ]
        self.node("Identity", [feed], [inp])
        self.nodes += model.graph.node
        self.initializers += model.graph.initializer
        self.functions += model.functions
        for opset in model.opset_import:
            self.opsets[opset.domain] = max(self.opsets.get(opset.domain, 0), opset.version)
        return [o.name for o in model.graph.output]

    def model(self, pre: Preprocessor) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "hpo_ensemble",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, len(pre.numeric)])]
            + [
                helper.make_tensor_value_info(category_input(i), TensorProto.STRING, [None])
                for i in range(len(pre.categorical))
            ],
            self.outputs,
            initializer=self.initializers,
        )
        opsets = [helper.make_opsetid(domain, v) for domain, v in self.opsets.items()]
        model = helper.make_model(
            graph, opset_imports=opsets, functions=self.functions, producer_name="hpo"
        )
        model.ir_version = min(model.ir_version, 10)  # readable by onnxruntime 1.20 and later
        return model


def category_input(i: int) -> str:
    """The graph input of the ``i``-th category column: its values as text, "" if missing."""
    return f"category_{i}"


def _preprocessing(graph: _Graph, pre: Preprocessor) -> tuple[str, str]:
    """The MLP's view and XGBoost's view of the inputs (see :meth:`Preprocessor.transform`)."""
    nan = graph.const(np.float32(np.nan))
    # Infinity is a missing value, as in a table read by the native engine.
    x = graph.op("Where", [graph.op("IsInf", [INPUT]), nan, INPUT])
    missing = graph.op("IsNaN", [x])
    imputed = graph.op("Where", [missing, graph.const(pre.medians.astype(np.float32)), x])
    scaled = _scaling(graph, imputed, pre.scaler)
    if not pre.gbm_own_view:
        return scaled, scaled
    nn_parts, gbm_parts = [scaled], [x]
    if pre.indicators:
        flags = graph.op("Cast", [missing], to=TensorProto.FLOAT)
        columns = np.asarray([pre.numeric.index(n) for n in pre.indicators], dtype=np.int64)
        nn_parts.append(graph.op("Gather", [flags, graph.const(columns)], axis=1))
    codes = [_level_index(graph, i, c) for i, c in enumerate(pre.categorical)]
    for c, k in zip(pre.categorical, codes, strict=True):
        if not c.embed:  # one column per level, then one for missing; unseen: all zeros
            targets = np.append(np.arange(len(c.levels)), MISSING).astype(np.int64)
            hot = graph.op("Equal", [k, graph.const(targets)])
            nn_parts.append(graph.op("Cast", [hot], to=TensorProto.FLOAT))
    for c, k in zip(pre.categorical, codes, strict=True):
        if c.embed:  # 0 missing, 1 unseen, 2.. the levels
            shifted_code = graph.op("Add", [k, graph.const(np.int64(2))])
            code = graph.op(
                "Where",
                [
                    graph.op("Equal", [k, graph.const(np.int64(MISSING))]),
                    graph.const(np.int64(MISSING_CODE)),
                    graph.op(
                        "Where",
                        [
                            graph.op("Equal", [k, graph.const(np.int64(UNSEEN))]),
                            graph.const(np.int64(UNSEEN_CODE)),
                            shifted_code,
                        ],
                    ),
                ],
            )
            nn_parts.append(graph.op("Cast", [code], to=TensorProto.FLOAT))
    for k in codes:  # XGBoost's native categories: the level index, NaN if missing or unseen
        known = graph.op("GreaterOrEqual", [k, graph.const(np.int64(0))])
        as_float = graph.op("Cast", [k], to=TensorProto.FLOAT)
        gbm_parts.append(graph.op("Where", [known, as_float, nan]))
    nn = graph.op("Concat", nn_parts, axis=1) if len(nn_parts) > 1 else nn_parts[0]
    gbm = graph.op("Concat", gbm_parts, axis=1) if len(gbm_parts) > 1 else gbm_parts[0]
    return nn, gbm


def _scaling(graph: _Graph, x: str, scaler: Scaler) -> str:
    """:meth:`Scaler.transform` in ONNX ops: the affine step, then robust's smooth clip or
    quantile's piecewise-linear map to normal scores."""
    shifted = graph.op("Sub", [x, graph.const(scaler.offset.astype(np.float32))])
    z = graph.op("Div", [shifted, graph.const(scaler.scale.astype(np.float32))])
    if scaler.kind == "robust":  # z / sqrt(1 + (z / 3)^2)
        ratio = graph.op("Div", [z, graph.const(np.float32(CLIP))])
        one = graph.const(np.float32(1.0))
        root = graph.op("Sqrt", [graph.op("Add", [one, graph.op("Mul", [ratio, ratio])])])
        return graph.op("Div", [z, root])
    if scaler.kind == "quantile":
        return _piecewise_linear(graph, z, scaler)
    return z


def _piecewise_linear(graph: _Graph, x: str, scaler: Scaler) -> str:
    """Per feature, the normal score interpolated between the two knots around ``x``.

    ONNX has no searchsorted: a binary search finds, per cell, the last knot at or below the
    value in log2(knots) rounds of Gather and compare on ``[rows, features]``, so memory
    stays that of the input (a ``[rows, features, knots]`` comparison would not)."""
    assert scaler.quantiles is not None
    n, k = scaler.quantiles.shape
    knots = graph.const(scaler.quantiles.reshape(-1).astype(np.float32))
    scores = graph.const(scaler.normal_scores.reshape(-1).astype(np.float32))
    base = graph.const(np.arange(n, dtype=np.int64) * k)  # each feature's first knot
    last = graph.const(np.int64(k - 1))

    def at(table: str, index: str) -> str:
        return graph.op("Gather", [table, graph.op("Add", [base, index])], axis=0)

    index = graph.const(np.zeros(n, dtype=np.int64))  # broadcast to [rows, features]
    step = 1 << (k - 1).bit_length()
    while step := step // 2:
        candidate = graph.op("Min", [graph.op("Add", [index, graph.const(np.int64(step))]), last])
        below = graph.op("LessOrEqual", [at(knots, candidate), x])
        index = graph.op("Where", [below, candidate, index])
    low_i = graph.op("Min", [index, graph.const(np.int64(k - 2))])
    high_i = graph.op("Add", [low_i, graph.const(np.int64(1))])
    lo, hi = at(knots, low_i), at(knots, high_i)
    gap = graph.op("Sub", [hi, lo])
    positive = graph.op("Greater", [gap, graph.const(np.float32(0))])
    width = graph.op("Where", [positive, gap, graph.const(np.float32(1))])
    t = graph.op("Div", [graph.op("Sub", [x, lo]), width])
    t = graph.op("Clip", [t, graph.const(np.float32(0)), graph.const(np.float32(1))])
    s_lo, s_hi = at(scores, low_i), at(scores, high_i)
    return graph.op("Add", [s_lo, graph.op("Mul", [t, graph.op("Sub", [s_hi, s_lo])])])


def _level_index(graph: _Graph, i: int, column: CategoryColumn) -> str:
    """``[rows, 1]`` int64: the level's index, -1 for missing (""), -2 for an unseen level."""
    index = graph.op(
        "LabelEncoder",
        [category_input(i)],
        domain="ai.onnx.ml",
        keys_strings=[*column.levels, ""],
        values_int64s=[*range(len(column.levels)), MISSING],
        default_int64=UNSEEN,
    )
    graph.opsets["ai.onnx.ml"] = max(graph.opsets.get("ai.onnx.ml", 0), 2)
    return graph.op("Unsqueeze", [index, graph.const(np.asarray([1], dtype=np.int64))])


def _add_nn(graph: _Graph, member: NNMember, feed: str, width: int, prefix: str, task: Task) -> str:
    """The network's logits, then probabilities or target units, in float64 as natively."""
    model = member.model.eval()
    example = torch.zeros((2, width), dtype=torch.float32)
    # The exporter reports its steps on stdout and a missing torchvision in its log.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), io.StringIO() as quiet:
        warnings.simplefilter("ignore")
        with redirect_stdout(quiet):
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("rows")},),
                verbose=False,
            )
    assert program is not None
    (logits,) = graph.add_model(program.model_proto, prefix, feed)
    out = graph.op("Cast", [logits], to=TensorProto.DOUBLE)
    # A k-head network's logits are [rows, k, outputs]: each head's probabilities (or
    # values), then their mean over the heads, as hpo.models.train.to_prediction does.
    heads = member.mlp_spec.heads > 1
    if task == "multiclass":
        return _mean_of_heads(graph, graph.op("Softmax", [out], axis=-1), heads)
    first = graph.op("Squeeze", [out, graph.const(np.asarray([-1], dtype=np.int64))])
    if task == "binary":
        return _binary(graph, _mean_of_heads(graph, graph.op("Sigmoid", [first]), heads))
    scaled = graph.op(
        "Mul", [_mean_of_heads(graph, first, heads), graph.const(np.float64(member.y_std))]
    )
    return graph.op("Add", [scaled, graph.const(np.float64(member.y_mean))])


def _mean_of_heads(graph: _Graph, per_head: str, heads: bool) -> str:
    """The mean over axis 1 (the heads) of a k-head network's predictions."""
    if not heads:
        return per_head
    axes = graph.const(np.asarray([1], dtype=np.int64))
    return graph.op("ReduceMean", [per_head, axes], keepdims=0)


def _add_gbm(
    graph: _Graph, member: GBMMember, feed: str, width: int, prefix: str, task: Task
) -> str:
    """onnxmltools' conversion of the booster: probabilities, or the regression value."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_xgboost(
            member.booster,
            initial_types=[("x", FloatTensorType([None, width]))],
            target_opset=GBM_OPSET,
        )
    if any(opset.domain in ("", "ai.onnx") for opset in converted.opset_import):
        converted = onnx.version_converter.convert_version(converted, OPSET)
    outputs = graph.add_model(converted, prefix, feed)
    if task == "regression":
        value = graph.op("Cast", [outputs[0]], to=TensorProto.DOUBLE)
        return graph.op("Reshape", [value, graph.const(np.asarray([-1], dtype=np.int64))])
    proba = next(o for o in outputs if o.endswith("probabilities"))
    out = graph.op("Cast", [proba], to=TensorProto.DOUBLE)
    if task == "binary":
        # 1 - p from XGBoost's own p, as GBMMember does (the converter's p0 may round apart).
        p = graph.op("Gather", [out, graph.const(np.int64(1))], axis=1)
        return _binary(graph, p)
    return out


def _binary(graph: _Graph, p: str) -> str:
    """``[1 - p, p]`` as two columns."""
    column = graph.const(np.asarray([1], dtype=np.int64))
    p1 = graph.op("Unsqueeze", [p, column])
    p0 = graph.op("Sub", [graph.const(np.float64(1.0)), p1])
    return graph.op("Concat", [p0, p1], axis=1)


def onnx_files(report: EnsembleReport, data: Dataset, fmt: str) -> dict[str, bytes]:
    """The files ``hpo export --format FMT`` adds to a bundle: ``model.onnx`` for ``onnx``.

    Raises:
        HpoError: an unknown format, or data the graph cannot take (category columns).
    """
    if fmt not in ("bundle", "onnx"):
        raise HpoError(f"unknown export format {fmt!r} (choose bundle or onnx)")
    if fmt == "bundle":
        return {}
    weights = report.weights[report.method]
    # A k-fold member is its K fold models, each its own sub-graph of weight w / K, in the
    # order the bundle's manifest lists them (hpo.ensemble.bundle).
    kept = [
        (model, share)
        for m, w in zip(report.members, weights, strict=True)
        if w > 0
        for model, share, _ in fold_models(m, float(w))
    ]
    raw = build_onnx(
        [m for m, _ in kept],
        [w for _, w in kept],
        data.preprocessor,
        task=data.task,
        classes=data.classes,
    )
    return {ONNX_FILE: raw}
