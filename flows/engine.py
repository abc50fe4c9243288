"""Where a flow runs: under Prefect's engine when a Prefect server is there, as plain calls when not.

``flow`` and ``task`` wrap a function the way Prefect's decorators do. Calling the flow then runs

- as a **Prefect flow run** (tasks are task runs, logs and artifacts go to the server, the UI shows
  it) when a Prefect run is already active (a deployment, a subflow) or a Prefect server is
  configured: ``PREFECT_API_URL`` in the environment or the active Prefect profile;
- **in process** otherwise: the same function and the same task functions, called directly, with a
  thread pool for ``submit``; logs go to Python logging and artifacts are skipped (everything they
  show is in the warehouse). No temporary Prefect server starts (7-8 s per command) and Prefect is
  not even imported (~1.5 s of CPU), so an ad hoc command costs only its own work.

``TRIALSYNC_ENGINE=prefect`` forces Prefect (with its temporary server when none is configured),
``TRIALSYNC_ENGINE=plain`` forces the in-process path. The Prefect objects themselves are built on
first use (``.prefect``); deployment entrypoints must name a real Prefect flow (``flows/scheduled.py``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import as_completed as _cf_as_completed
from concurrent.futures import wait as _cf_wait
from contextlib import contextmanager, suppress
from contextvars import ContextVar, copy_context
from pathlib import Path
from typing import Any

from flows import lifecycle

ENGINE_ENV = "TRIALSYNC_ENGINE"
_ENGINES = ("auto", "prefect", "plain")
# Only the threads of a plain run's ``submit``; under Prefect the flow's task runner decides.
DEFAULT_THREADS = 4
NONE = "NONE"  # ``cache_policy=NONE``: Prefect's ``prefect.cache_policies.NONE`` (the default here too)


class _PlainRun:
    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"trialsync-{self.name}")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


_PLAIN: ContextVar[_PlainRun | None] = ContextVar("trialsync_plain_run", default=None)


def engine_setting() -> str:
    value = (os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if value not in _ENGINES:
        from pipeline.errors import UsageError

        raise UsageError(f"{ENGINE_ENV} must be one of {', '.join(_ENGINES)}, not {value!r}")
    return value


def prefect_run_active() -> bool:
    """Inside a Prefect flow or task run (a deployment's run, a subflow, a task)."""
    if "prefect.context" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def prefect_server_configured() -> bool:
    """``PREFECT_API_URL`` from Prefect's settings (when Prefect is loaded: also a test harness's
    temporary settings), else from the environment or the active profile, read without Prefect."""
    if "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        return bool(get_current_settings().api.url)
    if os.environ.get("PREFECT_API_URL"):
        return True
    return bool(_profile_api_url())


def _profile_api_url() -> str | None:
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = (data.get("profiles") or {}).get(active) or {}
    value = profile.get("PREFECT_API_URL")
    return str(value) if value else None


def uses_prefect() -> bool:
    """Whether a flow called now runs under Prefect's engine (see the module's docstring)."""
    if _PLAIN.get() is not None:
        return False
    if prefect_run_active():
        return True
    setting = engine_setting()
    if setting != "auto":
        return setting == "prefect"
    return prefect_server_configured()


class _Wrapped:
    """A function and its options, and the Prefect object built from them once, on first use."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self.fn = fn
        self.options = options
        self._prefect: Any = None
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return str(self.options.get("name") or self.fn.__name__)

    @property
    def prefect(self) -> Any:
        """The Prefect ``Flow`` or ``Task`` of this function (built once, on first use)."""
        if self._prefect is None:
            self._prefect = self._build()
        return self._prefect

    def _build(self) -> Any:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def _of_their_types(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every argument is already of its annotated type (plain classes, ``X | None``,
    ``list[X]``), so pydantic would pass it through unchanged. False when unsure."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        hints = typing.get_type_hints(fn)
    except (TypeError, NameError):
        return False
    return all(name in hints and _conforms(value, hints[name]) for name, value in bound.arguments.items())


def _conforms(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if isinstance(hint, type) and not typing.get_args(hint):
        # bool is an int to isinstance, and an int is cast to a float: exact types for numbers.
        return type(value) is hint if hint in (int, float, bool) else isinstance(value, hint)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, member) for member in typing.get_args(hint))
    if origin is list and len(typing.get_args(hint)) == 1:
        return type(value) is list and all(_conforms(item, typing.get_args(hint)[0]) for item in value)
    return False


# A top-level Prefect flow run's box for its function's result: filled once the function returned, so
# that a failure of Prefect's own bookkeeping after it (a server gone) is not taken for the run's.
_RETURNED: ContextVar[tuple[Callable[..., Any], list[Any]] | None] = ContextVar("trialsync_flow_returned",
                                                                                default=None)


def _recording(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, filling the top-level run's box when it returns. It takes ``fn``'s globals (and so its
    module's names): Prefect resolves the parameters' annotations (``date``, ...) through them."""
    returned = _RETURNED

    def run(*args: Any, **kwargs: Any) -> Any:
        value = fn(*args, **kwargs)
        box = returned.get()
        if box is not None and box[0] is fn:  # the top-level flow's own function, not a subflow's
            box[1].append(value)
        return value

    recording = types.FunctionType(run.__code__, fn.__globals__, fn.__name__, None, run.__closure__)
    return functools.update_wrapper(recording, fn)


class Flow(_Wrapped):
    """A flow function that runs under Prefect or in process (``uses_prefect``)."""

    _validated: Callable[..., Any] | None = None

    def validated(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[..., Any]:
        """The function behind Prefect's parameter validation, for plain runs: arguments are cast to
        their annotated types the way a Prefect flow casts them (pydantic's lax mode: ``"2026-01-01"``
        for a ``date``), so a call gets the same arguments, or the same refusal, in both engines.
        Arguments that are of their types already need no cast: ``fn`` itself then (building the
        validator costs ~0.1 s, a tenth of a small command)."""
        if _of_their_types(self.fn, args, kwargs):
            return self.fn
        if self._validated is None:
            import pydantic

            self._validated = pydantic.validate_call(config=pydantic.ConfigDict(arbitrary_types_allowed=True))(self.fn)
        return self._validated

    def _build(self) -> Any:
        from prefect import flow

        # No retries unless the flow asks: a retry from Prefect's defaults (PREFECT_FLOWS_DEFAULT_RETRIES, set
        # for a user's other flows) would rerun the whole run and multiply --max-attempts.
        options = {"retries": 0, **{k: v for k, v in self.options.items() if k != "threads"}}
        if "version" not in options:  # Prefect's default, from the function's own file (not the recorder's)
            from prefect.utilities.hashing import file_hash

            with suppress(TypeError, OSError):
                options["version"] = file_hash(inspect.getsourcefile(self.fn) or "")
        return flow(**options)(_recording(self.fn))

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        if uses_prefect():
            if not prefect_run_active():
                from flows.prefect_api import check_settings

                check_settings()  # one line for a PREFECT_* value Prefect cannot read
            lifecycle.guard_prefect_children()
            top = not prefect_run_active()
            flow = self.prefect
            if "threads" in self.options and "task_runner" not in self.options:
                from prefect.task_runners import ThreadPoolTaskRunner

                flow = flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=self.options["threads"]))
            if not top:
                return flow(*args, return_state=return_state, **kwargs)
            from flows import prefect_api

            url = prefect_api.api_url()
            # Prefect's clients reach a server on loopback (also its temporary server's 127.0.0.1) directly,
            # as our own HTTP does, whatever proxy the environment names.
            prefect_api.direct_to_loopback(url or "http://127.0.0.1/")
            if url:  # not Prefect's temporary server: that one it starts itself
                prefect_api.check_server(url)
            returned: list[Any] = []  # the function's result, once it returned (Prefect runs it in a copied context)
            box = _RETURNED.set((self.fn, returned))
            try:
                return flow(*args, return_state=return_state, **kwargs)
            except Exception as exc:
                if not returned or return_state:
                    raise
                prefect_api.finished_despite(exc, self.name)  # the work is done (committed): not a failure
                return returned[0]
            finally:
                _RETURNED.reset(box)
        if return_state:
            raise TypeError("return_state needs a Prefect run (configure a Prefect server)")
        run = _PlainRun(self.name, int(self.options.get("threads") or DEFAULT_THREADS))
        token = _PLAIN.set(run)
        try:
            return self.validated(args, kwargs)(*args, **kwargs)
        finally:
            run.close()
            _PLAIN.reset(token)

    def with_options(self, **options: Any) -> Flow:
        """A copy with other options (Prefect's, plus ``threads``: how many tasks run at once)."""
        return Flow(self.fn, {**self.options, **options})

    def __getattr__(self, name: str) -> Any:  # to_deployment, serve, ... are Prefect's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.prefect, name)


