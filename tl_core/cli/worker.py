"""The worker's commands: `worker` (takes queued runs and trains them; --stop, --health), `serve`
(the dashboard and its worker, supervised), `train-run` (what the worker starts for a run, or as
its standby: executors/standby.py does the work)."""

from __future__ import annotations

from .. import logs, service, settings
from ..errors import UserError
from ..executors.standby import train_in_process
from ..executors.supervisor import serve
from ..executors.worker import Worker
from ..store.store import default_db_url
from .commands import command
from .output import _out


@command("worker")
def cmd_worker(args) -> int:
    if args.health:
        h = service.worker_health(service.open_store(args.db))
        seen = (
            f"worker {h['worker_id']} (pid {h['pid']}) heartbeated {h['heartbeat_age_s']:.0f} s ago"
            + (", then stopped" if h["stopped"] else "")
            if h["worker_id"]
            else "no worker of this database"
        )
        _out(
            args,
            h,
            f"{'healthy' if h['healthy'] else 'unhealthy'}: {seen} on {h['host']} "
            f"(TL_WORKER_TIMEOUT_S {h['timeout_s']:g} s)",
        )
        return 0 if h["healthy"] else 1
    if args.stop:
        store = service.open_store(args.db)
        stopped = service.stop_worker(store)
        where = f"{service.display_db_url(store.url)} on this machine"
        _out(
            args,
            {"stopped": stopped},
            f"stopped worker{'s' * (len(stopped) > 1)} {', '.join(map(str, stopped))} of {where}"
            if stopped
            else f"no worker of {where} is running; nothing to stop",
        )
        return 0
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError("--max-concurrent must be at least 1")
    logs.timed()  # read later: worker.log, the service's output, a container's log
    executor = settings.current().executor
    if executor == "ray":  # the runs train on a Ray cluster (tl_core/executors/ray_executor.py)
        from ..executors.ray_executor import RayExecutor  # ray: imported where TL_EXECUTOR=ray only

        RayExecutor(args.db or default_db_url(), args.max_concurrent, args.poll).serve()
        return 0
    if executor != "local":
        raise UserError(
            f"TL_EXECUTOR={executor!r} is not an executor: set TL_EXECUTOR to local (a worker "
            f"process on this machine) or ray (a Ray cluster at RAY_ADDRESS), or unset it"
        )
    Worker(args.db or default_db_url(), args.max_concurrent, args.poll).serve()
    return 0


@command("serve")
def cmd_serve(args) -> int:
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserError("--max-concurrent must be at least 1")
    logs.timed()
    return serve(args.db or default_db_url(), args.host, args.port, not args.no_dashboard, args.max_concurrent)


@command("train-run")
def cmd_train_run(args) -> int:
    if args.run_id is None and not args.standby:
        raise UserError("train-run: give a run id (or --standby)")
    logs.timed()  # its standby.log, then the run's train.log
    result = train_in_process(service.open_store(args.db), None if args.standby else args.run_id)
    if result is None:  # a standby the worker released without a run
        return 0
    if args.json:
        _out(args, result.__dict__, "")
    else:
        logs.logger(__name__).info(f"run {result.run_id} {result.status}")
    return 1 if result.status == "failed" else 0
