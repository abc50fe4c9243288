"""What an alert says, rendered for each kind of channel. Pure.

One ``Message`` goes to one channel: a watch's changes of one study (immediate) or of every study
it follows (digest), each change with its field, old -> new, shift / percent, severity, and links to
the registry's record and its history tab.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pipeline.abbreviate import abbreviate_pair
from pipeline.changes import SEVERITIES

REGISTRY_STUDY_URL = "https://clinicaltrials.gov/study/{nct_id}"
SLACK_MAX_BLOCKS = 50
SLACK_MAX_TEXT = 2900  # Slack's limit for one section's text is 3,000 characters


@dataclass(frozen=True)
class AlertChange:
    """One row of ``changes`` as an alert tells it (with its study's title)."""

    change_id: str
    nct_id: str
    title: str | None
    field: str
    event: str
    category: str
    severity: str
    old_value: str | None
    new_value: str | None
    shift_days: int | None = None
    pct_change: float | None = None
    registry_updated: date | None = None
    from_version: int | None = None
    to_version: int | None = None
    path: str | None = None  # the JSON path (not in the payload; part of ``content_keys``)
    detected_at: datetime | None = None  # when the change's new version was observed (likewise)
    detail: str | None = None  # a compliance alert's sentence: sponsor, due date, days overdue
    facts: tuple[tuple[str, Any], ...] = ()  # ... and its values (payload ``fdaaa``)

    def content_keys(self) -> tuple[str, str]:
        """What the change is, independent of its ``change_id``: the study reached ``new_value`` by
        ``event`` at ``path``, (1) on the registry date and (2) in the version we observed at
        ``detected_at``. The ledger matches on either, so a change whose id was rewritten (a
        backfill's renumbering, a new id scheme, a content hash migration) is not alerted again.
        Two keys, because a backfill can move each of them: it dates the observed version by the
        registry's history (a day off ``lastUpdatePostDate`` at times), while the observation time
        stays; a study observed twice on one registry date keeps the registry key apart. The old
        value is left out: a backfill can put versions between the two a sync compared (RECRUITING
        -> COMPLETED becomes ACTIVE_NOT_RECRUITING -> COMPLETED), which is the same news."""
        what = [self.nct_id, self.event, self.path or self.field, self.new_value]
        registry = ["registry", *what, self.registry_updated.isoformat() if self.registry_updated else None]
        observed = ["observed", *what, self.detected_at.isoformat() if self.detected_at else None]
        return _key(registry), _key(observed)

    def summary(self, width: int = 200) -> str:
        """``completion date: 2027-04-15 → 2027-05-31 (+46 days)``."""
        old, new = abbreviate_pair(self.old_value, self.new_value, width)
        text = f"{self.field}: {old} → {new}"
        if self.shift_days is not None:
            text += f" ({self.shift_days:+d} days)"
        if self.pct_change is not None:
            text += f" ({self.pct_change:+.1f}%)"
        return text

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "change_id": self.change_id, "field": self.field, "event": self.event, "category": self.category,
            "severity": self.severity, "old_value": self.old_value, "new_value": self.new_value,
            "shift_days": self.shift_days, "pct_change": self.pct_change,
            "registry_updated": self.registry_updated.isoformat() if self.registry_updated else None,
            "from_version": self.from_version, "to_version": self.to_version,
        }
        if self.detail is not None:  # a compliance alert (a change of the record has neither)
            data |= {"detail": self.detail, "fdaaa": dict(self.facts)}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], nct_id: str, title: str | None) -> AlertChange:
        updated = data.get("registry_updated")
        return cls(change_id=data["change_id"], nct_id=nct_id, title=title, field=data["field"],
                   event=data["event"], category=data["category"], severity=data["severity"],
                   old_value=data.get("old_value"), new_value=data.get("new_value"),
                   shift_days=data.get("shift_days"), pct_change=data.get("pct_change"),
                   registry_updated=date.fromisoformat(updated) if updated else None,
                   from_version=data.get("from_version"), to_version=data.get("to_version"),
                   detail=data.get("detail"), facts=tuple((data.get("fdaaa") or {}).items()))


