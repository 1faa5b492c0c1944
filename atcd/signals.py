"""The stop signals of a run (what SLURM, Kubernetes and spot instances send before killing a job), and what a
DataLoader worker does with them."""
import atexit
import multiprocessing
import multiprocessing.util  # its exit hook is registered first, so the one below runs before it (atexit is LIFO)
import signal

__all__ = ["STOP_SIGNALS", "worker_ignores_stop_signals"]

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)


def worker_ignores_stop_signals(worker_id: int = 0) -> None:
    """`DataLoader(worker_init_fn=...)`: a loader worker ignores SIGTERM/SIGUSR1. A scheduler signals every process
    of the job, workers included, and torch's worker handler dies of a SIGTERM that its parent did not send; the
    main process would then fail on the next batch ("worker killed by signal: Terminated") instead of writing its
    checkpoint. The main process stops its workers itself (and they exit when it dies)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@atexit.register  # registered after multiprocessing's own exit hook, so it runs before it
def _kill_loader_workers_at_exit() -> None:
    """At interpreter exit multiprocessing terminates (SIGTERM) and joins its daemonic children; a loader worker
    ignores SIGTERM (above), so the join would wait forever when the main process exits on an error that left its
    workers running (torch skips its own shutdown at exit). Daemonic children end at exit in any case; they are
    killed instead (a started Process no longer says what it runs, so loader workers cannot be told apart)."""
    daemons = [p for p in multiprocessing.active_children() if p.daemon]
    if daemons and hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report the killed workers as a failure
    for p in daemons:
        p.kill()
