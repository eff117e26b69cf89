"""kind -> handler. Adding a kind: a spec in jobs/specs.py and a module here with prepare/compute/finalize."""
from jobs.handlers import merge, reports, train
from jobs.handlers.base import Handler

HANDLERS: dict[str, Handler] = {"train": train.HANDLER, "merge": merge.HANDLER,
                                "interference": reports.INTERFERENCE, "export": reports.EXPORT}