@dataclass(frozen=True)
class StudyAlert:
    nct_id: str
    title: str | None
    changes: tuple[AlertChange, ...]

    @property
    def url(self) -> str:
        return REGISTRY_STUDY_URL.format(nct_id=self.nct_id)

    @property
    def history_url(self) -> str:
        return f"{self.url}?tab=history"

    @property
    def severity(self) -> str:
        return max((c.severity for c in self.changes), key=SEVERITIES.index)

    def heading(self) -> str:
        return f"{self.nct_id}: {self.title}" if self.title else self.nct_id

    def as_dict(self) -> dict[str, Any]:
        return {"nct_id": self.nct_id, "title": self.title, "url": self.url, "history_url": self.history_url,
                "severity": self.severity, "changes": [c.as_dict() for c in self.changes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyAlert:
        return cls(data["nct_id"], data.get("title"),
                   tuple(AlertChange.from_dict(c, data["nct_id"], data.get("title")) for c in data["changes"]))


@dataclass(frozen=True)
class Message:
    """One message to one channel; ``keys`` are the ledger entries it delivers."""

    message_id: str
    watch: str
    channel: str
    mode: str  # immediate | digest | test
    run_id: str
    created_at: datetime
    studies: tuple[StudyAlert, ...]

    @property
    def changes(self) -> list[AlertChange]:
        return [c for s in self.studies for c in s.changes]

    @property
    def keys(self) -> list[tuple[str, str, str]]:
        return [(self.watch, self.channel, c.change_id) for c in self.changes]

    @property
    def severity(self) -> str:
        return max((s.severity for s in self.studies), key=SEVERITIES.index)

    @property
    def subject(self) -> str:
        test = "[test] " if self.mode == "test" else ""
        if len(self.studies) == 1 and self.mode != "digest":
            study = self.studies[0]
            first = study.changes[0]
            more = f" (+{len(study.changes) - 1} more)" if len(study.changes) > 1 else ""
            return f"[trialsync] {test}{self.watch}: {study.nct_id} {first.summary(40)}{more}"
        n, k = len(self.changes), len(self.studies)
        return (f"[trialsync] {test}{self.watch} digest: {n} change{'s' if n != 1 else ''} "
                f"in {k} stud{'ies' if k != 1 else 'y'}")

    def text(self) -> str:
        """Plain text (e-mail body, Apprise, feed content)."""
        lines = [self.subject, "", f"Watch: {self.watch} ({self.mode}, run {self.run_id})"]
        for study in self.studies:
            lines += ["", study.heading()]
            for c in study.changes:
                lines.append(f"  [{c.severity}] {c.summary()}  ({c.event})")
                lines += [f"    {c.detail}"] if c.detail else []
            lines += [f"  Study:   {study.url}", f"  History: {study.history_url}"]
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        lines = [f"**{_md(self.subject)}**", "", f"Watch: `{self.watch}` ({self.mode})"]
        for study in self.studies:
            lines += ["", f"[{study.nct_id}]({study.url}): {_md(study.title or '')} "
                          f"([history]({study.history_url}))"]
            lines += [f"- **{c.severity}** {_md(c.summary())} (`{c.event}`)"
                      + (f": {_md(c.detail)}" if c.detail else "") for c in study.changes]
        return "\n".join(lines) + "\n"

    def payload(self) -> dict[str, Any]:
        """The generic JSON webhook's body (also kept whole in each feed item)."""
        return {
            "source": "trialsync", "kind": self.mode, "message_id": self.message_id, "watch": self.watch,
            "channel": self.channel, "run_id": self.run_id, "created_at": self.created_at.isoformat(),
            "subject": self.subject, "severity": self.severity, "studies": [s.as_dict() for s in self.studies],
            "text": self.text(),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Message:
        """The message as ``payload()`` gave it: the outbox re-sends a stored message unchanged."""
        return cls(payload["message_id"], payload["watch"], payload["channel"], payload["kind"], payload["run_id"],
                   datetime.fromisoformat(payload["created_at"]),
                   tuple(StudyAlert.from_dict(s) for s in payload["studies"]))

    def slack(self) -> dict[str, Any]:
        """``text`` (the notification's fallback) and Block Kit ``blocks``, within Slack's limits."""
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": self.subject[:150]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"watch *{_slack(self.watch)}* · "
                                                                          f"{self.mode} · run {self.run_id}"}]},
        ]
        room = SLACK_MAX_BLOCKS - len(blocks) - 1
        for study in self.studies[:room]:
            lines = [f"*<{study.url}|{study.nct_id}>* {_slack(study.title or '')} (<{study.history_url}|history>)"]
            lines += [f"• *{c.severity}* {_slack(c.summary(120))}" + (f"\n  {_slack(c.detail)}" if c.detail else "")
                      for c in study.changes]
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut("\n".join(lines))}})
        if len(self.studies) > room:
            blocks.append({"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"… and {len(self.studies) - room} more studies"}]})
        return {"text": self.subject, "blocks": blocks}


def message_id(watch: str, channel: str, change_ids: Iterable[str]) -> str:
    """The same watch, channel and changes give the same id (a receiver can drop a repeat)."""
    key = "|".join([watch, channel, *sorted(change_ids)])
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def _key(parts: list[str | None]) -> str:
    text = "\x1f".join("\x00" if p is None else p for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()




def _cut(text: str) -> str:
    return text if len(text) <= SLACK_MAX_TEXT else text[: SLACK_MAX_TEXT - 1] + "…"


def _md(text: str) -> str:
    return text.replace("*", "\\*").replace("_", "\\_")


def _slack(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
