"""Load the serving model version from the store, checksum verified; publish a bundle made elsewhere."""

from __future__ import annotations

from sqlalchemy import Engine

from learner.bundle import ModelBundle
from learner.checkpoint import dump_bundle, load_bundle
from store.experiments import newest_candidate, place_candidate
from store.registry import (
    finish_run,
    list_versions,
    now_ms,
    serving_version,
    start_run,
    version_weights,
)


def load_serving(engine: Engine) -> tuple[dict, ModelBundle] | None:
    """(version row, bundle) of the newest promoted version, or None before the first one.

    The weights are checked against the stored sha256 before they are parsed
    (:class:`learner.checkpoint.ChecksumMismatch` otherwise).
    """
    version = serving_version(engine)
    return None if version is None else _with_bundle(engine, version)


def load_version(engine: Engine, version_id: int) -> tuple[dict, ModelBundle] | None:
    """(version row, bundle) of version ``version_id`` (checksum verified), or None when there is none."""
    version = next((v for v in list_versions(engine, ids=[version_id])), None)
    return None if version is None else _with_bundle(engine, version)


def load_candidate(engine: Engine) -> tuple[dict, ModelBundle] | None:
    """(version row, bundle) of the newest candidate in canary or waiting (``STREAMREC_ROLLOUT=canary``),
    which the next training job fine-tunes; None when there is none."""
    newest = newest_candidate(engine)
    return None if newest is None else load_version(engine, newest)


def _with_bundle(engine: Engine, version: dict) -> tuple[dict, ModelBundle]:
    weights, checksum = version_weights(engine, version["id"])
    return version, load_bundle(weights, checksum)


def load_newest(engine: Engine) -> tuple[dict, ModelBundle] | None:
    """(version row, bundle) of the newest version of any status, or None (training continues from it
    while nothing has been promoted yet)."""
    newest = list_versions(engine, limit=1)
    return _with_bundle(engine, newest[0]) if newest else None


def publish(engine: Engine, bundle: ModelBundle, reason: str, device: str = "cpu", status: str = "promoted",
            canary_share: float | None = None) -> int:
    """Store a bundle trained outside the worker (imported, or built by a benchmark), with a
    training run of window 0 for its lineage; returns the version id. It serves at once
    (``status="promoted"``), is only stored (``"rejected"``: e.g. an experiment arm), or, with
    ``canary_share``, is placed as a candidate the gate passed (its canary starts, or it waits)."""
    weights, checksum = dump_bundle(bundle)
    created = now_ms()
    run_id = start_run(engine, 0, "publish")
    candidate = canary_share is not None
    return finish_run(engine, run_id, {
        "parent_id": None, "status": "canary" if candidate else status, "reason": reason, "windows": [],
        "rehearsal_size": 0, "metrics": {}, "duration_s": 0.0, "device": device, "n_items": len(bundle.vocab.items),
        "n_users": len(bundle.vocab.users), "created_at": created,
        "promoted_at": created if status == "promoted" and not candidate else None,
        "weights": weights, "sha256": checksum, "text_encoder": bundle.text_encoder_name},
        also=(lambda conn, version_id: place_candidate(conn, version_id, canary_share, "publish")) if candidate
        else None)
