"""Data-parallel training across processes with torch.distributed: who this process is, and the
few collective operations the trainer needs.

jkofast joins a process group in one of two ways (:func:`connect`):

* one already exists (``torch.distributed.is_initialized()``, e.g. the caller ran
  ``init_process_group`` itself): it is used as it is;
* torchrun's environment (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``) is present: jkofast initializes the default group, NCCL for a CUDA device and
  gloo for the CPU, with a timeout, and leaves it initialized for later calls in the same process
  (``jkofast.train`` twice, then ``metrics.nll``). It destroys that group itself when the
  interpreter exits (or at :meth:`Dist.close`, which the command line calls), before Python's
  finalization: gloo threads still alive at finalization aborted about one rank exit in five
  ("terminate called without an active exception"; see :meth:`Dist.close`).

Otherwise the run is a single process and nothing here communicates. Under a group, a device
given as plain ``"cuda"`` becomes ``cuda:LOCAL_RANK``, one GPU per process.

Tested on CPU with gloo (tests/test_distributed.py); the NCCL path (GPU placement, DDP with
``device_ids``, reductions on the GPU) uses the same calls but has not yet run on GPUs.

The timeout bounds every collective: a rank that dies or stops answering makes the others fail
with :class:`DistributedError` instead of waiting forever. gloo notices a dead peer at once (its
socket closes); a peer that hangs is noticed after the timeout, ``JKOFAST_DIST_TIMEOUT`` seconds
(default 600).
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from ._checks import check_device

__all__ = ["Dist", "DistributedError", "connect", "TIMEOUT_ENV", "raised_on_every_rank", "alike_on_every_rank",
           "is_raised_on_every_rank", "launched_world", "launched_local_world"]

TIMEOUT_ENV = "JKOFAST_DIST_TIMEOUT"
_DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """Another process of the run died, hung past the timeout, or disagrees with this one."""


# The mark of an error that every process of a run raises alike (see raised_on_every_rank): an
# attribute, which also survives pickling (BaseException.__reduce__ keeps the instance's
# __dict__), should an error marked on one rank be sent to the others.
_EVERY_RANK = "jkofast_raised_on_every_rank"


def raised_on_every_rank(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised alike by every process of the run, and return it: a check of
    arguments that every rank was given the same (torchrun gives each the same command line),
    rank 0's answer sent to every rank, a comparison of all ranks' values. The command line
    prints such an error from rank 0 alone, and any other error from the rank that raised it,
    naming that rank: a rank's own failure (a file missing on its host) is never hidden."""
    setattr(exc, _EVERY_RANK, True)
    return exc


def is_raised_on_every_rank(exc: BaseException) -> bool:
    """Whether ``exc`` carries the mark of :func:`raised_on_every_rank`."""
    return bool(getattr(exc, _EVERY_RANK, False))


