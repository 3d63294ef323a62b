"""The ``paceline`` command (typer): ``http``, ``call``, ``exec``, ``report``, ``resume``,
``serve-test`` and ``demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from paceline.cli.run import EXIT_USAGE, SPEC_META, Display, run_spec, write_html
from paceline.cli.spec import RunSpec, UsageError, input_head, same_size
from paceline.redact import redact_argv, redact_text

app = typer.Typer(
    name="paceline",
    help="Run big batches against rate-limited APIs as fast as they allow, never faster: "
    "HTTP requests, Python calls or commands, one per input row, with a live progress bar, "
    "a resumable journal and a report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# -- options shared by http, call and exec ------------------------------------------------

Input = Annotated[str, typer.Argument(help="JSON Lines or CSV file, or - for stdin.")]
Rates = Annotated[
    list[str] | None,
    typer.Option(
        "--rate",
        metavar="N/WINDOW",
        help="At most N starts per window, e.g. 10/s, 500/min; repeat: all apply.",
    ),
]
Burst = Annotated[int | None, typer.Option(help="Starts allowed back to back (1: evenly paced).")]
RateStore = Annotated[
    str | None,
    typer.Option(
        "--rate-store",
        metavar="URL",
        envvar="PACELINE_RATE_STORE",
        help="Share the --rate limits with every process and machine using the same key, on "
        "Redis: redis://host:6379/0, a Redis Cluster: redis+cluster://host:7000 "
        "(also PACELINE_RATE_STORE).",
    ),
]
RateKey = Annotated[
    str | None,
    typer.Option(
        "--rate-key",
        metavar="NAME",
        help="The shared limit's name in --rate-store (default: the limits and the target host; "
        "--dry-run shows it).",
    ),
]
RateStoreOutage = Annotated[
    float | None,
    typer.Option(
        "--rate-store-outage",
        metavar="SECONDS",
        help="Stop (exit 3, resumable) when --rate-store is unreachable this long (default: "
        "wait for it; nothing starts without a grant).",
    ),
]
RateStoreDegraded = Annotated[
    str,
    typer.Option(
        "--rate-store-degraded",
        metavar="hold|split",
        help="While --rate-store is unreachable (after 1 s): hold (the default: nothing starts "
        "without a grant) or split (run at 1/k of each --rate, k = the processes the store "
        "last saw on the key; back on the store when it answers).",
    ),
]
RateMargin = Annotated[
    float | None,
    typer.Option(
        "--rate-margin",
        metavar="SECONDS",
        help="Lengthen each --rate window by this much, so the limit holds for arrivals at the "
        "server, which follow starts by a network delay that varies (default: 0.001; with "
        "--dask 0.01, for several worker processes; with --rate-store 0.05, for machines at "
        "different distances from the server).",
    ),
]
Concurrency = Annotated[
    str,
    typer.Option(
        "-j",
        "--concurrency",
        metavar="N|auto",
        help="Items in flight: a number, or auto (adapts to the server).",
    ),
]
Retries = Annotated[
    int | None,
    typer.Option(
        help="Retries of a failed item, any failure (default: http and call retry transient "
        "failures — timeouts, broken connections — 4 times; exec never). Throttles (429, 503, "
        "Throttled) are retried apart from these, up to 20 times an item."
    ),
]
Timeout = Annotated[float | None, typer.Option("--timeout", help="Seconds per attempt.")]
GiveUpAfter = Annotated[
    str | None,
    typer.Option(
        "--give-up-after",
        metavar="DURATION|off",
        help="Stop (exit 3, resumable) when attempts keep failing and none has succeeded "
        "for this long (default 10m).",
    ),
]
_RULE_HELP = (
    "conditions joined by commas: status=403 (or 4xx, 403|429), header=NAME[:VALUE], "
    "body~TEXT (last); repeatable"
)
FailOn = Annotated[
    list[str] | None,
    typer.Option(
        "--fail-on",
        metavar="RULE",
        help=f"Answers that fail at once, unretried, e.g. 'body~insufficient_quota': {_RULE_HELP}.",
    ),
]
ExhaustedOn = Annotated[
    list[str] | None,
    typer.Option(
        "--exhausted-on",
        metavar="RULE",
        help="Answers that say the server's quota is gone (stop sending to it, exit 3, "
        f"resumable), e.g. 'status=402': {_RULE_HELP}.",
    ),
]
ThrottleOn = Annotated[
    list[str] | None,
    typer.Option(
        "--throttle-on",
        metavar="RULE",
        help="Answers that mean 'slow down' (retried, paced by), e.g. "
        f"'status=403,body~secondary rate limit': {_RULE_HELP}.",
    ),
]
RetryOn = Annotated[
    list[str] | None,
    typer.Option(
        "--retry-on",
        metavar="RULE",
        help=f"Answers that are transient errors (retried within the budget): {_RULE_HELP}.",
    ),
]
Halt = Annotated[
    list[str] | None,
    typer.Option(
        "--halt",
        metavar="RULE",
        help="Stop early, GNU parallel style: soon,fail=5%  now,fail=1 ...; a budget cap on a "
        "unit's total (http): soon,tokens=2000000",
    ),
]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Show what would run (first items, limits); run nothing.")
]
DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        help="Run the items on a Dask cluster: tcp://host:8786 (a running scheduler) or "
        "local:N (N worker processes, started and stopped for this run). The journal, --out "
        "and the progress stay here.",
    ),
]
KeepOrder = Annotated[
    bool, typer.Option("--keep-order", "-k", help="Write results in input order.")
]
JournalOpt = Annotated[
    str | None,
    typer.Option(
        "--journal",
        metavar="PATH|none",
        help="Journal file (default: under .paceline/, from the command); none: off.",
    ),
]
RetryFailed = Annotated[
    bool, typer.Option("--retry-failed", help="Run the items that failed before again.")
]
Fresh = Annotated[bool, typer.Option("--fresh", help="Forget the journal: start over.")]
Out = Annotated[
    str | None,
    typer.Option(
        "--out", "-o", metavar="FILE|-", help="Write outcomes: results.jsonl, .csv, or -."
    ),
]
OnBad = Annotated[
    str,
    typer.Option(
        "--on-bad-input", help="A malformed line: stop (exit 2) or skip (record it as failed)."
    ),
]
Format = Annotated[str, typer.Option("--format", help="auto, jsonl, csv or tsv.")]
IdOpt = Annotated[
    str | None, typer.Option("--id", help="Template naming each item, e.g. '{tenant}'.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no report.")]
Html = Annotated[
    str | None, typer.Option("--html", help="Also write the report as a self-contained page.")
]
NoReport = Annotated[bool, typer.Option("--no-report", help="No summary at the end.")]
IncludeInput = Annotated[
    list[str] | None,
    typer.Option(
        "--include-input",
        metavar="FIELD,...",
        help="Write these input columns with each result in --out (repeatable).",
    ),
]


def _common(**values: Any) -> dict[str, Any]:
    return {
        "rates": list(values["rate"] or []),
        "burst": values["burst"],
        "rate_store": values["rate_store"],
        "rate_key": values["rate_key"],
        "rate_store_outage_s": values["rate_store_outage"],
        "rate_store_degraded": values["rate_store_degraded"],
        "rate_margin_s": values["rate_margin"],
        "concurrency": values["concurrency"],
        "retries": values["retries"],
        "timeout_s": values["timeout"],
        "halt": list(values["halt"] or []),
        "keep_order": values["keep_order"],
        "dask": values.get("dask"),
        "journal": values["journal"],
        "retry_failed": values["retry_failed"],
        "out": values["out"],
        "on_bad_input": values["on_bad_input"],
        "format": values["format"],
        "id_template": values["id"],
        "give_up_after": values["give_up_after"],
        "include_input": [
            name.strip()
            for text in values.get("include_input") or []
            for name in text.split(",")
            if name.strip()
        ],
    }


def _launch(spec: RunSpec, values: dict[str, Any]) -> None:
    display = Display(quiet=values["quiet"], report=not values["no_report"], html=values["html"])
    try:
        if values["dry_run"]:
            from paceline.cli.plan import show_plan

            code = show_plan(spec, sys.stdout)
        else:
            spec.input_head = input_head(spec.input)  # kept in the journal: resume checks it
            code = run_spec(spec, display, fresh=values["fresh"])
    except UsageError as exc:
        fail(str(exc))
    raise typer.Exit(code)


def fail(message: str) -> None:
    """One line on stderr, exit 2."""
    typer.echo(f"paceline: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


@app.command("http")
def http_command(
    input: Input,
    url: Annotated[
        str | None, typer.Option(help="URL template, e.g. 'https://api/items/{id}'.")
    ] = None,
    method: Annotated[str | None, typer.Option(help="GET, POST ... (a template too).")] = None,
    json_body: Annotated[
        str | None, typer.Option("--json", help='JSON body template: \'{"name": "{name}"}\'.')
    ] = None,
    body: Annotated[str | None, typer.Option(help="Raw body template.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Base for relative URLs.")] = None,
    idempotency_header: Annotated[
        str | None,
        typer.Option(
            "--idempotency-header",
            metavar="NAME",
            help="Header carrying each POST/PATCH's stable key (default Idempotency-Key; "
            "'' sends none). A row's own header of that name wins.",
        ),
    ] = None,
    no_idempotency_key: Annotated[
        bool,
        typer.Option(
            "--no-idempotency-key", help="Send no idempotency key (as --idempotency-header '')."
        ),
    ] = False,
    idempotency_methods: Annotated[
        str | None,
        typer.Option(
            "--idempotency-methods",
            metavar="M,M",
            help="Methods that get a key and are not retried blind (default POST,PATCH).",
        ),
    ] = None,
    retry_unsafe: Annotated[
        bool,
        typer.Option(
            "--retry-unsafe",
            help="Retry a POST/PATCH that may have been processed even without a key "
            "(a timeout or dropped connection after sending): it may be done twice.",
        ),
    ] = False,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header", "-H", metavar="'NAME: VALUE'", help="Repeatable; credentials redacted"
        ),
    ] = None,
    rate: Rates = None,
    burst: Burst = None,
    rate_store: RateStore = None,
    rate_key: RateKey = None,
    rate_store_outage: RateStoreOutage = None,
    rate_store_degraded: RateStoreDegraded = "hold",
    rate_margin: RateMargin = None,
    cost: Annotated[
        str | None,
        typer.Option(
            "--cost",
            metavar="UNIT={FIELD}",
            help="Each row's estimate for a --rate in another unit, e.g. 'tokens={est_tokens}' "
            '(JSON Lines rows may carry "cost" instead); settled from the answer\'s usage.',
        ),
    ] = None,
    body_per_line: Annotated[
        bool,
        typer.Option(
            "--body-per-line",
            help="Each JSON Lines row is the JSON body of a POST to --url (OpenAI's batch "
            'format); its "metadata" goes to --out, its "cost" is reserved.',
        ),
    ] = False,
    include_input: IncludeInput = None,
    concurrency: Concurrency = "auto",
    retries: Retries = None,
    timeout: Timeout = None,
    halt: Halt = None,
    give_up_after: GiveUpAfter = None,
    throttle_on: ThrottleOn = None,
    exhausted_on: ExhaustedOn = None,
    fail_on: FailOn = None,
    retry_on: RetryOn = None,
    dry_run: DryRun = False,
    dask: DaskOpt = None,
    keep_order: KeepOrder = False,
    journal: JournalOpt = None,
    retry_failed: RetryFailed = False,
    fresh: Fresh = False,
    out: Out = None,
    on_bad_input: OnBad = "stop",
    format: Format = "auto",
    id: IdOpt = None,
    quiet: Quiet = False,
    html: Html = None,
    no_report: NoReport = False,
) -> None:
    """An HTTP request per input row: JSON Lines requests (url, method, headers, json, body,
    id; other fields are written with the result in --out), rows filled into
    --url/--method/--json templates, or each row as the body (--body-per-line)."""
    values = locals()
    spec = RunSpec(
        command="http",
        input=input,
        url=url,
        method=method,
        json_template=json_body,
        body_template=body,
        base_url=base_url,
        headers=list(header or []),
        cost_template=cost,
        idempotency_header="" if no_idempotency_key else idempotency_header,
        idempotency_methods=idempotency_methods,
        retry_unsafe=retry_unsafe,
        throttle_on=list(throttle_on or []),
        exhausted_on=list(exhausted_on or []),
        fail_on=list(fail_on or []),
        retry_on=list(retry_on or []),
        body_per_line=body_per_line,
        **_common(**values),
    )
    _launch(spec, values)


@app.command("call")
def call_command(
    target: Annotated[str, typer.Argument(help="module:function, called with each row.")],
    input: Input,
    unpack: Annotated[
        bool, typer.Option("--unpack", help="Pass the row's columns as keyword arguments.")
    ] = False,
    rate: Rates = None,
    burst: Burst = None,
    include_input: IncludeInput = None,
    rate_store: RateStore = None,
    rate_key: RateKey = None,
    rate_store_outage: RateStoreOutage = None,
    rate_store_degraded: RateStoreDegraded = "hold",
    rate_margin: RateMargin = None,
    concurrency: Concurrency = "auto",
    retries: Retries = None,
    timeout: Timeout = None,
    halt: Halt = None,
    give_up_after: GiveUpAfter = None,
    dry_run: DryRun = False,
    dask: DaskOpt = None,
    keep_order: KeepOrder = False,
    journal: JournalOpt = None,
    retry_failed: RetryFailed = False,
    fresh: Fresh = False,
    out: Out = None,
    on_bad_input: OnBad = "stop",
    format: Format = "auto",
    id: IdOpt = None,
    quiet: Quiet = False,
    html: Html = None,
    no_report: NoReport = False,
) -> None:
    """A Python function (sync or async) per input row. Raise paceline.Throttled(retry_after=...)
    to slow the batch down."""
    values = locals()
    spec = RunSpec(command="call", input=input, target=target, unpack=unpack, **_common(**values))
    _launch(spec, values)


@app.command("exec")
def exec_command(
    input: Input,
    command: Annotated[
        list[str] | None, typer.Argument(help="After --: the command, with {column} words.")
    ] = None,
    shell: Annotated[
        bool, typer.Option("--shell", help="Run through /bin/sh (values are quoted).")
    ] = False,
    rate: Rates = None,
    burst: Burst = None,
    include_input: IncludeInput = None,
    rate_store: RateStore = None,
    rate_key: RateKey = None,
    rate_store_outage: RateStoreOutage = None,
    rate_store_degraded: RateStoreDegraded = "hold",
    rate_margin: RateMargin = None,
    concurrency: Concurrency = "auto",
    retries: Retries = None,
    timeout: Timeout = None,
    halt: Halt = None,
    give_up_after: GiveUpAfter = None,
    dry_run: DryRun = False,
    dask: DaskOpt = None,
    keep_order: KeepOrder = False,
    journal: JournalOpt = None,
    retry_failed: RetryFailed = False,
    fresh: Fresh = False,
    out: Out = None,
    on_bad_input: OnBad = "stop",
    format: Format = "auto",
    id: IdOpt = None,
    quiet: Quiet = False,
    html: Html = None,
    no_report: NoReport = False,
) -> None:
    """A command per input row, without a shell: paceline exec jobs.csv -- convert {src} {dst}.
    -j auto runs one per CPU core."""
    values = locals()
    spec = RunSpec(
        command="exec", input=input, argv=list(command or []), shell=shell, **_common(**values)
    )
    _launch(spec, values)


@app.command("report")
def report_command(
    journal: Annotated[str, typer.Argument(help="A journal file (see .paceline/).")],
    html: Html = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """What a batch did: outcomes, status codes, latency, throughput, retries, top errors."""
    import json

    from paceline.cli.report import build_report, render_text
    from paceline.stores import JournalError
    from paceline.stores.view import JournalView

    _must_exist(journal)
    try:
        with JournalView.open(journal) as stored:
            report = build_report(stored)
        if html:
            write_html(Path(journal), html)
    except (JournalError, UsageError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_text(report))


@app.command("resume")
def resume_command(
    journal: Annotated[str, typer.Argument(help="The journal of the batch to continue.")],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="After --: an exec batch's command again, if it held a secret."),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="Give credential headers again (not stored)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="The batch's --url again, if it held a secret.")
    ] = None,
    json_body: Annotated[
        str | None, typer.Option("--json", help="The batch's --json again, if it held a secret.")
    ] = None,
    body: Annotated[
        str | None, typer.Option(help="The batch's --body again, if it held a secret.")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="The batch's --base-url again, if it held a secret.")
    ] = None,
    retry_failed: RetryFailed = False,
    input: Annotated[
        str | None, typer.Option("--input", help="Read the input from here instead.")
    ] = None,
    out: Out = None,
    halt: Annotated[
        list[str] | None,
        typer.Option(
            "--halt",
            metavar="RULE",
            help="Replace the batch's halt rules, e.g. a raised budget cap: soon,tokens=4000000",
        ),
    ] = None,
    dask: DaskOpt = None,
    quiet: Quiet = False,
    html: Html = None,
    no_report: NoReport = False,
) -> None:
    """Continue a batch from its journal: what finished is skipped, the rest runs. Secrets are
    not kept: give a masked --url, --json, --body, --header or command again."""
    from paceline.stores import JournalError
    from paceline.stores.view import JournalView

    _must_exist(journal)
    try:
        with JournalView.open(journal) as stored:
            text = stored.meta.get(SPEC_META)
    except JournalError as exc:
        fail(str(exc))
    if text is None:
        fail(f"{journal}: not a journal written by the paceline command; resume it from Python")
    spec = RunSpec.from_json(str(text))
    spec.journal = journal
    spec.retry_failed = retry_failed
    if input is not None:
        spec.input = input
    elif spec.input == "-" and sys.stdin.isatty():
        fail(
            "this batch read its input from stdin: pipe the same input again "
            f"(... | paceline resume {journal}), or give it with --input FILE"
        )
    else:
        _check_input(spec)
    if out is not None:
        spec.out = out
    if halt:
        spec.halt = list(halt)
    spec.dask = dask  # here or on a cluster, whichever way the batch ran before
    given = {"url": url, "json_template": json_body, "body_template": body, "base_url": base_url}
    for name, value in given.items():
        if value is not None:
            _give_again(spec, name, value)
    if command:
        _give_command_again(spec, command)
    if header:
        by_name = {h.partition(":")[0].strip().lower(): h for h in header}
        merged = [by_name.pop(h.partition(":")[0].strip().lower(), h) for h in spec.headers]
        spec.headers = merged + list(by_name.values())
    missing = spec.masked()
    if missing:
        fail(_masked_message(journal, missing))
    _launch(
        spec,
        {"quiet": quiet, "no_report": no_report, "html": html, "dry_run": False, "fresh": False},
    )


_OPTIONS = {
    "url": "--url",
    "json_template": "--json",
    "body_template": "--body",
    "base_url": "--base-url",
}


def _check_input(spec: RunSpec) -> None:
    """Refuse to resume over a file that is not the one the batch read (another directory's
    ``in.csv``, a rewritten export); ``--input`` takes one on purpose."""
    if spec.input == "-" or spec.input_head is None:  # stdin, or a journal of an older version
        return
    now = input_head(spec.input, same_size(spec.input_head))
    if now is None:
        fail(
            f"the input this batch read, {spec.input}, cannot be read now; "
            "give it with --input FILE"
        )
    if now != spec.input_head:
        fail(
            f"{spec.input} is not the file this batch read (it begins differently); to run "
            f"this file anyway, give it with --input {spec.input}"
        )


def _give_again(spec: RunSpec, name: str, value: str) -> None:
    """Take a value given again on resume if it is the batch's own (the same once masked)."""
    option = _OPTIONS[name]
    stored = getattr(spec, name)
    shown = redact_text(value, placeholders=True)
    if shown != stored:
        was = "none" if stored is None else repr(stored)
        fail(f"{option} {shown!r} is not this batch's {option} ({was}); give the one it ran with")
    setattr(spec, name, value)


