"""Load the serving model version from the store, checksum verified."""

from __future__ import annotations

from sqlalchemy import Engine

from learner.bundle import ModelBundle
from learner.checkpoint import load_bundle
from store.registry import list_versions, serving_version, version_weights


def load_serving(engine: Engine) -> tuple[dict, ModelBundle] | None:
    """(version row, bundle) of the newest promoted version, or None before the first one.

    The weights are checked against the stored sha256 before they are parsed
    (:class:`learner.checkpoint.ChecksumMismatch` otherwise).
    """
    version = serving_version(engine)
    return None if version is None else _with_bundle(engine, version)


def _with_bundle(engine: Engine, version: dict) -> tuple[dict, ModelBundle]:
    weights, checksum = version_weights(engine, version["id"])
    return version, load_bundle(weights, checksum)


def load_newest(engine: Engine) -> tuple[dict, ModelBundle] | None:
    """(version row, bundle) of the newest version of any status, or None (training continues from it
    while nothing has been promoted yet)."""
    newest = list_versions(engine, limit=1)
    return _with_bundle(engine, newest[0]) if newest else None
