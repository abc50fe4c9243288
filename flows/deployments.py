"""``deploy/prefect.yaml``, read the way ``prefect deploy`` reads it, and served by ``trialsync serve``.

The file is the one source of the schedules: ``prefect deploy`` registers it with a Prefect server for
a worker, and ``trialsync serve`` serves the same deployments from one process (Prefect ``serve``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pydantic

from flows.inputs import SECONDS_MAX
from flows.settings import check_api_url, read_config
from pipeline.config import ConfigError, integer, known, load_yaml, number, reading
from pipeline.errors import UsageError
from pipeline.operations import check_scopes, reading_scopes
from pipeline.scope import MAX_PAGE_SIZE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_FILE = ROOT / "deploy" / "prefect.yaml"
# Parameters that name a file: like the entrypoints, relative to the clone's root, so that
# `trialsync serve` started from any directory finds them (a worker runs in the root anyway).
PATH_PARAMETERS = ("config", "rules_file")


@dataclass(frozen=True)
class Deployment:
    name: str
    entrypoint: str  # path/to/file.py:flow_function, relative to the clone's root
    parameters: dict[str, Any]
    schedules: list[Any]  # DeploymentScheduleCreate
    triggers: list[Any]  # DeploymentTriggerTypes
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    concurrency_limit: Any = None  # int | ConcurrencyLimitConfig | None

    @property
    def module(self) -> str:
        return self.entrypoint.split(":", 1)[0].removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.split(":", 1)[1]

    def available(self) -> bool:
        """Whether the entrypoint's module is present in this checkout."""
        return importlib.util.find_spec(self.module) is not None

    def load_flow(self) -> Any:
        return getattr(importlib.import_module(self.module), self.function)


def load(path: Path = DEPLOY_FILE) -> list[Deployment]:
    """Every deployment of the file, validated with Prefect's own models (as ``prefect deploy`` does),
    read strictly like every config file (``pipeline.config.load_yaml``: a key given twice, bytes that
    are not UTF-8, a file that is not a regular file are one ``FILE: what is wrong`` line)."""
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = load_yaml(read_config(path, "deployments file"), str(path))
    if not isinstance(raw, dict) or not raw.get("deployments"):
        raise UsageError(f"{path}: is not a deployments file: it has no `deployments:` list")
    try:
        _check_keys(raw)
        PrefectYamlModel.model_validate(raw)
        deployments = [_deployment(spec) for spec in raw.get("deployments") or []]
    except ConfigError as exc:
        raise UsageError(f"{path}: {exc}") from None
    except pydantic.ValidationError as exc:  # the first problem, where it is; never the value (a secret?)
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]
                        if isinstance(p, int) or not any(ch in str(p) for ch in "[("))
        what = " ".join(error["msg"].split())[:300]
        raise UsageError(f"{path}: {where.lstrip('.') or 'deployments'}: {what}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{path}: {' '.join(str(exc).split())[:300]}") from None
    names = [d.name for d in deployments]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise UsageError(f"{path}: deployments[{dupes[0]}].name: two deployments have this name")
    return deployments


def _deployment(spec: dict[str, Any]) -> Deployment:
    from prefect.cli.deploy._models import RawScheduleConfig
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    name, entrypoint = spec["name"], spec["entrypoint"]
    file, _, function = entrypoint.partition(":")
    if (not file.endswith(".py") or not function.isidentifier() or Path(file).is_absolute()
            or ".." in Path(file).parts or not all(part.isidentifier() for part in Path(file[:-3]).parts)):
        raise ConfigError(f"deployments[{name}].entrypoint",
                          f"{entrypoint!r} is not path/to/file.py:flow inside the project")
    schedules = []
    for i, config in enumerate(spec.get("schedules") or [], start=1):
        _check_cron(config, f"deployments[{name}].schedules[{i}]")
        RawScheduleConfig.model_validate(config)
        schedules.append(DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(dict(config))))
    triggers = _initialize_deployment_triggers(name, [dict(t) for t in spec.get("triggers") or []])
    return Deployment(name=name, entrypoint=entrypoint, parameters=_resolve_paths(dict(spec.get("parameters") or {})),
                      schedules=schedules, triggers=list(triggers), tags=list(spec.get("tags") or []),
                      description=spec.get("description"), concurrency_limit=_limit(spec.get("concurrency_limit")))