@contextlib.contextmanager
def alike_on_every_rank():
    """Mark what the block raises with :func:`raised_on_every_rank`: wrap only checks that
    depend on nothing but arguments every rank shares or values every rank received from one
    collective (no files, no devices, no rank's own data)."""
    try:
        yield
    except Exception as exc:
        raised_on_every_rank(exc)
        raise


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else _DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` of
    ``local_world`` on its host, the training ``device``, and whether a group is in use.

    All collective methods are no-ops (the identity) for a single process, so the trainer has
    one code path.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    # The group jkofast made (init_process_group), until close() destroys it; held weakly (a
    # strong reference would keep it alive, which is what close() must prevent), so close()
    # never destroys a group the caller made after destroying ours.
    made: weakref.ref | None = field(default=None, repr=False, compare=False)

    @property
    def owns_group(self) -> bool:
        """jkofast made this process's group and has not destroyed it yet."""
        return self.made is not None

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, models and plots."""
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo reduces CPU tensors.
        return self.device if tdist.get_backend() == "nccl" else torch.device("cpu")

    def guard(self, what: str, fn):
        """``fn()``, with a failure of the process group (a dead or hung peer) turned into a
        :class:`DistributedError` that says so. Single process: just ``fn()``."""
        if self.world == 1:
            return fn()
        try:
            return fn()
        except (RuntimeError, tdist.DistError) as exc:  # gloo raises plain RuntimeErrors
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed, most likely because another process died or "
                f"did not answer within the timeout ({TIMEOUT_ENV}={_timeout().total_seconds():g} s); look for "
                f"the first error in the other processes' output. Cause: {exc}") from exc

    def sum(self, values: Tensor, what: str = "a reduction") -> Tensor:
        """The element-wise sum of ``values`` over all ranks, in float64 on this rank's device."""
        values = values.detach().to(torch.float64)
        if self.world == 1:
            return values
        buf = values.to(self._comm_device)
        self.guard(what, lambda: tdist.all_reduce(buf))
        return buf.to(values.device)

    def mean_async(self, values: Tensor):
        """Start averaging ``values`` over ranks; ``.wait()`` on the result gives the mean. Lets
        the training step overlap this reduction with its backward pass."""
        return _PendingMean(self, values.detach())

    def gather(self, obj, what: str = "an exchange") -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self.guard(what, lambda: tdist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj, what: str = "a broadcast"):
        """Rank 0's ``obj`` (picklable), on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        self.guard(what, lambda: tdist.broadcast_object_list(box, src=0))
        return box[0]

    def check_same(self, value, what: str) -> None:
        """Raise on every rank if the ranks were started with different ``value``s (settings,
        data shapes): a silent mismatch would train on inconsistent shards."""
        values = self.gather(value, f"comparing {what}")
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:  # every rank gathered the same values, so each raises this same error
            raise raised_on_every_rank(DistributedError(
                f"rank(s) {odd} were started with different {what} than rank 0: "
                f"{_differences(values[odd[0]], values[0])} (rank {odd[0]} against rank 0); "
                "start every process the same way"))

    @contextlib.contextmanager
    def data_parallel(self, module: nn.Module):
        """``module`` wrapped in DistributedDataParallel (the module itself for one process).

        DDP broadcasts rank 0's weights on entry and averages the gradients over ranks during
        ``backward``. On exit its gradient hooks are removed from the weights, so a later wrapper
        of the same weights (a block retrained in a refinement round) does not also trigger this
        one's reduction (DDP keeps them until it is garbage-collected otherwise).
        """
        if self.world == 1:
            yield module
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = self.guard("wrapping the block for data parallelism",
                                   lambda: nn.parallel.DistributedDataParallel(module, device_ids=ids))
        try:
            yield wrapped
        finally:
            remove_hooks = getattr(wrapped, "_remove_autograd_hooks", None)  # private, torch >= 2.1
            if remove_hooks is not None:
                remove_hooks()
            del wrapped
            gc.collect()

    def close(self) -> None:
        """Destroy the process group if jkofast created it and it is still the default group.
        Idempotent; :func:`connect` also registers it to run at exit. Destroying waits for this
        rank's own queued collectives, which its peers complete or the timeout ends."""
        ours = self.made() if self.made is not None else None
        if tdist.is_initialized() and ours is not None and ours is tdist.group.WORLD:
            del ours
            tdist.destroy_process_group()
            self.made = None
            # Why this matters: a gloo worker thread drops its last finished work (and with it
            # tensors whose Python objects need the GIL) just after the waiting rank resumes. If
            # that rank has meanwhile reached the interpreter's finalization, Python ends the
            # thread with pthread_exit, whose unwind through gloo's noexcept frames aborts the
            # process ("terminate called without an active exception": 6 of 30 two-rank exits of
            # jkofast.train without this). Destroying the group joins those threads first, but
            # only once nothing else holds it: collect the reference cycles (DDP wrappers) now;
            # torch.distributed.nn's import-time defaults are kept off it by
            # _import_before_the_group.
            gc.collect()


class _PendingMean:
    def __init__(self, dist: Dist, values: Tensor) -> None:
        self.dist, self.values, self.work = dist, values, None
        if dist.world > 1:
            self.buf = values.to(torch.float64).to(dist._comm_device)
            self.work = dist.guard("averaging the loss", lambda: tdist.all_reduce(self.buf, async_op=True))

    def wait(self) -> Tensor:
        if self.work is None:
            return self.values.to(torch.float64)
        self.dist.guard("averaging the loss", self.work.wait)
        return self.buf.to(self.values.device) / self.dist.world


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def launched_world() -> int:
    """The number of processes torchrun started (its WORLD_SIZE; 1 without torchrun), known
    before any group is joined."""
    return _env_int("WORLD_SIZE", 1)


def launched_local_world() -> int:
    """The number of processes torchrun started on this host (LOCAL_WORLD_SIZE; 1 without)."""
    return _env_int("LOCAL_WORLD_SIZE", 1)


def _place(device: torch.device, local_rank: int) -> torch.device:
    """One GPU per process: plain "cuda" means this process's local GPU."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _import_before_the_group() -> None:
    """Import torch.distributed.nn while no group exists. DistributedDataParallel pulls it in on
    first use (through torch._dynamo, so torch.compile does too), and its functions take
    ``group=group.WORLD`` as a default argument, evaluated at import: imported under a group,
    they hold that group for the life of the process (seen with torch 2.13), so
    destroy_process_group() cannot free it and its gloo threads outlive close() into the
    interpreter's finalization, where they abort the process (:meth:`Dist.close`). Imported
    before, the defaults are None (the default group, looked up at each call)."""
    import torch.distributed.nn  # noqa: F401  (imported for its import-time defaults)


def connect(device: str | torch.device = "cpu") -> Dist:
    """This process's :class:`Dist`: from an initialized process group, from torchrun's
    environment variables (initializing the group), or a single process.

    Arguments:
        device: the training device; ``"cuda"`` without an index maps to ``cuda:LOCAL_RANK``
            under a process group.

    Examples:
        >>> connect("cpu").world      # no torchrun environment, no process group
        1
    """
    device = check_device(device)
    if tdist.is_available() and tdist.is_initialized():
        local_rank = _env_int("LOCAL_RANK", tdist.get_rank())
        return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank,
                    local_world=launched_local_world(), device=_place(device, local_rank))
    world = launched_world()
    if world <= 1:
        return Dist(device=device)
    if not tdist.is_available():
        raise DistributedError(f"WORLD_SIZE={world} asks for {world} processes, but this torch build has no "
                               "torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world} is set but {missing} are not: launch with torchrun "
                               "(it sets them all), or unset WORLD_SIZE for a single process")
    local_rank = _env_int("LOCAL_RANK", 0)
    device = _place(device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    _import_before_the_group()
    try:
        tdist.init_process_group(backend, timeout=_timeout())
    except (RuntimeError, tdist.DistError) as exc:
        raise DistributedError(f"rank {os.environ['RANK']} of {world} could not join the process group at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({backend}): {exc}") from exc
    try:  # (a Ctrl-C before the exit handler is registered must not leave the group to finalization)
        dist = Dist(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank,
                    local_world=launched_local_world(), device=device,
                    made=weakref.ref(tdist.group.WORLD))
        # A library caller (``jkofast.train`` under torchrun) never calls close(): without this the
        # group would live until finalization, where destroying it can abort the process (close()).
        # atexit handlers run before finalization, while gloo's threads can still take the GIL;
        # close() is idempotent, so an explicit close first makes this a no-op.
        atexit.register(dist.close)
    except BaseException:
        tdist.destroy_process_group()
        raise
    return dist


def _differences(a, b, where: str = "", limit: int = 5) -> str:
    """Where two nested settings differ, e.g. ``"lr: 0.1 against 0.01; blocks: 4 against 8"``
    (at most ``limit`` places named), rather than both whole values."""
    found: list[str] = []

    def walk(a, b, where):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in [*a, *(k for k in b if k not in a)]:
                walk(a.get(k, "(missing)"), b.get(k, "(missing)"), f"{where}.{k}" if where else str(k))
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            found.append(f"{where or 'value'}: {a!r} against {b!r}")

    walk(a, b, where)
    more = f"; and {len(found) - limit} more" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more
