"""docs/context.md's psycopg recipe, run by tests/context_clients.rs through the real psycopg 3.

Usage: python3 tests/clients/psycopg_context.py CONNINFO ACTOR REASON REQUEST_ID CONTEXT_JSON

On one connection (as a pooler would hand it from one client to the next), two transactions
on the table `orders` (id int primary key, status text), row id 1:
  1. with audit.actor, audit.reason, audit.request_id and audit.context set transaction-locally
     by set_config(..., true), UPDATE status to 'refunded';
  2. without any setting, UPDATE status to 'closed'.
Exits non-zero with psycopg's error on any failure.
"""

import sys

import psycopg


def set_audit_context(conn, actor, reason=None, request_id=None, context=None):
    """The recipe: set_config(name, value, is_local => true) lasts until the transaction ends,
    so nothing leaks to the next transaction of this connection (or of a pooler's client).
    Bind parameters: no quoting of the values by hand."""
    conn.execute(
        "SELECT set_config('audit.actor', %s, true),"
        " set_config('audit.reason', coalesce(%s, ''), true),"
        " set_config('audit.request_id', coalesce(%s, ''), true),"
        " set_config('audit.context', coalesce(%s, ''), true)",
        (actor, reason, request_id, context),
    )


def main():
    conninfo, actor, reason, request_id, context = sys.argv[1:6]
    # autocommit: each `with conn.transaction()` block is one explicit transaction.
    with psycopg.connect(conninfo, autocommit=True, application_name="shop-web") as conn:
        with conn.transaction():
            set_audit_context(conn, actor, reason, request_id, context)
            conn.execute("UPDATE orders SET status = 'refunded' WHERE id = 1")
        with conn.transaction():
            conn.execute("UPDATE orders SET status = 'closed' WHERE id = 1")


if __name__ == "__main__":
    main()