def _check_keys(raw: dict[str, Any]) -> None:
    """Prefect ignores keys it does not know: ``paramters:`` (a typo) would serve the flow with its
    defaults (every scope: the whole registry). Its own key ``schedule:`` is left out by ``serve``."""
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel

    # ``definitions:`` holds the YAML anchors Prefect's docs reuse (``<<: *pool``); Prefect ignores it.
    top = (*(f.alias or name for name, f in PrefectYamlModel.model_fields.items()), "definitions")
    known(raw, top, "")
    if not isinstance(raw["deployments"], list):
        return  # Prefect's model names it
    for i, spec in enumerate(raw["deployments"], start=1):
        if not isinstance(spec, dict):
            continue
        key = f"deployments[{spec.get('name') or f'#{i}'}]"
        if "schedule" in spec:
            raise ConfigError(f"{key}.schedule", "write it as a list: `schedules: [{cron: ...}]`")
        known(spec, tuple(n for n in DeploymentConfig.model_fields if n != "schedule"), key)
        tags = spec.get("tags")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) and t for t in tags)):
            raise ConfigError(f"{key}.tags", "must be a list of texts: `tags: [trialsync]`")
        limit = spec.get("concurrency_limit")
        if limit is not None:
            integer(limit.get("limit") if isinstance(limit, dict) else limit, f"{key}.concurrency_limit",
                    low=1, high=1000)


# What croniter (and so Prefect) takes for a whole cron line; @reboot it does not.
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def _check_cron(config: Any, key: str) -> None:
    """What Prefect accepts but no user means: a cron of 6 fields (seconds), one that never fires
    (``0 0 30 2 *``), an empty timezone (taken as UTC)."""
    from prefect._vendor.croniter import croniter

    if not isinstance(config, dict):
        return
    if config.get("timezone") == "":
        raise ConfigError(f"{key}.timezone", "is empty; name an IANA time zone (America/New_York) or leave it out "
                                             "for UTC")
    cron = config.get("cron")
    if not isinstance(cron, str):
        return
    if cron.strip().lower() in CRON_MACROS:
        return
    if len(cron.split()) != 5:
        raise ConfigError(f"{key}.cron", f"{cron!r} must have 5 fields: minute hour day-of-month month day-of-week "
                                         f"(or one of {', '.join(CRON_MACROS)})")
    try:
        croniter(cron, datetime(2026, 1, 1)).get_next(datetime)  # a day that exists fires within a leap cycle
    except (ValueError, TypeError, KeyError):
        if croniter.is_valid(cron):  # valid fields, but no date matches them
            raise ConfigError(f"{key}.cron", f"{cron!r} never fires (no date matches it)") from None


def _resolve_paths(parameters: dict[str, Any]) -> dict[str, Any]:
    return {key: str(ROOT / value) if key in PATH_PARAMETERS and isinstance(value, str) and value
            and not Path(value).expanduser().is_absolute() else value for key, value in parameters.items()}


def _limit(value: Any) -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    if isinstance(value, dict):
        return ConcurrencyLimitConfig(limit=value["limit"], collision_strategy=ConcurrencyLimitStrategy(
            value.get("collision_strategy", "ENQUEUE")))
    return value


def runner_deployments(deployments: list[Deployment]) -> list[Any]:
    """Prefect ``RunnerDeployment``s to ``serve`` (deployments whose flow is absent are left out)."""
    served = []
    for d in deployments:
        if not d.available():
            continue
        deployment = d.load_flow().to_deployment(
            name=d.name, parameters=d.parameters, schedules=d.schedules, triggers=d.triggers or None, tags=d.tags,
            description=d.description, concurrency_limit=d.concurrency_limit)
        # The file's entrypoint (a Prefect flow), relative to where serve runs, as Prefect's own would be.
        path, function = d.entrypoint.split(":", 1)
        deployment.entrypoint = f"{os.path.relpath(ROOT / path)}:{function}"
        served.append(deployment)
    return served


def describe(d: Deployment) -> str:
    when = "; ".join(_when(s) for s in d.schedules) or ("on an event" if d.triggers else "on demand")
    return f"{d.name}: {d.entrypoint}, {when}" + ("" if d.available() else " (flow not present: left out)")


def _when(schedule: Any) -> str:
    s = schedule.schedule
    return f"cron '{s.cron}' {s.timezone or 'UTC'}" if hasattr(s, "cron") else str(s)


