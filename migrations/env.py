"""Alembic environment for collet-limiter.

collet-limiter runs the migrations itself when it opens a database, passing its own connection
(already inside a ``BEGIN IMMEDIATE`` transaction) through ``config.attributes["connection"]``, so
each migration and its ``alembic_version`` bookkeeping commit together. Running ``alembic`` from
the command line also works: ``alembic -x db=path/to/limiter.db upgrade head``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from collet_limiter._schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    db = context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not db:
        raise SystemExit("give the database: alembic -x db=path/to/limiter.db upgrade head")
    url = db if "://" in db else f"sqlite:///{db}"
    with create_engine(url).connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
