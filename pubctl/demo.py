"""``pubctl demo``: the whole flow on a throwaway database, narrated, with real output.

Every ``$ pubctl ...`` step runs the real command line in a child process, and every
``SQL>`` step runs on the demo database, so what is shown is what a user would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from psycopg import conninfo, sql

from pubctl import db
from pubctl.queries import query
from pubctl.throwaway import ThrowawayPostgres

# The demo's own SQL plays the application; it still connects the way every pubctl
# session does (pinned search path), so it names the application's tables with their
# schema.
DEMO_APP = "pubctl demo (the application)"

BEFORE_INSTALL = """
INSERT INTO public.study_topic (id, name, exam_round_size) VALUES
    (1, 'Anatomy', 10), (2, 'Physiology', 8);
INSERT INTO public.study_question (id, topic_id, exam_name, exam_round, number, body, choices,
                            answer, explanation, explanation_status) VALUES
    (1, 1, 'Spring exam', 1, 1, 'Which bone is the longest?', '["femur","tibia","humerus"]',
     0, 'The femur is the longest bone.', 'ready'),
    (2, 1, 'Spring exam', 1, 2, 'How many ribs does an adult have?', '["12","24","32"]',
     1, NULL, 'draft'),
    (3, 2, 'Spring exam', 1, 1, 'Where is insulin made?', '["liver","pancreas"]',
     1, 'In the beta cells of the pancreas.', 'ready');