def check_config_files(deployments: list[Deployment], path: Path = DEPLOY_FILE, *, environment: bool = True) -> None:
    """Each deployment's parameters (``path`` is the deployments file), and the config files they name
    (a watchlist ``config``, a ``rules_file``), validated whole before anything is served: one
    ``FILE: key: what is wrong`` line, exit 2. Relative paths are the project's (the flows run in the
    clone's root). ``environment``: also that the watchlists' environment variables are set (when
    serving; ``serve --list`` does not need them)."""
    from flows import settings
    from flows.alert_config import check_config

    for d in deployments:
        params = d.parameters
        if "scopes" in params:  # before Prefect's own check: ours names the scope and the key
            with reading_scopes(f"{path}: "):
                if params["scopes"] is None:  # `scopes:` written with nothing under it
                    raise ConfigError(f"deployments[{d.name}].parameters.scopes",
                                      "is empty; leave `scopes` out to sync the whole registry")
                check_scopes(params["scopes"], f"deployments[{d.name}].parameters.scopes")
        if d.available():  # the flow's own parameter types (``full: maybe`` fails here, not at 10:00)
            _check_parameters(d, path)
        _check_values(d, path)
        if isinstance(params.get("config"), str):
            check_config(_in_project(params["config"]), environment=environment)  # and the variables it names
        if isinstance(params.get("rules_file"), str):
            settings.rules(str(_in_project(params["rules_file"])), {})


def _check_values(d: Deployment, path: Path) -> None:
    """The parameters Prefect's types let through but no run can use: a negative lateness skips every
    run, a NaN fails each at 10:00, a URL with credentials is stored with each run."""
    params, key = d.parameters, f"deployments[{d.name}].parameters"
    with reading(str(path)):
        if "max_lateness_hours" in params:
            number(params["max_lateness_hours"], f"{key}.max_lateness_hours", positive=True, high=24 * 366)
        if "page_size" in params:
            integer(params["page_size"], f"{key}.page_size", low=1, high=MAX_PAGE_SIZE)
        if "request_interval" in params:
            number(params["request_interval"], f"{key}.request_interval", high=3600)
        for name in ("retry_budget", "lock_timeout"):  # a NaN budget slept a receiver's 86400 s Retry-After
            if name in params:
                number(params[name], f"{key}.{name}", high=SECONDS_MAX)
        for name in ("warehouse", "api_url", *PATH_PARAMETERS):
            value = params.get(name, ...)  # written with nothing (None) or blank: not the default
            if value is None or (isinstance(value, str) and not value.strip()):
                raise ConfigError(f"{key}.{name}", "is empty; leave it out for the default")
        if isinstance(params.get("warehouse", ""), str):  # one DuckDB reads as a pattern: every run refused
            _check_warehouse(params.get("warehouse"), f"{key}.warehouse")
        if isinstance(params.get("api_url"), str):
            try:
                check_api_url(params["api_url"])
            except UsageError as exc:
                raise ConfigError(f"{key}.api_url", str(exc).removeprefix("--api-url ")) from None


def _check_warehouse(value: str | None, key: str) -> None:
    """A warehouse path every run would refuse (``*``, ``?``, ``[`` or ``\\``), also the default's."""
    from flows import settings
    from warehouse.catalog_file import refuse_pattern_path

    try:
        refuse_pattern_path(_in_project(str(settings.warehouse_dir(value))).resolve())
    except UsageError as exc:
        raise ConfigError(key if value else f"{key} (the default)", str(exc)) from None


def _check_parameters(d: Deployment, path: Path) -> None:
    try:
        flow = d.load_flow()  # first: importing Prefect's flows configures its loggers (and their levels)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{path}: deployments[{d.name}].entrypoint: {' '.join(str(exc).split())[:200]}") from None
    flows_log = logging.getLogger("prefect.flows")  # it logs the failure too, with every parameter's value
    level = flows_log.level
    flows_log.setLevel(logging.CRITICAL)
    try:
        flow.validate_parameters(d.parameters)
    except Exception as exc:  # Prefect's ParameterTypeError, or a pydantic error
        raise UsageError(f"{path}: deployments[{d.name}].parameters: {' '.join(str(exc).split())[:300]}") from None
    finally:
        flows_log.setLevel(level)


def _in_project(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else ROOT / path
