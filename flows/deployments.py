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
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UsageError
from pipeline.operations import scope_kwargs

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
    """Every deployment of the file, validated with Prefect's own models (as ``prefect deploy`` does)."""
    from prefect.cli.deploy._models import PrefectYamlModel

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw.get("deployments"):
        raise UsageError(f"{path} is not a deployments file: it has no `deployments:` list")
    try:
        PrefectYamlModel.model_validate(raw)
        return [_deployment(spec) for spec in raw.get("deployments") or []]
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"{path}: {str(exc).splitlines()[0]}") from None


def _deployment(spec: dict[str, Any]) -> Deployment:
    from prefect.cli.deploy._models import RawScheduleConfig
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    name, entrypoint = spec["name"], spec["entrypoint"]
    if ":" not in entrypoint:
        raise ValueError(f"deployment {name}: entrypoint {entrypoint!r} is not path/to/file.py:flow")
    schedules = []
    for config in spec.get("schedules") or []:
        RawScheduleConfig.model_validate(config)
        schedules.append(DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(dict(config))))
    triggers = _initialize_deployment_triggers(name, [dict(t) for t in spec.get("triggers") or []])
    return Deployment(name=name, entrypoint=entrypoint, parameters=_resolve_paths(dict(spec.get("parameters") or {})),
                      schedules=schedules, triggers=list(triggers), tags=list(spec.get("tags") or []),
                      description=spec.get("description"), concurrency_limit=_limit(spec.get("concurrency_limit")))


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


def check_config_files(deployments: list[Deployment]) -> None:
    """The config files the deployments name (a watchlist ``config``, a ``rules_file``), validated
    whole before anything is served: one ``FILE: key: what is wrong`` line, exit 2. Relative paths
    are the project's (the flows run in the clone's root)."""
    from flows import settings
    from flows.alerts import load_watchlist

    for d in deployments:
        params = d.parameters
        if d.available():  # the flow's own parameter types (``full: maybe`` fails here, not at 10:00)
            _check_parameters(d)
        if "scopes" in params:
            try:
                scope_kwargs(params["scopes"])
            except UsageError as exc:
                raise UsageError(f"deployment {d.name}: {exc}") from None
        if isinstance(params.get("config"), str):
            load_watchlist(_in_project(params["config"]))
        if isinstance(params.get("rules_file"), str):
            settings.rules(str(_in_project(params["rules_file"])), {})


def _check_parameters(d: Deployment) -> None:
    flows_log = logging.getLogger("prefect.flows")  # it logs the failure too, outside any flow run
    level = flows_log.level
    flows_log.setLevel(logging.CRITICAL)
    try:
        d.load_flow().validate_parameters(d.parameters)
    except Exception as exc:  # Prefect's ParameterTypeError, or a pydantic error
        raise UsageError(f"deployment {d.name}: {' '.join(str(exc).split())[:300]}") from None
    finally:
        flows_log.setLevel(level)


def _in_project(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else ROOT / path
