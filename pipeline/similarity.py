"""How alike two texts are, by a rule SQL can compute too.

``pair_by_text`` pairs a removed primary outcome with the added one most like it (a measure reworded is
one change, not a removal and an addition). The view ``registered_vs_current`` (``warehouse.analyses``)
pairs the first and the current version's outcomes by the same rule in DuckDB SQL, so the distance here
is DuckDB's own ``levenshtein`` (edits of UTF-8 bytes) divided by the longer text's length in bytes
(``strlen``), and ties are broken by the texts themselves, then by order: the same floats and the same
order in both places.
"""

from __future__ import annotations

from pipeline.sites import normalised

# The characters Python's ``str.split()`` splits on (``str.isspace``), as an RE2 class for SQL.
WHITESPACE_RE2 = (r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
                  r"\x{202f}\x{205f}\x{3000}]+")


def identity_sql(column: str) -> str:
    """SQL of ``normalised`` (runs of whitespace as one space, trimmed, lower case) of NFC text ``column``
    (NULL as ''). Case: SQL's ``lower`` where Python folds case (``casefold``); the two differ only for the
    few characters whose folding is not their lower case (``ß``, ``İ``, final sigma, ligatures)."""
    return f"lower(trim(regexp_replace(coalesce({column}, ''), '{WHITESPACE_RE2}', ' ', 'g'), ' '))"


def levenshtein(a: bytes, b: bytes) -> int:
    """Edits (insert, delete, substitute one byte) turning ``a`` into ``b``: Myers' bit-parallel
    algorithm (Hyyrö's form), one pass over ``b`` with ``a`` as bit masks; DuckDB's ``levenshtein``."""
    if len(a) < len(b):
        a, b = b, a
    m = len(a)
    if not b:
        return m
    peq: dict[int, int] = {}
    for i, c in enumerate(a):
        peq[c] = peq.get(c, 0) | (1 << i)
    mask = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for c in b:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def distance(a: str, b: str) -> float:
    """0 for the same text, 1 for nothing in common: ``levenshtein`` over the longer one's length (bytes)."""
    x, y = a.encode(), b.encode()
    longest = max(len(x), len(y))
    return levenshtein(x, y) / longest if longest else 0.0


def pair_by_text(olds: list[str], news: list[str]) -> list[tuple[int, int]]:
    """(old index, new index) pairs, most alike texts first (``distance`` of their ``normalised`` forms,
    blind to case and whitespace), ties by the normalised texts, then by order; as many as the shorter side
    has; by old index."""
    old_keys, new_keys = [normalised(o) for o in olds], [normalised(n) for n in news]
    scored = sorted((distance(o, n), o, n, i, j)
                    for i, o in enumerate(old_keys) for j, n in enumerate(new_keys))
    chosen: dict[int, int] = {}
    taken: set[int] = set()
    for *_, i, j in scored:
        if i not in chosen and j not in taken:
            chosen[i] = j
            taken.add(j)
    return sorted(chosen.items())
