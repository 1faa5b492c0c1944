"""The stop signals of a run (what SLURM, Kubernetes and spot instances send before killing a job), and what a
DataLoader worker does with them."""
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