def _give_command_again(spec: RunSpec, command: list[str]) -> None:
    if spec.command != "exec":
        fail(f"a command after -- is for exec batches; this one is paceline {spec.command}")
    shown = redact_argv(command, placeholders=True)
    if shown != spec.argv:
        fail(
            f"the command {' '.join(shown)!r} is not this batch's ({' '.join(spec.argv)!r}); "
            "give the one it ran with"
        )
    spec.argv = list(command)


def _masked_message(journal: str, missing: list[tuple[str, str]]) -> str:
    sent = ", ".join(f"{option} {value!r}" for option, value in missing)
    fixes: list[str] = []
    for option, _ in missing:
        fix = {
            "--header": "--header 'Name: value'",
            "command word": "-- COMMAND ...",
        }.get(option, f"{option} VALUE")
        if fix not in fixes:
            fixes.append(fix)
    return (
        f"this batch sent {sent}, which the journal does not keep; give it again: "
        f"paceline resume {journal} {' '.join(fixes)} (or run the batch's command again with "
        f"--journal {journal})"
    )


@app.command(
    "serve-test",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    # --help goes to the server's own parser, which knows its options (ours knows none).
    add_help_option=False,
)
def serve_test_command(ctx: typer.Context) -> None:
    """Serve the rate-limited test API on 127.0.0.1 (options: --quota 50/1s --bucket 10
    --retry-after --headers ietf --capacity 16 --error-rate 0.01 --port 8080 ...; --llm
    --llm-tokens-per-min 60000 for an OpenAI-style chat API; --help for all)."""
    from paceline.testing.api_server import main as serve

    raise typer.Exit(serve(list(ctx.args)))


@app.command("demo")
def demo_command(
    items: Annotated[int, typer.Option(help="How many requests.")] = 400,
    quota: Annotated[int, typer.Option(help="The test API's hidden quota per second.")] = 50,
    directory: Annotated[
        str, typer.Option("--dir", help="Where the input, journal and report go.")
    ] = ".paceline/demo",
    quiet: Quiet = False,
) -> None:
    """The main job on an embedded default: start the test API (hidden quota), fetch items
    from it with the live bar, a journal and a report; check what the server saw."""
    from paceline.cli.demo import run_demo

    raise typer.Exit(run_demo(items=items, quota=quota, directory=directory, quiet=quiet))


def _must_exist(journal: str) -> None:
    if not Path(journal).is_file():
        fail(
            f"no journal at {journal!r}; journals of earlier runs are under .paceline/ "
            "(ls .paceline), or give the path printed when the batch ran"
        )
