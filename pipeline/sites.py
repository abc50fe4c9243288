"""Site identity: what a site is called, and when two versions of a site are one site.

SPEC identifies a site by facility, city, state, zip and country. The diff groups sites by those
fields compared blind to case and whitespace (``normalised``); sites left over on both sides are then
paired by ``pair_sites`` when they are one site with edited identity fields, before the rest count as
removed and added. ``site_name`` is how change rows name a site.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

Json = Any


def _text(value: Json) -> str:
    return "" if value is None else str(value)


def site_key(site: Mapping[str, Json]) -> str:
    return " | ".join(_text(site.get(k)) for k in ("facility", "city", "state", "zip", "country"))


def site_name(site: Mapping[str, Json]) -> str | None:
    """A site in words: its facility, or where it is when it has none (69 of 3,396 real sites)."""
    facility = site.get("facility")
    if isinstance(facility, str) and facility.strip():
        return facility
    place = [_text(site.get(k)).strip() for k in ("city", "state", "country")]
    return ", ".join(p for p in place if p) or None


SITE_FIELDS = ("facility", "city", "state", "zip", "country")


def normalised(text: str) -> str:
    """Identity text compared blind to case and runs of whitespace (``"Mayo Clinic "`` is ``"mayo clinic"``)."""
    return " ".join(text.split()).casefold()


SiteIdentity = tuple[str, ...]  # the normalised SITE_FIELDS


def site_identity(site: Mapping[str, Json]) -> SiteIdentity:
    return tuple(normalised(_text(site.get(f))) for f in SITE_FIELDS)


def site_affinity(a: SiteIdentity, b: SiteIdentity) -> int | None:
    """How alike two sites' identities are (fields in common), or None if they cannot be one site.

    One site may have identity fields filled in or emptied, its zip or state corrected (the facility
    the same), or its facility's name edited slightly (everything else the same, in the same city).
    Another city or country, two corrected fields, or another facility in the same place make it
    another site (``Research Site`` in Berlin and in Munich are two sites).
    """
    conflicts = {f for f, x, y in zip(SITE_FIELDS, a, b, strict=True) if x and y and x != y}
    shared = {f for f, x, y in zip(SITE_FIELDS, a, b, strict=True) if x and x == y}
    if conflicts == {"facility"}:
        matcher = difflib.SequenceMatcher(None, a[0], b[0])
        similar = matcher.real_quick_ratio() >= 0.85 and matcher.quick_ratio() >= 0.85 and matcher.ratio() >= 0.85
        return len(shared) if similar and "city" in shared else None
    if not conflicts <= {"zip", "state"} or len(conflicts) > 1:
        return None
    if "facility" in shared or (not conflicts and "city" in shared and not (a[0] and b[0])):
        return len(shared)
    return None


def pair_sites(removed: list[Mapping[str, Json]], added: list[Mapping[str, Json]]) -> list[tuple[int, int]]:
    """(removed index, added index) of the sites that are one site, best match first, ties by order.
    Only sites sharing a facility or a city can be one, so only those are compared (a study of 1,000
    sites that replaces them all costs thousands of comparisons, not a million)."""
    olds, news = [site_identity(o) for o in removed], [site_identity(n) for n in added]
    by_facility: dict[str, list[int]] = {}
    by_city: dict[str, list[int]] = {}
    for j, n in enumerate(news):
        if n[0]:
            by_facility.setdefault(n[0], []).append(j)
        if n[1]:
            by_city.setdefault(n[1], []).append(j)
    scored = []
    for i, o in enumerate(olds):
        for j in sorted({*by_facility.get(o[0], []), *by_city.get(o[1], [])} if o[0] or o[1] else set()):
            if (score := site_affinity(o, news[j])) is not None:
                scored.append((-score, i, j))
    chosen: dict[int, int] = {}
    taken: set[int] = set()
    for _, i, j in sorted(scored):
        if i not in chosen and j not in taken:
            chosen[i] = j
            taken.add(j)
    return sorted(chosen.items())
