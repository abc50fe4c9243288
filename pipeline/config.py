"""Config files (severity rules, watchlists), read strictly. Pure: text in, values or one clear line out.

Every problem is a ``ConfigError(key, what)``; ``reading(source)`` turns it into the one-line
``UsageError`` ``FILE: key: what is wrong`` (with the valid values where they form a set). Keys
are dotted paths into the file (``severity.events.status_chnged``, ``watches[aml].since``).
YAML's own surprises are closed: a key given twice is an error (PyYAML keeps the last one
silently), and dates stay text until a validator checks them (PyYAML would raise a bare
``ValueError`` for ``2026-13-45``).
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from typing import Any

import yaml

from pipeline.changes import EVENTS, SEVERITIES, Rules
from pipeline.enums import STATUSES
from pipeline.errors import UsageError


class ConfigError(Exception):
    def __init__(self, key: str, what: str) -> None:
        super().__init__(f"{key}: {what}" if key else what)
        self.key, self.what = key, what


@contextmanager
def reading(source: str) -> Iterator[None]:
    """Any ``ConfigError`` inside becomes ``UsageError("SOURCE: key: what")``."""
    try:
        yield
    except ConfigError as exc:
        raise UsageError(f"{source}: {exc}") from None


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML; a repeated key is an error; timestamps stay text (checked by ``a_date``)."""


_MERGE = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """A key the mapping itself gives twice is an error; a YAML merge key (``<<: *pool``, as Prefect's
    docs use) is flattened first and its keys may be overridden by the mapping's own, as YAML says."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:
            continue
        if not isinstance(key_node, yaml.ScalarNode):  # ``? [a, b]``: PyYAML would fail unhashable
            line = key_node.start_mark.line + 1
            raise ConfigError("", f"a key must be a plain name, not a list or mapping (line {line})")
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(str(key), f"given twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    loader.flatten_mapping(node)  # the merged keys first, the mapping's own after them (they win)
    return dict(yaml.SafeLoader.construct_mapping(loader, node, deep=deep))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
def _timestamp_as_text(loader: _StrictLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)
# Whole numbers are decimal: YAML 1.1 also reads 010 as 8, 0x10 as 16, 1:30 as 90 and 1_000 as 1000,
# none of which a user means in a config file (they stay text, and the validator names them).
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
                                    list("-+0123456789"))


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``; one ``UsageError`` line naming ``source`` when it does not parse."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        raise UsageError(f"{source}: {exc}") from None
    except RecursionError:  # ``[[[[...`` thousands deep: PyYAML's parser recurses per level
        raise UsageError(f"{source}: is not a config file: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise UsageError(f"{source}: is not valid YAML{where}: {problem}") from None


# -- validators: each takes the value and its key, returns the checked value or raises ConfigError ----
def mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a mapping (key: value), got {show(value)}")
    return value


def known(spec: Mapping[Any, Any], allowed: tuple[str, ...], key: str) -> None:
    """Every key of ``spec`` is one of ``allowed``."""
    if unknown := sorted(str(k) for k in spec if k not in allowed):
        raise ConfigError(_join(key, unknown[0]), f"unknown key; valid: {', '.join(allowed)}")


def texts(value: Any, key: str) -> tuple[str, ...]:
    """A text or a list of texts (each non-empty, stripped)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(key, f"must be a text or a list of texts, got {show(value)}{_yaml_boolean(items)}")
    return tuple(v.strip() for v in items)


def choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if value not in allowed:
        raise ConfigError(key, f"unknown value {show(value)}; valid: {', '.join(allowed)}{_yaml_boolean(value)}")
    return str(value)


def _yaml_boolean(value: Any) -> str:
    """A hint when a text the user wrote became a boolean: YAML reads unquoted yes/no/on/off/true/false
    (in any case: ``NO``, Norway's code, too) as true/false."""
    found = isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value))
    return " (YAML reads an unquoted yes/no/on/off/true/false as true/false: quote the text, e.g. 'NO')" \
        if found else ""


