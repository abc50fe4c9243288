"""Canonical content hash of a record's material sections."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# The registry re-derives derivedSection (MeSH trees, versionHolder) on its own schedule, so a
# change there alone is not a change of the study.
NON_MATERIAL_SECTIONS = frozenset({"derivedSection"})


def material_content(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in NON_MATERIAL_SECTIONS}


def canonical_json(value: Any) -> bytes:
    """Key-sorted, whitespace-free JSON: the same content gives the same bytes from any source."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def content_hash(record: Mapping[str, Any]) -> str:
    """128-bit BLAKE2b of the canonical JSON of the material sections, as hex."""
    return hashlib.blake2b(canonical_json(material_content(record)), digest_size=16).hexdigest()
