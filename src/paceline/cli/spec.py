"""One CLI batch described as data: what to run, over which input, within which limits.

A :class:`RunSpec` is checked before anything runs (bad rate strings, halt rules, concurrency
and templates are usage errors, exit code 2), stored in the journal without its secrets so
``paceline resume JOURNAL`` can run it again, and hashed into the default journal's name, so
running the same command twice resumes instead of starting over.

>>> spec = RunSpec(command="exec", input="jobs.csv", argv=["echo", "{name}"])
>>> RunSpec.from_json(spec.to_json()) == spec
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paceline.errors import InvalidArgument, PacelineError
from paceline.policy.answers import AnswerRule, Verdict
from paceline.policy.halt import DEFAULT_GIVE_UP_AFTER_S, HaltRule
from paceline.policy.rate import Rate, RateSpecError, unit_name
from paceline.redact import (
    REDACTED,
    is_sensitive_name,
    only_names_fields,
    redact_argv,
    redact_text,
)

JOURNAL_DIR = ".paceline"
_DURATION_RE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|min|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS_S = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
NO_JOURNAL = "none"
# The input's identity is the digest of its first block: enough to tell another file (another
# directory's in.csv, a rewritten export) from the batch's own, and unchanged when rows are
# appended (resuming a grown input is a normal thing to do). One read of 64 KiB per run.
INPUT_HEAD_BYTES = 64 * 1024


class UsageError(PacelineError):
    """A bad command line or input: one line for the user, exit code 2."""


@dataclass(slots=True)
class RunSpec:
    """Everything one ``paceline http|call|exec`` invocation asked for."""

    command: str  # "http" | "call" | "exec"
    input: str  # a path, or "-" for stdin
    format: str = "auto"
    rates: list[str] = field(default_factory=list)
    burst: int | None = None
    rate_store: str | None = None  # a shared store's URL (redis://...): the limits are shared
    rate_key: str | None = None  # its key; None: from the limits and the target host
    rate_store_outage_s: float | None = None  # exit 3 after this long unreachable; None: wait
    rate_store_degraded: str = "hold"  # "split": 1/k of the limits while unreachable (opt-in)
    rate_margin_s: float | None = None  # --rate-margin; None: run.py's default (shared or not)
    concurrency: str = "auto"  # "auto" or a whole number
    retries: int | None = None  # retries after the first attempt; None: the command's default
    timeout_s: float | None = None
    halt: list[str] = field(default_factory=list)
    keep_order: bool = False
    journal: str | None = None  # None: the default under .paceline/; "none": no journal
    retry_failed: bool = False
    out: str | None = None
    on_bad_input: str = "stop"
    # --dask: run on a Dask cluster (tcp://host:8786, or local:N); not part of the identity,
    # so a batch run on Dask resumes locally and the other way round
    dask: str | None = None
    id_template: str | None = None
    give_up_after: str | None = None  # "10m", "600", "off"; None: the library's default
    # http
    url: str | None = None
    method: str | None = None
    json_template: str | None = None
    body_template: str | None = None
    base_url: str | None = None
    headers: list[str] = field(default_factory=list)
    # --cost 'tokens={est_tokens}': each item's estimate per unit, from its row (http)
    cost_template: str | None = None
    # idempotency keys (http): the header (None: Idempotency-Key, "": none), the methods that
    # get one (None: POST,PATCH), and whether an ambiguous failure without one is retried
    idempotency_header: str | None = None
    idempotency_methods: str | None = None
    retry_unsafe: bool = False
    # What an answer means (docs/design.md, 'Answers told apart'): rules such as
    # 'status=403,body~secondary rate limit', checked in this order before the defaults.
    fail_on: list[str] = field(default_factory=list)
    exhausted_on: list[str] = field(default_factory=list)
    throttle_on: list[str] = field(default_factory=list)
    retry_on: list[str] = field(default_factory=list)
    # --body-per-line: each JSON Lines row is the request's JSON body, sent to --url (http)
    body_per_line: bool = False
    # --include-input a,b: these input fields are written with each result in --out
    include_input: list[str] = field(default_factory=list)
    # call
    target: str | None = None
    unpack: bool = False
    # exec
    argv: list[str] = field(default_factory=list)
    shell: bool = False
    # the input's identity when the batch ran (see :func:`input_head`); None: stdin or unknown
    input_head: str | None = None

    # -- checks ----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`UsageError` for anything that cannot run."""
        units = set()
        for text in self.rates:
            try:
                rate = Rate.parse(text)
            except RateSpecError as exc:
                raise UsageError(f"--rate {text!r}: {exc}") from None
            units.add(rate.unit)
            if rate.unit != "requests" and self.command != "http":
                # Refused rather than accepted and ignored: only http charges costs per item.
                raise UsageError(
                    f"--rate {text!r}: limits in {rate.unit} are charged by paceline http "
                    'only (from --cost or a row\'s "cost"); give request limits, e.g. '
                    "--rate 500/min"
                )
        for unit, _template in self.cost_templates():
            if unit not in units:
                raise UsageError(
                    f"--cost {self.cost_template!r}: no --rate limits {unit}, so the cost would "
                    f"count for nothing; add one, e.g. --rate {unit}:90000/min"
                )
        if self.body_per_line and (self.command != "http" or not self.url):
            raise UsageError(
                "--body-per-line sends each JSON Lines row as the body of a POST to --url: "
                "give --url, e.g. --url https://api.openai.com/v1/chat/completions"
            )
        if self.body_per_line and (self.json_template or self.body_template):
            raise UsageError("--body-per-line: the row is the body; leave out --json and --body")
        if self.burst is not None and self.burst < 1:
            raise UsageError(f"--burst {self.burst}: must be a whole number of at least 1")
        self.concurrency_limit()
        if self.retries is not None and self.retries < 0:
            raise UsageError(f"--retries {self.retries}: must be 0 or more")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise UsageError(f"--timeout {self.timeout_s}: must be a number of seconds above 0")
        self.give_up_after_s()
        for rule in self.halt:
            try:
                parsed = HaltRule.parse(rule)
            except ValueError as exc:
                raise UsageError(f"--halt {rule!r}: {exc}") from None
            if parsed.budget and self.command != "http":
                raise UsageError(
                    f"--halt {rule!r}: a budget cap counts the {parsed.kind} the answers "
                    "report, which paceline http reads (usage); give fail=, success= or done="
                )
        if self.on_bad_input not in ("stop", "skip"):
            raise UsageError(f"--on-bad-input {self.on_bad_input!r}: use 'stop' or 'skip'")
        if self.format not in ("auto", "jsonl", "csv", "tsv"):
            raise UsageError(f"--format {self.format!r}: use auto, jsonl, csv or tsv")
        for header in self.headers:
            split_header(header)
        self.answer_rules()
        masked = self.masked()
        if masked:
            option, value = masked[0]
            raise UsageError(
                f"{option} {value!r} holds {REDACTED}, a value paceline masked when it wrote it "
                "down; it is never sent: give the real value"
            )
        if self.command == "exec" and not self.argv:
            raise UsageError(
                "paceline exec needs a command after '--', e.g. paceline exec jobs.csv -- "
                "convert {src} {dst}"
            )
        if self.command == "call" and (not self.target or ":" not in self.target):
            raise UsageError(
                f"call target {self.target!r}: give module:function, e.g. mytasks:create_tenant"
            )

    def answer_rules(self) -> list[AnswerRule]:
        """The ``--fail-on``, ``--exhausted-on``, ``--throttle-on`` and ``--retry-on`` rules, in
        that order (the first that matches an answer decides); :class:`UsageError` for a bad
        one or for rules given to a command that gets no HTTP answers.

        >>> spec = RunSpec("http", "-", throttle_on=["status=403"])
        >>> [rule.verdict.value for rule in spec.answer_rules()]
        ['throttled']
        """
        rules = []
        for option, texts, verdict in self._rule_options():
            if texts and self.command != "http":
                raise UsageError(
                    f"{option} applies to paceline http; a function or command says it by "
                    "raising paceline.Throttled or paceline.QuotaExhausted"
                )
            for text in texts:
                try:
                    rules.append(AnswerRule.parse(text, verdict))
                except InvalidArgument as exc:
                    raise UsageError(f"{option} {exc}") from None
        return rules

    def _rule_options(self) -> list[tuple[str, list[str], Verdict]]:
        return [
            ("--fail-on", self.fail_on, Verdict.PERMANENT),
            ("--exhausted-on", self.exhausted_on, Verdict.EXHAUSTED),
            ("--throttle-on", self.throttle_on, Verdict.THROTTLED),
            ("--retry-on", self.retry_on, Verdict.TRANSIENT),
        ]

    def give_up_after_s(self) -> float | None:
        """``--give-up-after`` in seconds (``None``: never), the default when not given."""
        text = self.give_up_after
        if text is None:
            return DEFAULT_GIVE_UP_AFTER_S
        if text.strip().lower() in ("off", "never", "0"):
            return None
        match = _DURATION_RE.match(text)
        if match is None or not float(match["n"]) > 0:
            raise UsageError(
                f"--give-up-after {text!r}: a duration above 0 such as 90s, 10m or 2h "
                "(a plain number is seconds), or off"
            )
        return float(match["n"]) * _DURATION_UNITS_S[(match["unit"] or "s").lower()]

    def counts_costs(self) -> bool:
        """Whether a --rate limits a unit other than requests: items then carry costs."""
        return any(Rate.parse(text).unit != "requests" for text in self.rates)

    def budget_caps(self) -> bool:
        """Whether a --halt rule caps a unit's total (``soon,tokens=2000000``)."""
        return any(HaltRule.parse(rule).budget for rule in self.halt)

    def cost_templates(self) -> list[tuple[str, str]]:
        """``--cost 'tokens={est_tokens},requests=1'`` as ``[(unit, template), ...]``.

        >>> RunSpec(command="http", input="-", cost_template="tokens={est}").cost_templates()
        [('tokens', '{est}')]
        """
        if self.cost_template is None or self.cost_template.strip() == "auto":
            return []  # auto: estimated from each row's body (cli/ops.py)
        pairs = []
        for part in self.cost_template.split(","):
            unit, equals, template = part.partition("=")
            if not equals or not unit.strip() or not template.strip():
                raise UsageError(
                    f"--cost {self.cost_template!r}: give UNIT=TEMPLATE pairs, comma-separated, "
                    "e.g. --cost 'tokens={est_tokens}'"
                )
            pairs.append((unit_name(unit.strip()), template.strip()))
        return pairs

    def concurrency_limit(self) -> int | None:
        """The fixed concurrency, or None for ``auto``."""
        if self.concurrency == "auto":
            return None
        try:
            value = int(self.concurrency)
        except ValueError:
            value = 0
        if value < 1:
            raise UsageError(
                f"--concurrency {self.concurrency!r}: give a whole number of at least 1, or auto"
            )
        return value

    # -- identity --------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same batch: the operation, not the limits, the output or
        where the server is (``--base-url``: staging and production run the same batch).
        Secrets are left out (header values that are credentials)."""
        public = self.public()
        return {
            "command": public.command,
            "id": public.id_template,
            "url": public.url,
            "method": public.method,
            "json": public.json_template,
            "body": public.body_template,
            "headers": public.headers,
            "target": public.target,
            "unpack": public.unpack,
            "argv": public.argv,
            "shell": public.shell,
            # Only when set: the journals of batches without it keep their identity.
            **({"body_per_line": True} if public.body_per_line else {}),
        }

    def fingerprint_text(self) -> str:
        """The journal's operation identity (see :func:`paceline.stores.fingerprint_of`)."""
        return "paceline-cli:" + json.dumps(self.identity(), sort_keys=True)

    def label(self) -> str:
        """A short human name for the batch, shown in errors and reports."""
        public = self.public()
        if self.command == "http":
            method = public.method or ("POST" if public.body_per_line else None)
            if public.url is None and method is None:
                what = "(requests from the input)"  # each row names its method (GET if not)
            else:
                what = f"{method or 'GET'} {public.url or '(urls from the input)'}"
        elif self.command == "call":
            what = str(self.target)
        else:
            what = " ".join(public.argv)
        return f"paceline {self.command} {what}"

    def journal_path(self) -> Path | None:
        """Where this batch's journal lives (None: ``--journal none``)."""
        if self.journal == NO_JOURNAL:
            return None
        if self.journal is not None:
            return Path(self.journal)
        source = "stdin" if self.input == "-" else os.path.abspath(self.input)
        digest = hashlib.sha256(
            (self.fingerprint_text() + "\0" + source).encode("utf-8", "surrogateescape")
        ).hexdigest()[:10]
        stem = "stdin" if self.input == "-" else Path(self.input).stem
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:40] or "input"
        return Path(JOURNAL_DIR) / f"{self.command}-{stem}-{digest}.journal"

    # -- storing ---------------------------------------------------------------------------

    def public(self) -> RunSpec:
        """The spec as the journal keeps it: credentials masked (credential header values,
        ``api_key=...`` and ``user:pass@`` in URLs, bodies and command words — a template that
        only names a column, ``{"password": "{pw}"}``, is not a secret and stays), the input
        and ``--out`` paths absolute (a resume from another directory reads the same files).

        >>> spec = RunSpec(command="http", input="in.csv", url="https://h/{id}?api_key=k1",
        ...                json_template='{"password": "{pw}"}', headers=["X-Auth-Token: t"])
        >>> public = spec.public()
        >>> public.url, public.json_template, public.headers
        ('https://h/{id}?api_key=[REDACTED]', '{"password": "{pw}"}', ['X-Auth-Token: [REDACTED]'])
        >>> os.path.isabs(public.input)
        True
        """
        copy = dataclasses.replace(self)
        copy.headers = [redact_header(h) for h in self.headers]
        copy.rates = list(self.rates)
        copy.halt = list(self.halt)
        copy.fail_on, copy.exhausted_on = list(self.fail_on), list(self.exhausted_on)
        copy.throttle_on, copy.retry_on = list(self.throttle_on), list(self.retry_on)
        copy.argv = redact_argv(self.argv, placeholders=True)
        for name, _ in _MASKABLE:
            value = getattr(self, name)
            if value is not None:
                setattr(copy, name, redact_text(value, placeholders=True))
        if self.input != "-":
            copy.input = os.path.abspath(self.input)
        if self.out is not None and self.out != "-":
            copy.out = os.path.abspath(self.out)
        return copy

    def masked(self) -> list[tuple[str, str]]:
        """The options that hold a masked value (``[REDACTED]``), as ``(option, value)``: what a
        spec read back from a journal lacks until the user gives it again.

        >>> RunSpec(command="http", input="-", url="https://h/?token=[REDACTED]").masked()
        [('--url', 'https://h/?token=[REDACTED]')]
        """
        found = [
            (option, getattr(self, name))
            for name, option in _MASKABLE
            if REDACTED in (getattr(self, name) or "")
        ]
        found += [("--header", h) for h in self.headers if REDACTED in h]
        found += [("command word", word) for word in self.argv if REDACTED in word]
        return found

    def to_json(self) -> str:
        """The spec as stored in the journal (call :meth:`public` first to drop secrets)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """Back from :meth:`to_json`; unknown fields (a newer version's) are ignored."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# The options whose values public() masks, with their names on the command line.
_MASKABLE = (
    ("url", "--url"),
    ("base_url", "--base-url"),
    ("json_template", "--json"),
    ("body_template", "--body"),
    ("rate_store", "--rate-store"),
)


def input_head(path: str, size: int | None = None) -> str | None:
    """The identity of an input file: ``"<n>:<digest>"``, the SHA-256 of its first ``n`` bytes
    (``n`` at most :data:`INPUT_HEAD_BYTES`). None for stdin, or a file that cannot be read (the
    run itself then says why). ``size`` hashes that many bytes, to compare with a stored head:
    rows appended since leave the identity as it was.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp(), "in.csv")
    >>> _ = path.write_text("id\\n1\\n")
    >>> head = input_head(str(path))
    >>> _ = path.write_text("id\\n1\\n2\\n")  # a row appended
    >>> input_head(str(path), same_size(head)) == head, input_head(str(path)) == head
    (True, False)
    """
    if path == "-":
        return None
    wanted = INPUT_HEAD_BYTES if size is None else size
    try:
        with open(path, "rb") as handle:
            head = handle.read(wanted)
    except OSError:
        return None
    return f"{len(head)}:{hashlib.sha256(head).hexdigest()[:32]}"


def same_size(head: str | None) -> int | None:
    """How many bytes a stored :func:`input_head` covers (None if it is not one)."""
    size, sep, _ = (head or "").partition(":")
    return int(size) if sep and size.isdigit() else None


def split_header(header: str) -> tuple[str, str]:
    """``"Name: value"`` -> ``("Name", "value")``; a usage error otherwise.

    >>> split_header("X-Tenant: {tenant}")
    ('X-Tenant', '{tenant}')
    """
    name, sep, value = header.partition(":")
    if not sep or not name.strip() or " " in name.strip():
        shown = redact_header(header) if sep else header[:40]
        raise UsageError(f"--header {shown!r}: write it as 'Name: value', e.g. 'X-Tenant: acme'")
    return name.strip(), value.strip()


def redact_header(header: str) -> str:
    """A header with its value masked if its name is a credential (unless the value only names
    the column it comes from: ``Authorization: Bearer {token}`` is kept).

    >>> redact_header("Authorization: Bearer abc"), redact_header("Accept: text/csv")
    ('Authorization: [REDACTED]', 'Accept: text/csv')
    >>> redact_header("Private-Token: {token}")
    'Private-Token: {token}'
    """
    name, sep, value = header.partition(":")
    if sep and is_sensitive_name(name.strip()) and not only_names_fields(value):
        return f"{name.strip()}: {REDACTED}"
    return f"{name}{sep}{redact_text(value, placeholders=True)}" if sep else header
