"""pubctl: publish study topics and questions from Postgres through triggers, an outbox
and a revision-ordered feed."""

__version__ = "0.2.0"
