"""Alembic environment for pubctl's own schema.

pubctl always hands in an open SQLAlchemy connection (see ``pubctl.migrate``); the
version table lives in schema ``pub`` so the application's own ``alembic_version``
is never touched. The run is one transaction, serialised by an advisory lock.
"""

from alembic import context

from pubctl import migrate as pubctl_migrate

config = context.config
connection = config.attributes["connection"]


def _names(revisions):  # type: ignore[no-untyped-def]
    return ", ".join(revisions) or "base"


def on_version_apply(*, step, heads, run_args, **_kw):  # type: ignore[no-untyped-def]
    verb = "upgraded" if step.is_upgrade else "downgraded"
    report = config.attributes.get("on_step")
    if report is not None:
        report(
            f"{verb} {_names(step.source_revision_ids)} -> {_names(step.destination_revision_ids)}"
        )


context.configure(
    connection=connection,
    version_table_schema=pubctl_migrate.PUB_SCHEMA,
    transactional_ddl=True,
    transaction_per_migration=False,
    on_version_apply=on_version_apply,
)

with context.begin_transaction():
    pubctl_migrate.prepare(connection, config.attributes)
    context.run_migrations()
    pubctl_migrate.finish(connection)
