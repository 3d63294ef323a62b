"""``paceline resume``: it sends exactly what the first run sent (or refuses, naming what to give
again), reads the same input wherever it is run from, and writes no secret down.

The peer is a small recording HTTP server on loopback: it keeps every request line, header and
body it receives, so a test can assert what was sent, and fails the ids it is told to (a first
run that leaves work for the resume)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from paceline.stores.view import JournalView

PACELINE = str(Path(sys.executable).with_name("paceline"))
TIMEOUT_S = 120
SECRET = "K3y-s3cr3t-9f1c"


class Recorder(ThreadingHTTPServer):
    """Answers ``/items/<id>`` with ``{"id": id}`` (500 for the ids in ``failing``) and keeps
    what each request carried."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.failing: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def served(self) -> Counter[str]:
        """How many times each id was answered 200."""
        with self.lock:
            return Counter(r["id"] for r in self.requests if r["status"] == 200)


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        item = self.path.partition("?")[0].rpartition("/")[2]
        with self.server.lock:
            status = 500 if item in self.server.failing else 200
            self.server.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body,
                    "id": item,
                    "status": status,
                }
            )
        payload = json.dumps({"id": item}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def paceline(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACELINE, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


INPUTS = ("in.csv", "in.jsonl")


def written(directory: Path) -> bytes:
    """Every byte paceline left in ``directory`` (journals with their -wal/-shm, outputs), not
    the inputs the test wrote."""
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name not in INPUTS]
    assert files
    return b"".join(p.read_bytes() for p in files)


def journal_keys(path: Path) -> list[str]:
    with JournalView.open(path) as view:
        return [row.key for row in view.outcomes()]


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    return lines[0]


ROWS = 58
FAILED_FIRST = {str(n) for n in range(20, ROWS)}  # the first run leaves these for the resume


def _csv(path: Path) -> None:
    path.write_text("id,name\n" + "".join(f"{n},n{n}\n" for n in range(ROWS)))


# -- defect 2: resume sends what the first run sent ------------------------------------------


def test_resume_of_a_url_with_a_query_credential_sends_the_credential(
    tmp_path: Path, recorder: Recorder
) -> None:
    _csv(tmp_path / "in.csv")
    url = recorder.url + "/items/{id}?api_key=" + SECRET
    recorder.failing = set(FAILED_FIRST)
    first = paceline(
        "http", "in.csv", "--url", url, "--retries", "0", "-j", "4", "--journal", "j.journal",
        "--out", "out.jsonl", cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    recorder.failing = set()

    # The journal does not keep the credential: resume asks for --url again, sends nothing.
    sent_before = len(recorder.requests)
    refused = paceline("resume", "j.journal", "--retry-failed", cwd=tmp_path)
    message = one_line(refused)
    assert "--url" in message
    assert SECRET not in message
    assert len(recorder.requests) == sent_before

    # Given again, it resumes: only the failures run, with the credential.
    resumed = paceline(
        "resume", "j.journal", "--retry-failed", "--url", url, "--out", "out2.jsonl",
        cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert all(r["path"].endswith("?api_key=" + SECRET) for r in recorder.requests)
    served = recorder.served()
    assert sorted(served, key=int) == [str(n) for n in range(ROWS)]
    assert set(served.values()) == {1}  # nothing done twice
    assert len(recorder.requests) == ROWS + len(FAILED_FIRST)

    dry = paceline("http", "in.csv", "--url", url, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert SECRET not in dry.stdout + dry.stderr
    assert SECRET.encode() not in written(tmp_path)
    for text in (first.stderr, refused.stderr, resumed.stderr):
        assert SECRET not in text


def test_resume_with_a_different_url_is_refused(tmp_path: Path, recorder: Recorder) -> None:
    _csv(tmp_path / "in.csv")
    url = recorder.url + "/items/{id}?api_key=" + SECRET
    recorder.failing = {"3"}
    first = paceline(
        "http", "in.csv", "--url", url, "--retries", "0", "--journal", "j.journal", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    sent = len(recorder.requests)
    other = paceline(
        "resume", "j.journal", "--retry-failed", "--url", recorder.url + "/other/{id}?api_key=x",
        cwd=tmp_path,
    )  # fmt: skip
    message = one_line(other)
    assert "--url" in message
    assert len(recorder.requests) == sent


def test_the_same_command_again_resumes_a_batch_with_a_query_credential(
    tmp_path: Path, recorder: Recorder
) -> None:
    _csv(tmp_path / "in.csv")
    url = recorder.url + "/items/{id}?token=" + SECRET
    args = ("http", "in.csv", "--url", url, "--retries", "0", "-q")
    recorder.failing = set(FAILED_FIRST)
    first = paceline(*args, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    recorder.failing = set()
    again = paceline(*args, "--retry-failed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert set(recorder.served().values()) == {1}
    assert all(r["path"].endswith("?token=" + SECRET) for r in recorder.requests)
    assert SECRET.encode() not in written(tmp_path)


def test_resume_of_a_json_template_that_names_a_password_column_needs_nothing_again(
    tmp_path: Path, recorder: Recorder
) -> None:
    (tmp_path / "in.csv").write_text(
        "id,pw\n" + "".join(f"{n},{SECRET}-{n}\n" for n in range(ROWS))
    )
    recorder.failing = set(FAILED_FIRST)
    first = paceline(
        "http", "in.csv", "--url", recorder.url + "/items/{id}", "--method", "POST",
        "--json", '{"password": "{pw}"}', "--retries", "0", "--journal", "j.journal", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    recorder.failing = set()
    resumed = paceline("resume", "j.journal", "--retry-failed", "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for request in recorder.requests:
        assert json.loads(request["body"]) == {"password": f"{SECRET}-{request['id']}"}
    assert set(recorder.served().values()) == {1}
    assert SECRET.encode() not in written(tmp_path)


def test_resume_of_an_exec_batch_with_a_password_argument(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("n,pw\n" + "".join(f"{n},{SECRET}-{n}\n" for n in range(12)))
    # Row 5 fails while the file "broken" exists; each run appends its argument to seen.log.
    script = 'case "$1" in *-5) [ -e broken ] && exit 1;; esac; echo "$1" >> "$0.log"'
    (tmp_path / "broken").write_text("")
    command = ("--", "sh", "-c", script, str(tmp_path / "seen"), "--password={pw}")
    first = paceline(
        "exec", "in.csv", "-j", "1", "--journal", "j.journal", "-o", "out.jsonl", "-q", *command,
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    (tmp_path / "broken").unlink()
    resumed = paceline("resume", "j.journal", "--retry-failed", "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    seen = (tmp_path / "seen.log").read_text().splitlines()
    assert sorted(seen) == sorted(f"--password={SECRET}-{n}" for n in range(12))  # each once
    (tmp_path / "seen.log").unlink()
    assert SECRET.encode() not in written(tmp_path)


@pytest.mark.parametrize("password", [[f"--password={SECRET}"], ["--password", SECRET]])
def test_resume_of_an_exec_batch_with_a_literal_password_asks_for_the_command_again(
    tmp_path: Path, password: list[str]
) -> None:
    (tmp_path / "in.csv").write_text("n\n" + "".join(f"{n}\n" for n in range(6)))
    script = '[ "$2" = 3 ] && [ -e broken ] && exit 1; echo "$1 $2" >> "$0.log"'
    if len(password) == 2:
        script = script.replace("$2", "$3").replace('"$1 ', '"$1 $2 ')
    (tmp_path / "broken").write_text("")
    command = ["sh", "-c", script, str(tmp_path / "seen"), *password, "{n}"]
    first = paceline(
        "exec", "in.csv", "-j", "1", "--journal", "j.journal", "-q", "--", *command,
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    (tmp_path / "broken").unlink()
    refused = paceline("resume", "j.journal", "--retry-failed", cwd=tmp_path)
    message = one_line(refused)
    assert "[REDACTED]" in message
    assert "-- COMMAND" in message
    assert SECRET not in message
    resumed = paceline("resume", "j.journal", "--retry-failed", "-q", "--", *command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    seen = (tmp_path / "seen.log").read_text().splitlines()
    assert sorted(seen) == sorted(f"{' '.join(password)} {n}" for n in range(6))  # each once
    (tmp_path / "seen.log").unlink()
    assert SECRET.encode() not in written(tmp_path)


def test_a_redacted_value_is_never_sent(tmp_path: Path, recorder: Recorder) -> None:
    _csv(tmp_path / "in.csv")
    done = paceline(
        "http", "in.csv", "--url", recorder.url + "/items/{id}?api_key=[REDACTED]",
        "--journal", "none", cwd=tmp_path,
    )  # fmt: skip
    message = one_line(done)
    assert "--url" in message
    assert recorder.requests == []


# -- defect 6: no secret in keys, outputs or the journal's meta --------------------------------


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/items/{id}?access_token=" + SECRET, []),
        ("/items/{id}?page=1&signature=" + SECRET, []),
        ("/items/{id}", ["X-Auth-Token: " + SECRET]),
        ("/items/{id}", ["Private-Token: " + SECRET]),
        ("/items/{id}", ["X-Session-Key: " + SECRET]),
    ],
)
def test_credentials_reach_the_server_but_no_file(
    tmp_path: Path, recorder: Recorder, url: str, headers: list[str]
) -> None:
    _csv(tmp_path / "in.csv")
    options = [x for h in headers for x in ("-H", h)]
    done = paceline(
        "http", "in.csv", "--url", recorder.url + url, *options, "--journal", "j.journal",
        "-o", "out.jsonl", "--html", "r.html", "-j", "4", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(recorder.requests) == ROWS
    for request in recorder.requests:
        sent = request["path"] + json.dumps(request["headers"])
        assert SECRET in sent
    assert SECRET.encode() not in written(tmp_path)
    assert SECRET not in done.stderr + done.stdout
    keys = journal_keys(tmp_path / "j.journal")
    assert len(set(keys)) == ROWS


def test_keys_hide_a_password_in_the_url_and_stay_stable(
    tmp_path: Path, recorder: Recorder
) -> None:
    host = recorder.url.removeprefix("http://")
    (tmp_path / "in.jsonl").write_text(
        "".join(
            json.dumps({"url": f"http://ann:{SECRET}@{host}/items/{n}"}) + "\n" for n in range(9)
        )
    )
    args = ("http", "in.jsonl", "--journal", "j.journal", "-o", "out.jsonl", "-q")
    first = paceline(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = paceline(*args, cwd=tmp_path)  # the same keys: nothing runs again
    assert again.returncode == 0, again.stderr
    assert len(recorder.requests) == 9
    assert all("Authorization" in r["headers"] for r in recorder.requests)
    assert SECRET.encode() not in written(tmp_path)
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(set(ids)) == 9


def test_dry_run_shows_no_key_secret(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("n,pw\n1,p4ss-" + SECRET + "\n")
    done = paceline(
        "exec", "in.csv", "--dry-run", "--", "echo", "--password={pw}", "{n}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "line 2" in done.stdout
    assert SECRET not in done.stdout + done.stderr


# -- defect 7: the input is the one the batch read ---------------------------------------------


def test_resume_from_another_directory_reads_the_batch_input(
    tmp_path: Path, recorder: Recorder
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    _csv(home / "in.csv")
    (elsewhere / "in.csv").write_text("id,name\n" + "".join(f"x{n},n\n" for n in range(5)))
    recorder.failing = set(FAILED_FIRST)
    first = paceline(
        "http", "in.csv", "--url", recorder.url + "/items/{id}", "--retries", "0",
        "--journal", "j.journal", "-o", "out.jsonl", "-q", cwd=home,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    recorder.failing = set()
    resumed = paceline("resume", str(home / "j.journal"), "--retry-failed", "-q", cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(recorder.served(), key=int) == [str(n) for n in range(ROWS)]
    assert set(recorder.served().values()) == {1}
    assert not (elsewhere / "out.jsonl").exists()
    assert len((home / "out.jsonl").read_text().splitlines()) == ROWS  # the batch's --out


def test_resume_refuses_an_input_that_is_another_file_now(
    tmp_path: Path, recorder: Recorder
) -> None:
    _csv(tmp_path / "in.csv")
    recorder.failing = set(FAILED_FIRST)
    first = paceline(
        "http", "in.csv", "--url", recorder.url + "/items/{id}", "--retries", "0",
        "--journal", "j.journal", "-q", cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 1, first.stderr
    recorder.failing = set()
    sent = len(recorder.requests)
    (tmp_path / "in.csv").write_text("id,name\n" + "".join(f"y{n},n\n" for n in range(ROWS)))
    refused = paceline("resume", "j.journal", "--retry-failed", cwd=tmp_path)
    message = one_line(refused)
    assert str(tmp_path / "in.csv") in message
    assert "--input" in message
    assert len(recorder.requests) == sent
    # Given on purpose with --input, it runs.
    taken = paceline("resume", "j.journal", "--input", "in.csv", "-q", cwd=tmp_path)
    assert taken.returncode == 0, taken.stderr
    assert len(recorder.requests) == sent + ROWS


# -- defect 13: messages name options that exist ------------------------------------------------


def test_a_journal_of_another_batch_is_refused_naming_options_that_exist(
    tmp_path: Path, recorder: Recorder
) -> None:
    _csv(tmp_path / "in.csv")
    first = paceline(
        "http", "in.csv", "--url", recorder.url + "/items/{id}", "--journal", "j.journal", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    other = paceline(
        "http", "in.csv", "--url", recorder.url + "/other/{id}", "--journal", "j.journal",
        cwd=tmp_path,
    )  # fmt: skip
    message = one_line(other)
    assert "--reuse-journal" not in message
    assert "--fresh" in message


def _cli_options() -> set[str]:
    import typer.main

    from paceline.cli.app import app
    from paceline.testing.api_server import _parser

    options = {"--help"}
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            options.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    for action in _parser()._actions:  # serve-test passes its arguments to this parser
        options.update(o for o in action.option_strings if o.startswith("--"))
    return options


def _message_texts() -> Iterator[tuple[str, int, str]]:
    """Every string constant in paceline's source but docstrings (f-strings' parts too)."""
    import ast

    import paceline

    root = Path(paceline.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
            ):
                yield str(path.relative_to(root)), node.lineno, node.value


def test_every_option_the_messages_name_exists() -> None:
    import re

    options = _cli_options()
    assert {"--fresh", "--journal", "--retry-failed", "--url", "--input"} <= options
    named = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
    unknown = [
        (path, line, option)
        for path, line, text in _message_texts()
        for option in named.findall(text)
        if option not in options
    ]
    assert unknown == []


# -- units: the stored spec, keys ---------------------------------------------------------------


def test_the_stored_spec_masks_literal_secrets_and_keeps_templates(tmp_path: Path) -> None:
    from paceline.cli.spec import RunSpec

    spec = RunSpec(
        command="http",
        input="in.csv",
        out="out.jsonl",
        url="https://h/items/{id}?api_key=" + SECRET,
        json_template='{"password": "{pw}", "note": "{n}"}',
        headers=["Authorization: Bearer {token}", "X-Auth-Token: " + SECRET, "Accept: a/b"],
    )
    public = spec.public()
    assert SECRET not in public.to_json()
    assert public.url == "https://h/items/{id}?api_key=[REDACTED]"
    assert public.json_template == spec.json_template
    assert public.headers == [
        "Authorization: Bearer {token}",
        "X-Auth-Token: [REDACTED]",
        "Accept: a/b",
    ]
    assert public.masked() == [
        ("--url", "https://h/items/{id}?api_key=[REDACTED]"),
        ("--header", "X-Auth-Token: [REDACTED]"),
    ]
    assert public.input == str(Path("in.csv").absolute())
    assert public.out == str(Path("out.jsonl").absolute())
    assert public.public() == public  # the stored form is a fixed point: the fingerprint holds
    assert spec.fingerprint_text() == public.fingerprint_text()


def test_a_spec_holding_a_masked_value_does_not_check() -> None:
    from paceline.cli.spec import RunSpec, UsageError

    spec = RunSpec(command="exec", input="-", argv=["tool", "--password=[REDACTED]"])
    with pytest.raises(UsageError, match="never sent"):
        spec.check()


def test_keys_without_secrets_are_stable_and_unique() -> None:
    from paceline.cli.ops import key_without_secrets

    one = key_without_secrets(f"GET https://h/1?token={SECRET}", {"id": 1})
    assert SECRET not in one
    assert one == key_without_secrets(f"GET https://h/1?token={SECRET}", {"id": 1})
    # a rotated credential written in the template keeps the key
    assert one == key_without_secrets("GET https://h/1?token=other", {"id": 1})
    # two rows that differ only in their secret stay two items
    first = key_without_secrets("tool --password=a", {"pw": "a"})
    second = key_without_secrets("tool --password=b", {"pw": "b"})
    assert first != second
    assert key_without_secrets("GET https://h/1", {"id": 1}) == "GET https://h/1"


def test_input_head_tells_files_apart(tmp_path: Path) -> None:
    from paceline.cli.spec import input_head, same_size

    (tmp_path / "a.csv").write_text("id\n1\n")
    (tmp_path / "b.csv").write_text("id\n2\n")
    assert input_head(str(tmp_path / "a.csv")) != input_head(str(tmp_path / "b.csv"))
    before = input_head(str(tmp_path / "a.csv"))
    assert before is not None
    with (tmp_path / "a.csv").open("a") as grown:  # appending rows keeps the identity
        grown.write("3\n")
    assert input_head(str(tmp_path / "a.csv"), same_size(before)) == before
    (tmp_path / "a.csv").write_text("id\n9\n3\n")  # rewritten: another file
    assert input_head(str(tmp_path / "a.csv"), same_size(before)) != before
    (tmp_path / "a.csv").write_text("id")  # shorter than what the batch read
    assert input_head(str(tmp_path / "a.csv"), same_size(before)) != before
    assert input_head("-") is None
    assert input_head(str(tmp_path / "missing.csv")) is None
