"""The three operations of the CLI: an HTTP request, a Python call, a command per row.

Each turns an input row into an :class:`Item` (its journal key and what to send, rendered
once) and runs an item. Rendering problems of one row (a JSONL row without a column the
template names) make that row a bad input row, like a line that is not JSON; so does a row
that repeats an earlier row's id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import importlib
import inspect
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paceline.cli.inputs import Row, RowSource, bad_row_message
from paceline.cli.spec import NO_JOURNAL, RunSpec, UsageError, split_header
from paceline.cli.templates import (
    JsonTemplate,
    MissingField,
    Template,
    check_fields,
    render_json,
)
from paceline.errors import InvalidArgument, PacelineError
from paceline.policy.answers import Verdict, verdict_of
from paceline.policy.cost import as_cost
from paceline.redact import REDACTED, digest, key_without_secrets
from paceline.runners.identity import current_item_key
from paceline.stores import Codec, JsonCodec


class BadInputRow(PacelineError):
    """An input row that cannot become an item (recorded as that item's failure)."""

    retryable = False
    error_code = "invalid_input"


@dataclass(slots=True)
class Item:
    """One row, ready to run: its journal key, its line in the input and what to run."""

    line: int
    key: str
    payload: Any
    bad: str | None = None  # a bad input row's message (the item fails with it)
    tries: int = 0  # attempts started so far
    cost: dict[str, int] | None = None  # its estimate per unit, when a --rate counts costs
    # input fields written with its result in --out: a JSON Lines request's fields paceline
    # does not use (OpenAI cookbook rows carry "metadata"), and --include-input's
    extra: dict[str, Any] | None = None


class Operation:
    """What ``http``, ``call`` and ``exec`` have in common."""

    codec: Codec | None = None

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.id_template = Template.parse(spec.id_template) if spec.id_template else None
        self._used: set[str] | None = None
        self.ids = None if spec.journal == NO_JOURNAL else SeenIds()

    def templates(self) -> dict[str, Template | JsonTemplate]:
        """Every template with the option it came from, to check against a CSV header."""
        return {"--id": self.id_template} if self.id_template else {}

    def prepare(self, source: RowSource) -> None:
        """Check the templates against the input's columns (CSV) before anything runs."""
        if source.columns is not None:
            try:
                check_fields(self.templates(), source.columns, source.name)
            except Exception as exc:  # UnknownColumn
                raise UsageError(str(exc)) from None

    def item(self, row: Row) -> Item:
        """The item for a good row; raises MissingField/ValueError for a row that can't be one."""
        raise NotImplementedError

    async def run(self, payload: Any) -> Any:
        """Run one item's payload."""
        raise NotImplementedError

    def key_from(self, row: Row, default: str, *, whole_row: bool = False) -> str:
        """The item's journal key: ``--id`` rendered, else ``default`` — made unique with a
        digest of the row when the templates leave some of its columns out (two rows that
        differ only there are two items, not one). Credentials are masked (see
        :func:`~paceline.redact.key_without_secrets`)."""
        data = row.data
        assert data is not None
        if self.id_template is not None:
            return key_without_secrets(self.id_template.render(data), data)
        if whole_row:
            return key_without_secrets(default, data)
        if self._used is None:
            self._used = {name for t in self.templates().values() for name in t.fields}
        if not all(column in self._used for column in data):
            default = f"{default} #{digest(data)[:12]}"
        return key_without_secrets(default, data)

    async def close(self) -> None:
        """Release what the operation holds (connections, threads)."""


class SeenIds:
    """The first line of each id read so far in this run, to refuse a row that repeats one.

    >>> seen = SeenIds()
    >>> seen.first_line("alice", 2), seen.first_line("bob", 3), seen.first_line("alice", 4)
    (None, None, 2)

    Why: with a journal an id is the item's identity. The journal keeps one outcome per id and
    skips an id it holds, so a second row with the first row's id was restored from the first
    (reported ``ok``, never sent) or, when both were in flight at once, ran into the same
    entry. Checked here, where rows are read one at a time in input order, the answer does not
    depend on the concurrency; ids a journal holds from an earlier run are not in here (each
    run reads the input from its start), so resuming still skips them.

    Cost: one dict entry per distinct id, ~63 bytes (CPython 3.11, 1M ids measured) beyond
    the id string, which the journal's index keeps anyway (~150 bytes an id), and the runner's
    own set of keys (~34 bytes, see :mod:`paceline.runners.settle`): 1M items take ~100 MB
    more. Without a journal (``--journal none``) nothing is skipped by id, an id only
    labels the output, so no check is made: both rows run, and memory stays bounded however
    long the input (an endless stream).
    """

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: dict[str, int] = {}

    def first_line(self, key: str, line: int) -> int | None:
        """The line that had ``key`` first, or ``None`` (then ``line`` has it from now on)."""
        first = self._lines.setdefault(key, line)
        return None if first == line else first


def bad_item(row: Row, message: str) -> Item:
    """A bad row as an item that fails with ``message`` (journaled under its line number)."""
    return Item(row.line, f"bad-input:line-{row.line}", None, message)


# What a JSON Lines request row's fields may name (paceline.http's request mapping).
_REQUEST_FIELDS = frozenset({"url", "method", "headers", "json", "body", "id", "cost"})


def _with_inputs(operation: Operation, row: Row, item: Item) -> Item:
    """``item`` with the fields ``--include-input`` names taken from its row."""
    chosen = operation.spec.include_input
    if chosen and row.data is not None:
        item.extra = {**{name: row.data.get(name) for name in chosen}, **(item.extra or {})}
    return item


def to_item(operation: Operation, row: Row, source_name: str) -> Item:
    """An item for ``row``, or a bad item with the reason (a row that repeats an earlier
    row's id is one, when there is a journal: see :class:`SeenIds`)."""
    if not row.ok:
        return bad_item(row, row.error or f"{source_name}:{row.line}: unreadable row")
    try:
        item = operation.item(row)
    except MissingField as exc:
        return bad_item(row, f"{source_name}:{row.line}: {exc}")
    except (ValueError, TypeError) as exc:
        return bad_item(row, f"{source_name}:{row.line}: {exc}")
    if _sends_a_mask(item.payload):  # e.g. a row copied from a redacted --out file
        return bad_item(
            row,
            f"{source_name}:{row.line}: holds {REDACTED}, a value paceline masked when it wrote "
            "it down; it is never sent: put the real value in the input",
        )
    first = None if operation.ids is None else operation.ids.first_line(item.key, row.line)
    if first is None:
        return _with_inputs(operation, row, item)
    fix = (
        "make --id unique (add a column to it) or drop the repeated row"
        if operation.id_template is not None
        else "drop the repeated row, or give each row its own id with --id"
    )
    problem = f"duplicate id of line {first} (the journal keeps one outcome per id)"
    return bad_item(row, bad_row_message(source_name, row.line, problem, fix))


def _sends_a_mask(payload: Any) -> bool:
    """True if what an item would send holds ``[REDACTED]`` (its id, the masked key, aside)."""
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return any(
            REDACTED in repr(getattr(payload, f.name))
            for f in dataclasses.fields(payload)
            if f.name != "id"
        )
    return REDACTED in repr(payload)


# -- http ---------------------------------------------------------------------------------


class HttpOperation(Operation):
    """``paceline http``: a request per row (a JSONL request object, or templates)."""

    def __init__(self, spec: RunSpec, workers: int | None, limits: Any) -> None:
        super().__init__(spec)
        from paceline.http import (
            HttpRequest,
            HttpResponseCodec,
            Idempotency,
            client_for,
            rules_classifier,
            sender,
            validate_request,
        )

        self._request_type = HttpRequest
        self._validate = validate_request  # what fails the same way every time: a bad row
        self._base_url = spec.base_url
        self.codec = HttpResponseCodec()
        self.url = Template.parse(spec.url) if spec.url else None
        self.method = Template.parse(spec.method) if spec.method else None
        self.body = Template.parse(spec.body_template) if spec.body_template else None
        self.json_text = spec.json_template
        if self.json_text is not None:
            try:
                json.loads(self.json_text)
            except ValueError as exc:
                raise UsageError(
                    f"--json {self.json_text!r}: not valid JSON ({exc}); placeholders go inside "
                    'strings, e.g. --json \'{"name": "{name}"}\''
                ) from None
        if self.body is not None and self.json_text is not None:
            raise UsageError("--json and --body: give one of them, not both")
        self.headers = [
            (Template.parse(name), Template.parse(value))
            for name, value in (split_header(h) for h in spec.headers)
        ]
        self.client = client_for(None, workers)
        # Costs per row (docs/units.md): from --cost, else each JSON Lines row's "cost".
        self.costs = spec.counts_costs()
        self.row_costs = False  # set by prepare() for JSON Lines without a --rate in tokens
        # Rows without a cost are estimated from their OpenAI-style body: always with --cost
        # auto; by default under a --rate in tokens (the row would be refused otherwise).
        self.cost_parts = [
            (unit, Template.parse(text, label="--cost")) for unit, text in spec.cost_templates()
        ]
        auto = spec.cost_template is not None and spec.cost_template.strip() == "auto"
        self.estimate = auto or (self.costs and not self.cost_parts)
        # --timeout bounds the whole attempt, body included (default: the face's 120 s).
        # POST/PATCH carry the row's stable key; one that may have been processed without a
        # key is not sent again (http/_idempotency.py).
        try:
            self.idempotency = Idempotency.of(
                "Idempotency-Key" if spec.idempotency_header is None else spec.idempotency_header,
                spec.idempotency_methods,
                spec.retry_unsafe,
            )
        except InvalidArgument as exc:
            # "idempotency header 'a b': ..." names the option: "--idempotency-header 'a b'"
            raise UsageError("--" + str(exc).replace(" ", "-", 1)) from None
        # --throttle-on and kin: the user's rules first, then the defaults.
        rules = spec.answer_rules()
        self._send = sender(
            self.client,
            limits,
            spec.base_url,
            attempt_timeout_s=spec.timeout_s,
            idempotency=self.idempotency,
            classify=rules_classifier(rules) if rules else None,
        )

    def templates(self) -> dict[str, Template | JsonTemplate]:
        found: dict[str, Template | JsonTemplate] = super().templates()
        for option, template in (("--url", self.url), ("--method", self.method)):
            if template is not None:
                found[option] = template
        if self.body is not None:
            found["--body"] = self.body
        if self.json_text is not None:
            found["--json"] = JsonTemplate.parse(self.json_text, label="--json")
        for unit, template in self.cost_parts:
            found[f"--cost {unit}"] = template
        for index, (name, value) in enumerate(self.headers):
            found[f"--header #{index + 1}"] = Template.parse(
                "".join(["{" + f + "}" for f in (*name.fields, *value.fields)])
            )
        return found

    def prepare(self, source: RowSource) -> None:
        if self.url is None and source.format != "jsonl":
            raise UsageError(
                f"{source.name}: CSV rows need --url TEMPLATE (e.g. --url "
                "'https://api.example.com/items/{id}'); JSON Lines rows may carry their own url"
            )
        if self.costs and not self.cost_parts and source.format != "jsonl" and not self.json_text:
            raise UsageError(
                f"{source.name}: a --rate limits more than requests, so each row needs a cost: "
                "give --cost TEMPLATE (e.g. --cost 'tokens={est_tokens}')"
            )
        # JSON Lines rows may carry a "cost" with no --rate in its unit: the server's token
        # headers then limit it (docs/units.md, 'Token headers'); a row without one is a request.
        # On a Dask cluster nothing reads them (no header limits there: docs/design.md).
        self.row_costs = not self.costs and source.format == "jsonl" and self.spec.dask is None
        super().prepare(source)

    def cost_of(self, data: dict[str, Any], body: Any = None) -> dict[str, int] | None:
        """A row's estimate per unit: --cost rendered, else the row's own ``"cost"``, else
        (with --cost auto, or a --rate in tokens) the tokens its OpenAI-style JSON ``body``
        reserves (``None`` when nothing counts costs)."""
        from paceline.http import estimate_tokens

        if self.row_costs:
            given = data.get("cost")
            if given is None and self.estimate:
                tokens = estimate_tokens(body)
                if tokens is not None:
                    return as_cost({"tokens": tokens})
            return as_cost(given if given is not None else 1)
        if not self.costs:
            return None
        if not self.cost_parts:
            given = data.get("cost")
            if given is None:
                tokens = estimate_tokens(body) if self.estimate else None
                if tokens is None:
                    raise InvalidArgument(
                        'no "cost" in this row, and a --rate limits more than requests: give '
                        'each row one (e.g. "cost": {"tokens": 1200}), or --cost '
                        "'tokens={est_tokens}', or an OpenAI-style body with max_tokens "
                        "(estimated: prompt characters / 4 + max_tokens x n)"
                    )
                return as_cost({"tokens": tokens})
            return as_cost(given)
        cost: dict[str, int] = {}
        for unit, template in self.cost_parts:
            text = template.render(data).strip()
            if not text.isdigit():
                raise InvalidArgument(
                    f"--cost {unit}={template.text}: {text!r} is not a whole number of {unit}"
                )
            cost[unit] = int(text)
        return as_cost(cost)

    def item(self, row: Row) -> Item:
        data = row.data
        assert data is not None
        extra = None
        if self.spec.body_per_line:
            # The row is the body (the OpenAI cookbook's format); its "metadata" and "cost"
            # are not sent: the first is written with the result, the second reserved.
            body_json = {k: v for k, v in data.items() if k not in ("metadata", "cost")}
            extra = {"metadata": data["metadata"]} if "metadata" in data else None
            assert self.url is not None
            request = self._request_type(url=self.url.render(data), method="POST", json=body_json)
            headers = {}
        elif self.url is None:
            if "url" not in data:
                raise InvalidArgument(
                    "no 'url' in this row: a JSON Lines request needs url (and may have method, "
                    "headers, json, body, id), or pass --url TEMPLATE"
                )
            from paceline.http import as_request

            # Fields a request does not use (e.g. "metadata") go with the result to --out.
            extra = {k: v for k, v in data.items() if k not in _REQUEST_FIELDS} or None
            request = as_request(
                data if extra is None else {k: v for k, v in data.items() if k not in extra}
            )
            headers = dict(request.headers)
        else:
            request = self._request_type(url=self.url.render(data))
            headers = {}
        for name, value in self.headers:
            headers[name.render(data)] = value.render(data)
        method = self.method.render(data).upper() if self.method else request.method
        json_body = render_json(self.json_text, data) if self.json_text else request.json
        body = self.body.render(data) if self.body else request.body
        cost = self.cost_of(data, json_body)
        default_key = request.id or f"{method} {request.url}"
        if request.id is None and (json_body is not None or body is not None):
            # --body-per-line: the whole row (two rows that differ only in metadata are two)
            hashed = data if self.spec.body_per_line else json_body
            default_key += " #" + digest(hashed if hashed is not None else body)
        whole_row = self.url is None or self.spec.body_per_line
        key = self.key_from(row, default_key, whole_row=whole_row)
        payload = self._request_type(
            url=request.url, method=method, headers=headers, json=json_body, body=body, id=key
        )
        self._validate(payload, self._base_url)
        return Item(row.line, key, payload, cost=cost, extra=extra)

    async def run(self, payload: Any) -> Any:
        return await self._send(payload)

    async def close(self) -> None:
        await self.client.aclose()


# -- call ---------------------------------------------------------------------------------


class _AnyJson(JsonCodec):
    """Results of user functions: JSON-ready values as they are, anything else as its repr."""

    def encode(self, value: Any) -> Any:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return {"repr": repr(value)[:10_000]}
        return value

    def decode(self, data: Any) -> Any:
        return data


def load_target(target: str) -> Callable[..., Any]:
    """Import ``module:function`` (the current directory is importable, like ``python -m``)."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"call target {target!r}: cannot import module {module_name!r} ({exc}); run from "
            "the directory that holds it, or set PYTHONPATH"
        ) from None
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise UsageError(f"call target {target!r}: module {module_name!r} has no {attr!r}")
    if not callable(found):
        raise UsageError(f"call target {target!r}: {attr!r} is not callable")
    return found  # type: ignore[no-any-return]


class CallOperation(Operation):
    """``paceline call module:function``: the function with each row (a dict), or with the
    row's columns as keyword arguments (``--unpack``); async functions are awaited, others
    run on a thread pool as large as the concurrency."""

    def __init__(self, spec: RunSpec, workers: int) -> None:
        super().__init__(spec)
        assert spec.target is not None
        self.function = load_target(spec.target)
        self.is_async = inspect.iscoroutinefunction(self.function) or inspect.iscoroutinefunction(
            getattr(self.function, "__call__", None)  # noqa: B004 - async callable objects
        )
        self.codec = _AnyJson()
        self.pool = (
            None
            if self.is_async
            else concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="paceline-call")
        )

    def item(self, row: Row) -> Item:
        assert row.data is not None
        return Item(
            row.line, self.key_from(row, "row:" + digest(row.data), whole_row=True), row.data
        )

    async def run(self, payload: Any) -> Any:
        function = self.function
        if self.is_async:
            return await (function(**payload) if self.spec.unpack else function(payload))
        assert self.pool is not None
        call: Callable[[], Any] = (
            (lambda: function(**payload)) if self.spec.unpack else (lambda: function(payload))
        )
        # The function runs in this attempt's context: paceline.current_item_key() works there.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.pool, context.run, call)

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


# -- exec ---------------------------------------------------------------------------------


# ``{_key}`` in an exec command: the item's stable key (paceline.current_item_key()), put in
# when the attempt starts. Rendered first as this marker: a NUL is never in a real argument.
KEY_FIELD = "_key"
KEY_MARK = "\x00paceline-item-key\x00"
KEY_ENV = "PACELINE_ITEM_KEY"


class ExecOperation(Operation):
    """``paceline exec INPUT -- cmd {column} ...``: a command per row, without a shell unless
    ``--shell``; each word is one argument, whatever the column holds. ``{_key}`` is the item's
    stable key (the same on every attempt and after a resume), also in ``$PACELINE_ITEM_KEY``."""

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        from paceline.runners import commands as exec_op

        self._exec = exec_op
        self.words = [Template.parse(word) for word in spec.argv]
        self.uses_key = any(KEY_FIELD in word.fields for word in self.words)
        self.timeout_s = spec.timeout_s
        if not spec.shell and not self.words[0].fields:
            try:
                exec_op.check_program(spec.argv[0])
            except exec_op.CommandNotFound as exc:
                raise UsageError(str(exc)) from None

    def templates(self) -> dict[str, Template | JsonTemplate]:
        found: dict[str, Template | JsonTemplate] = super().templates()
        for index, word in enumerate(self.words):
            found[f"command word {index + 1} ({self.spec.argv[index]!r})"] = word
        return found

    def prepare(self, source: RowSource) -> None:
        if source.columns is not None:  # {_key} is no column of the CSV, but known
            try:
                check_fields(self.templates(), [*source.columns, KEY_FIELD], source.name)
            except Exception as exc:  # UnknownColumn
                raise UsageError(str(exc)) from None

    def item(self, row: Row) -> Item:
        data = row.data
        assert data is not None
        if self.uses_key:
            data = {**data, KEY_FIELD: KEY_MARK}
        if self.spec.shell:
            from paceline.cli.templates import render_shell

            line = " ".join(render_shell(word, data) for word in self.words)
            return Item(row.line, self.key_from(row, _shown(line)), line)
        argv = [word.render(data) for word in self.words]
        return Item(row.line, self.key_from(row, _shown(shlex.join(argv))), argv)

    async def run(self, payload: Any) -> Any:
        key = current_item_key() or ""
        if self.uses_key:
            payload = (
                payload.replace(KEY_MARK, key)
                if isinstance(payload, str)
                else [word.replace(KEY_MARK, key) for word in payload]
            )
        env = {**os.environ, KEY_ENV: key}
        try:
            return await self._exec.run_command(payload, shell=self.spec.shell, env=env)
        except self._exec.CommandFailed as exc:
            if self.spec.retries:  # a failing command is retried only when --retries asks
                exc.retryable = True
            raise


def _shown(text: str) -> str:
    """A command as its journal key shows it: ``{_key}`` where the key goes."""
    return text.replace(KEY_MARK, "{" + KEY_FIELD + "}")


def is_throttle(error: BaseException | None) -> bool:
    """Throttled answers (429, 503, a 403 secondary limit...: their verdict) and raised
    ``Throttled`` count as throttles in the progress."""
    if error is None:
        return False
    verdict = verdict_of(error)
    if verdict is not None:
        return verdict is Verdict.THROTTLED
    return getattr(error, "status_code", None) in (429, 503)
