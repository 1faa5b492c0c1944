"""What a multi-process launch's exit status means.

torch 2.14.1 with Accelerate's DDP over gloo has an upstream defect: about one 2-process run in 8 aborts in teardown
("terminate called without an active exception", the rank's exit code -6) after all its work and output, even with
`Accelerator.end_training()` (which destroys the process group). It reproduces with a 9-line script (an Accelerator,
`prepare`, `gather_object`, `end_training`) and none of this project's code. Upstream: gloo's C++ worker threads
can outlive the interpreter's finalisation (pytorch/pytorch#190489; the atexit fix pytorch/pytorch#179291 was
abandoned). Scripts that launch runs and judge them
(`scripts/rehearse_imagenet.py`, the tests) treat that exit, and only that one, as the run's own success, say so on
stderr, and then judge the run by what it wrote, as for any other run.
"""

__all__ = ["TEARDOWN_ABORT", "teardown_abort"]

TEARDOWN_ABORT = "terminate called without an active exception"


def teardown_abort(returncode: int, stderr: str) -> bool:
    """True when a launcher's non-zero exit is the upstream teardown abort (a rank's SIGABRT after that message)."""
    return returncode != 0 and TEARDOWN_ABORT in stderr and "exitcode: -6" in stderr
