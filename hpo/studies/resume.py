"""A rerun of a study spec against the studies it made: what may change and what may not.

Each study records the spec it was made from (user attr ``created_spec``) and the spec of
its latest run (``spec``). A rerun compares the new spec with them:

- data section, task or seed (the seed sets the split): old and new trials would be scored
  on different data and could not be ranked together, so the run stops unless ``--fresh``,
  which keeps the old studies under a dated name and starts new ones;
- search space: the run goes on and says what changed; tables and the ensemble then take
  only trials whose params lie inside the current space;
- anything else (trial counts, epochs, pruner, ensemble): goes on silently.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import optuna

from hpo.errors import HpoError
from hpo.spec import FloatRange, GBMSpace, IntRange, NNSpace, StudySpec
from hpo.storage import stored
from hpo.storage.stored import KINDS, Kind, space_of, validated_spec
from hpo.studies.parallel import INTERRUPTS

# Keys whose change makes old and new trials incomparable.
FIXED_KEYS = ("task", "seed", "data")

Log = Callable[[str], None]


def spec_attrs(spec: StudySpec, kind: Kind, attrs: dict[str, Any]) -> dict[str, Any]:
    """The spec attrs to store on a study: the first spec it was made from stays (for a
    study made before ``created_spec`` existed, the spec of its latest run stands in)."""
    current = spec.model_dump(mode="json")
    return {
        stored.KIND: kind,
        stored.SPEC: current,
        stored.CREATED_SPEC: attrs.get(stored.CREATED_SPEC) or attrs.get(stored.SPEC) or current,
    }


def study_kinds(spec: StudySpec) -> dict[str, Kind]:
    return {stored.study_name(spec.name, kind): kind for kind in KINDS}


def check_rerun(spec: StudySpec, storage: optuna.storages.BaseStorage) -> list[str]:
    """Compare ``spec`` with what its existing studies recorded; writes nothing.

    Returns one line per study whose search space changed, saying what changed.

    Raises:
        HpoError: the data section, task or seed differ from the spec a study was made from.
    """
    recorded = {name: _stored_attrs(storage, name) for name in study_kinds(spec)}
    new = spec.model_dump(mode="json")
    for name, attrs in recorded.items():
        created = validated_spec(attrs.get(stored.CREATED_SPEC) or attrs.get(stored.SPEC))
        if created is None:
            continue
        old = created.model_dump(mode="json")
        changed = [
            f"{key}: {_show(a)} -> {_show(b)}"
            for top in FIXED_KEYS
            for key, a, b in _diff(old.get(top), new.get(top), top)
        ]
        if changed:
            raise HpoError(
                f"{name} was made with another data section, task or seed "
                f"({'; '.join(changed)}): its trials would not compare with new ones; "
                "run with --fresh to keep the old studies under a dated name and start new ones"
            )
    notes = []
    for name, kind in study_kinds(spec).items():
        previous = validated_spec(recorded[name].get(stored.SPEC))
        if previous is None:
            continue
        old_space, new_space = space_of(previous, kind), space_of(spec, kind)
        changes = space_changes(old_space, new_space)
        if changes:
            outside, finished = _count_outside(storage, name, new_space)
            notes.append(
                f"{name}: search space changed: {', '.join(changes)}; {outside} of {finished} "
                "finished trials lie outside it (left out of the tables and the ensemble)"
            )
    return notes


def space_changes(old: NNSpace | GBMSpace, new: NNSpace | GBMSpace) -> list[str]:
    """``width 32-256 -> 16-64`` for each dimension that differs."""
    return [
        f"{name} {_show_dim(getattr(old, name))} -> {_show_dim(getattr(new, name))}"
        for name in type(new).model_fields
        if getattr(old, name) != getattr(new, name)
    ]


def archive_studies(spec: StudySpec, storage: optuna.storages.BaseStorage, log: Log) -> None:
    """``--fresh``: move the spec's studies to ``<name>@<UTC time>-nn`` (and ``-gbm``).

    Optuna cannot rename a study, so each is copied (trials, attrs, artifact links) and the
    original deleted: ``<name>-nn`` stays the name every command uses for the current
    study, and the archived one stays readable by name (``hpo status``, ``hpo export``).
    Model files stay where they are: trials refer to them by artifact id.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    kept = []
    for name, kind in study_kinds(spec).items():
        if not _stored_exists(storage, name):
            continue
        archive = stored.archive_name(spec.name, stamp, kind)
        with INTERRUPTS.deferred():  # a Ctrl-C waits: no half-copied archive
            optuna.copy_study(
                from_study_name=name,
                from_storage=storage,
                to_storage=storage,
                to_study_name=archive,
            )
            optuna.delete_study(study_name=name, storage=storage)
        kept.append(archive)
    if kept:
        log(f"{spec.name}: --fresh: the earlier studies are kept as {', '.join(kept)}")


def note_target_met(
    storage: optuna.storages.BaseStorage, name: str, target: int, key: str, log: Log
) -> None:
    """Say so when a study already holds its target of finished trials."""
    if not _stored_exists(storage, name):
        return
    done = stored.count_trials(storage, name).finished
    if done >= target:
        log(
            f"{name}: {done} of {target} trials already finished; "
            f"pass --trials N (or raise {key}) to add more"
        )


def _count_outside(
    storage: optuna.storages.BaseStorage, name: str, space: NNSpace | GBMSpace
) -> tuple[int, int]:
    study_id = storage.get_study_id_from_name(name)
    finished = [
        t for t in storage.get_all_trials(study_id, deepcopy=False) if t.state in stored.DONE_STATES
    ]
    return sum(not space.contains_params(t.params) for t in finished), len(finished)


def _stored_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def _stored_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    if not _stored_exists(storage, name):
        return {}
    return storage.get_study_user_attrs(storage.get_study_id_from_name(name))


def _diff(old: Any, new: Any, key: str) -> list[tuple[str, Any, Any]]:
    """The dotted keys where two JSON values differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for k in sorted(old.keys() | new.keys())
            for change in _diff(old.get(k), new.get(k), f"{key}.{k}")
        ]
    return [] if old == new else [(key, old, new)]


def _show(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _show_dim(dim: Any) -> str:
    if isinstance(dim, IntRange | FloatRange):
        low, high = f"{dim.low:g}", f"{dim.high:g}"
        return low if low == high else f"{low}-{high}{' log' if dim.log else ''}"
    return ",".join(str(v) for v in dim)