SELECT setval(pg_get_serial_sequence('public.study_question', 'id'), 100);
SELECT setval(pg_get_serial_sequence('public.study_topic', 'id'), 100);
"""


class Demo:
    """Narrates and runs the steps against one database URL."""

    def __init__(self, url: str, echo: Callable[[str], None] = click.echo) -> None:
        self.url = url
        self.echo = echo
        self.failures: list[str] = []

    def say(self, text: str) -> None:
        self.echo("")
        self.echo(click.style("# " + "\n# ".join(textwrap.wrap(text, 86)), fg="cyan"))

    def pubctl(self, *args: str, expect: int = 0) -> None:
        self.echo(click.style(f"$ pubctl {' '.join(args)}", bold=True))
        env = {
            k: v for k, v in os.environ.items() if k not in ("PUBCTL_DATABASE_URL", "DATABASE_URL")
        }
        env["PUBCTL_DATABASE_URL"] = self.url
        # The console script of this environment, as a user would type it.
        script = Path(sys.executable).with_name("pubctl")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "pubctl"]
        proc = subprocess.run([*command, *args], env=env, capture_output=True, text=True)
        out = (proc.stdout + proc.stderr).rstrip()
        if out:
            self.echo(out)
        if proc.returncode != expect:
            self.failures.append(
                f"pubctl {' '.join(args)} exited {proc.returncode}, expected {expect}"
            )
        elif expect:
            self.echo(f"(exit status {proc.returncode}, as expected)")

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> None:
        self.echo(click.style("SQL> " + " ".join(statement.split()), bold=True))
        with db.connect(self.url, autocommit=True, application_name=DEMO_APP) as conn:
            cur = conn.execute(statement, params)
            if cur.description:
                names = [d.name for d in cur.description]
                rows = cur.fetchall()
                self.echo("  " + " | ".join(names))
                for row in rows:
                    self.echo("  " + " | ".join("" if v is None else str(v) for v in row))
                self.echo(f"  ({len(rows)} row{'' if len(rows) == 1 else 's'})")
            else:
                self.echo(f"  {cur.statusmessage}")

    def run(self) -> bool:
        """All steps; True when every command behaved as narrated."""
        self.say("The application's own tables, with rows that exist before pubctl is installed.")
        self.pubctl("init-sample-schema")
        with db.connect(self.url, autocommit=True, application_name=DEMO_APP) as conn:
            conn.execute(BEFORE_INSTALL.encode())
        self.sql(
            "SELECT id, topic_id, body, explanation_status FROM public.study_question ORDER BY id"
        )

        self.say(
            "Install pubctl: schema pub, the outbox, the triggers. Publishing is on from now "
            "on, but nothing that existed before is published yet."
        )
        self.pubctl("migrate")
        self.pubctl("status")

        self.say("A write. The trigger puts the question and its ready explanation into the outbox "
                 "in the writer's own transaction.")  # fmt: skip
        self.sql(
            "INSERT INTO public.study_question (id, topic_id, exam_name, exam_round, number, body,"
            " choices, answer, explanation, explanation_status) VALUES (4, 2, 'Spring exam',"
            " 1, 2, 'What does the heart pump?', '[\"blood\",\"air\"]', 0,"
            " 'Blood, through the body.', 'ready')"
        )
        self.sql("SELECT id, kind, source_id, deleted, payload_hash FROM pub.outbox ORDER BY id")

        self.say("The applier turns the outbox into the published state; viewers read the feed.")
        self.pubctl("apply")
        self.pubctl("feed")

        self.say("A write that changes no payload (updated_at) adds nothing to the outbox.")
        self.sql("UPDATE public.study_question SET updated_at = now() WHERE id = 4")
        self.sql("SELECT count(*) AS outbox_rows FROM pub.outbox")

        self.say("An explanation becoming ready publishes it.")
        self.sql("UPDATE public.study_question SET explanation = 'Twelve pairs.', "
                 "explanation_status = 'ready' WHERE id = 2")  # fmt: skip
        self.pubctl("apply")
        self.pubctl("feed", "--after", "2")

        self.say("A soft delete publishes tombstones for the question and its explanation.")
        self.sql("UPDATE public.study_question SET deleted_at = now() WHERE id = 4")
        self.pubctl("apply")
        self.pubctl("feed", "--after", "3")

        self.say("The rows from before the install: a backfill enqueues them in bounded pages.")
        self.pubctl("backfill", "all")
        self.pubctl("apply")
        self.pubctl("status")

        self.say("verify holds the source, the published state and the Python reference "
                 "projection against each other.")  # fmt: skip
        self.pubctl("verify")

        self.say("Someone edits the published copy by hand: verify catches it and names the item.")
        self.sql("UPDATE pub.content "
                 "SET payload = jsonb_set(payload::jsonb, '{body}', '\"tampered\"')::json "
                 "WHERE kind = 'question' AND source_id = 1")  # fmt: skip
        self.pubctl("verify", "--limit-report", "5", expect=1)
        self.serve_over_http()
        return not self.failures

    def serve_over_http(self) -> None:
        """A viewer reads the feed over HTTP (`pubctl serve`), and a long-poll is woken by
        a write as soon as the applier publishes it."""
        import json as jsonlib
        import threading
        import time
        import urllib.request

        self.say("Viewers read the feed over HTTP: `pubctl serve` (here on a free port, "
                 "with a token) answers pages with each payload in RFC 8785 form.")  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
        env.update(PUBCTL_DATABASE_URL=self.url, PUBCTL_FEED_TOKENS="demo-token")
        script = Path(sys.executable).with_name("pubctl")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "pubctl"]
        self.echo(click.style("$ PUBCTL_FEED_TOKENS=demo-token pubctl serve --port 0 &", bold=True))
        server = subprocess.Popen(
            [*command, "serve", "--port", "0"], env=env, stderr=subprocess.PIPE, text=True
        )
        assert server.stderr is not None
        try:
            base = ""
            for line in server.stderr:
                if line.startswith("listening on "):
                    self.echo(line.rstrip())
                    base = line.removeprefix("listening on ").strip()
                    break
            if not base:
                self.failures.append("pubctl serve did not start")
                return
            threading.Thread(target=server.stderr.read, daemon=True).start()

            def get(target: str) -> dict[str, Any]:
                request = urllib.request.Request(
                    base + target, headers={"Authorization": "Bearer demo-token"}
                )
                with urllib.request.urlopen(request, timeout=60) as answer:
                    return dict(jsonlib.loads(answer.read()))

            self.echo(click.style("$ curl -H 'Authorization: Bearer demo-token' "
                                  f"'{base}/published/feed?kind=topic'", bold=True))  # fmt: skip
            page = get("/published/feed?kind=topic")
            self.echo(jsonlib.dumps(page, ensure_ascii=False)[:600])
            self.say("A long-poll: nothing is newer than the cursor, so the server holds the "
                     "request (wait=30) until the applier publishes something newer.")  # fmt: skip
            last = int(str(get("/healthz")["last_rev"]))
            target = f"/published/feed?after={last}&wait=30"
            self.echo(click.style(f"$ curl ... '{base}{target}'   # held", bold=True))
            woken: list[dict[str, Any]] = []
            poll = threading.Thread(target=lambda: woken.append(get(target)))
            poll.start()
            time.sleep(1.0)
            self.sql("UPDATE public.study_topic SET name = 'Anatomy and histology' WHERE id = 1")
            self.pubctl("apply")
            poll.join(30)
            if not woken or not woken[0]["items"]:
                self.failures.append("the long-poll was not woken by the write")
                return
            answer = woken[0]
            self.echo("(the held request is answered as soon as the apply commits)")
            self.echo(jsonlib.dumps(answer, ensure_ascii=False)[:600])
        finally:
            server.terminate()
            server.wait(15)


def _database_name() -> str:
    return f"pubctl_demo_{os.getpid()}"


def _new_database(server_url: str, name: str) -> str:
    with db.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL(query("create_demo_database")).format(name=sql.Identifier(name)))
    params = conninfo.conninfo_to_dict(server_url)
    params["dbname"] = name
    return conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def _drop_database(server_url: str, name: str) -> None:
    with db.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL(query("drop_demo_database")).format(name=sql.Identifier(name)))


def main(server_url: str | None, keep: bool) -> bool:
    """Run the demo on a throwaway server, or in a new database on ``server_url`` (named
    by --database-url or PUBCTL_DATABASE_URL), dropped at the end unless ``keep``."""
    if server_url:
        name = _database_name()
        url = _new_database(server_url, name)
        click.echo(f"# using a new database on the given server: {db.mask(url)}")
        try:
            ok = Demo(url).run()
        finally:
            if keep:
                click.echo(f"\n# the demo database stays for exploring: {db.mask(url)}")
            else:
                _drop_database(server_url, name)
                click.echo(f"\n# the demo database {name} is dropped")
        return ok
    pg = ThrowawayPostgres(keep=keep)
    pg.start()
    try:
        url = pg.url
        click.echo("# started a throwaway PostgreSQL server for this demo")
        ok = Demo(url).run()
    finally:
        if keep:
            click.echo(f"\n# the server keeps running for exploring: psql '{pg.url}'")
            click.echo(
                f"# stop it with: kill -INT $(head -1 {pg.base}/data/postmaster.pid) "
                f"&& rm -rf {pg.base}"
            )
        else:
            pg.stop()
            click.echo("\n# the throwaway server is stopped and removed")
    return ok