def choices(value: Any, allowed: tuple[str, ...], key: str, *, what: str = "value") -> tuple[str, ...]:
    values = texts(value, key)
    if bad := [v for v in values if v not in allowed]:
        raise ConfigError(key, f"unknown {what} {bad[0]!r}; valid: {', '.join(allowed)}")
    return values


def integer(value: Any, key: str, *, low: int, high: int | None = None) -> int:
    limit = _SANE if high is None else high
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= limit:
        raise ConfigError(key, f"must be a whole number >= {low}{_at_most(value, high, limit)}, got {show(value)}")
    return value


def number(value: Any, key: str, *, low: float = 0.0, positive: bool = False, high: float | None = None) -> float:
    """A finite number (YAML's ``.nan`` and ``.inf`` are not) within the bounds."""
    limit = _SANE if high is None else high
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or (isinstance(value, float) and not math.isfinite(value))  # an int has no NaN (and may not fit a float)
            or not low <= value <= limit or (positive and value <= 0)):
        bound = "> 0" if positive else f">= {low:g}"
        raise ConfigError(key, f"must be a number {bound}{_at_most(value, high, limit)}, got {show(value)}")
    return float(value)


_SANE = 10**9  # no setting means more than this; bigger values overflow dates and timers downstream


def _at_most(value: Any, high: float | None, limit: float) -> str:
    """The upper bound, in the message when the key has one or the value passed the general one."""
    past = isinstance(value, int | float) and not isinstance(value, bool) and value > limit
    return f" and <= {limit:g}" if high is not None or past else ""


def a_date(value: Any, key: str) -> date | None:
    if value is None or (isinstance(value, date)):
        return value
    try:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise ValueError(value)  # Python also takes 20260101 (a YAML number here) and 2026-W01-1
        return date.fromisoformat(value)
    except ValueError as exc:
        reason = f" ({exc})" if "must be in" in str(exc) or "out of range" in str(exc) else ""
        raise ConfigError(key, f"not a real date: {show(value)}{reason}; expected YYYY-MM-DD") from None


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


_SHORT = reprlib.Repr()  # bounded at every level: a YAML alias bomb must not be expanded to be shown
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple, _SHORT.maxset = 3, 4, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def show(value: Any) -> str:
    """A value, shortened for a one-line error (never expanded whole: see ``_SHORT``)."""
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


# -- the severity rules file (``--rules`` on sync and rederive) ------------------------------------
RULES_KEYS = ("critical_statuses", "enrollment_pct_notable", "date_shift_days_notable", "events")


def parse_rules(text: str, source: str) -> Rules:
    """A rules file: ``severity:`` with any of ``RULES_KEYS``; every value checked, nothing defaulted
    silently over a typo. One ``UsageError`` line ``SOURCE: key: what is wrong`` otherwise."""
    data = load_yaml(text, source)
    with reading(source):
        if data is None:  # an empty file (or only comments): a truncated save, not "the defaults"
            raise ConfigError("", "is empty; expected a `severity:` mapping")
        top = mapping(data, "")
        known(top, ("severity",), "")
        if top.get("severity") is None:
            raise ConfigError("severity", f"is empty; give one or more of: {', '.join(RULES_KEYS)}")
        spec = mapping(top.get("severity"), "severity")
        known(spec, RULES_KEYS, "severity")
        defaults = Rules()
        events = mapping(spec.get("events"), "severity.events")
        for event, level in events.items():
            choices([event] if isinstance(event, str) else event, EVENTS, "severity.events", what="event")
            choice(level, SEVERITIES, f"severity.events.{event}")
        statuses = texts(spec.get("critical_statuses", list(defaults.critical_statuses)), "severity.critical_statuses")
        return Rules(  # statuses in any case, as a watch's `status:` takes them
            critical_statuses=choices([s.upper() for s in statuses], STATUSES, "severity.critical_statuses",
                                      what="status"),
            enrollment_pct_notable=number(spec.get("enrollment_pct_notable", defaults.enrollment_pct_notable),
                                          "severity.enrollment_pct_notable"),
            date_shift_days_notable=integer(spec.get("date_shift_days_notable", defaults.date_shift_days_notable),
                                            "severity.date_shift_days_notable", low=0),
            events=dict(events),
        )