class Task(_Wrapped):
    """A task function: a Prefect task run inside a Prefect run, a plain call inside a plain one."""

    def _build(self) -> Any:
        from prefect import task
        from prefect.cache_policies import NONE

        # Tasks take live objects: never cached. No retries unless the task asks (PREFECT_TASKS_DEFAULT_RETRIES
        # would multiply the registry client's --max-attempts, the total tries of a request: SPEC).
        return task(**{"retries": 0, **self.options, "cache_policy": NONE})(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _PLAIN.get() is not None:
            return self.fn(*args, **kwargs)
        return self.prefect(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """A future: Prefect's inside a Prefect run, a ``concurrent.futures.Future`` in a plain one."""
        run = _PLAIN.get()
        if run is None:
            return self.prefect.submit(*args, **kwargs)
        context = copy_context()  # the task sees the plain run too
        return run.pool().submit(context.run, self.fn, *args, **kwargs)

    def with_options(self, **options: Any) -> Task:
        return Task(self.fn, {**self.options, **options})


def flow(**options: Any) -> Callable[[Callable[..., Any]], Flow]:
    """Like ``prefect.flow(...)``; an extra option ``threads`` sets how many submitted tasks run at once."""
    return lambda fn: Flow(fn, options)


def task(**options: Any) -> Callable[[Callable[..., Any]], Task]:
    """Like ``prefect.task(...)``, with ``cache_policy=NONE`` by default (tasks take live objects)."""
    return lambda fn: Task(fn, options)


def as_completed(futures: Iterable[Any]) -> Iterator[Any]:
    futures = list(futures)
    if all(isinstance(f, Future) for f in futures):
        yield from _cf_as_completed(futures)
        return
    from prefect.futures import as_completed as prefect_as_completed

    yield from prefect_as_completed(futures)


def wait(futures: Iterable[Any]) -> None:
    futures = list(futures)
    if all(isinstance(f, Future) for f in futures):
        _cf_wait(futures)
        return
    from prefect.futures import wait as prefect_wait

    prefect_wait(futures)


def get_run_logger() -> Any:
    """The run's logger: Prefect's in a Prefect run, ``trialsync.<flow>`` in a plain one."""
    run = _PLAIN.get()
    if run is not None or not prefect_run_active():
        return logging.getLogger(f"trialsync.{run.name if run else 'flows'}")
    from prefect import get_run_logger as prefect_logger

    return prefect_logger()


def create_markdown_artifact(*args: Any, **kwargs: Any) -> Any:
    """A Prefect artifact in a Prefect run; nothing in a plain run (no server to keep it)."""
    if not prefect_run_active():
        return None
    from prefect.artifacts import create_markdown_artifact as create

    return create(*args, **kwargs)


def create_table_artifact(*args: Any, **kwargs: Any) -> Any:
    if not prefect_run_active():
        return None
    from prefect.artifacts import create_table_artifact as create

    return create(*args, **kwargs)


@contextmanager
def plain_run(name: str) -> Iterator[None]:
    """Run what follows as a plain run (tests and tools)."""
    run = _PlainRun(name, DEFAULT_THREADS)
    token = _PLAIN.set(run)
    try:
        yield
    finally:
        run.close()
        _PLAIN.reset(token)
