"""Where a run executes: one process or DDP ranks, the output folder's lock, and stopping on a signal."""
import contextlib
import fcntl
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from .state import LOCK_NAME

__all__ = ["Runtime", "setup_runtime", "output_lock", "StopRequest"]


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup_runtime(device: str) -> Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return Runtime(rank, world_size, torch.device("cuda", local_rank))
    return Runtime(rank, world_size, torch.device("cpu" if device == "auto" else device))


@contextlib.contextmanager
def output_lock(training_dir: Path, enabled: bool):
    """Hold an exclusive lock on ``training_dir`` for the run: a second run on the same output folder is
    refused instead of interleaving checkpoints. flock is released by the kernel when the process ends,
    also on SIGKILL, so a killed run never leaves a stale lock behind."""
    if not enabled:  # DDP: rank 0 holds the lock for the whole run
        yield
        return
    created = [folder for folder in (training_dir.parent, training_dir) if not folder.exists()]
    training_dir.mkdir(parents=True, exist_ok=True)
    with open(training_dir / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FileExistsError(f"{training_dir.parent} is in use by another training run ({holder}); wait for it "
                                  f"to finish or choose another output folder.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            # Removed while still held, so no run can lock this file after it; a run refused before it wrote
            # anything (bad settings or data) also leaves no empty folders behind.
            (training_dir / LOCK_NAME).unlink(missing_ok=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):  # not empty: the run wrote into it
                    folder.rmdir()
            fcntl.flock(handle, fcntl.LOCK_UN)



class StopRequest:
    """SIGINT / SIGTERM while training: the current step finishes, a checkpoint is saved, then training
    stops with KeyboardInterrupt. A second signal stops at once (the checkpoint on disk stays whole: it is
    written atomically). Only in single-process runs from the main thread; under DDP the signals keep
    their default behaviour (the last checkpoint stays)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if self.enabled:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              f"(send it again to stop at once)", flush=True)
