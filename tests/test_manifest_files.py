"""A manifest generation file reads back as exactly what was written, and any change to it is damage,
whatever its text holds (non-ASCII meta, control characters, big numbers): the fast reader (orjson)
must agree with the format's definition (``json.dumps``, sorted keys)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warehouse.manifest import Generation, ManifestDamaged, ManifestEntry

texts = st.text(max_size=30)
entries = st.lists(st.builds(ManifestEntry, st.just("r1"), st.sampled_from(["changes", "locations"]), texts,
                             st.one_of(st.none(), st.integers(0, 2**70)), st.one_of(st.none(), texts),
                             st.one_of(st.none(), texts)), max_size=4)
generations = st.builds(Generation, st.integers(1, 10**8), st.just("r1"), entries.map(tuple),
                        st.lists(texts, max_size=2).map(lambda xs: tuple(sorted(xs))),  # written sorted
                        st.dictionaries(texts, texts, max_size=4), texts,
                        st.lists(texts, max_size=2).map(tuple))


@settings(max_examples=300, deadline=None)
@given(generations)
def test_a_generation_file_reads_back_as_written(gen: Generation) -> None:
    data = gen.to_bytes()
    assert Generation.from_bytes(data, gen.number) == gen


@settings(max_examples=300, deadline=None)
@given(generations, st.data())
def test_any_changed_byte_of_a_generation_file_is_damage_or_changes_nothing(
        gen: Generation, data: st.DataObject) -> None:
    raw = bytearray(gen.to_bytes())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
    try:
        read = Generation.from_bytes(bytes(raw), gen.number)
    except ManifestDamaged:
        return
    assert read == gen  # only whitespace between tokens can change without changing what was written


def test_a_non_ascii_meta_value_is_read_by_the_exact_rule() -> None:
    gen = Generation(3, "r1", (), (), {"query": "lymphome non hodgkinien (é) \u2028 \x00"}, "now")
    assert Generation.from_bytes(gen.to_bytes(), 3) == gen
    with pytest.raises(ManifestDamaged):
        Generation.from_bytes(gen.to_bytes().replace(b"hodgkinien", b"hodgkiniem"), 3)
