"""Data-parallel training over processes: ``surroflos train --distributed`` under ``torchrun``.

P processes (ranks; gloo on the CPU, NCCL on CUDA with one GPU per rank) train one network on the global
batch that one process would draw, and compute what that process computes:

- **Data.** Every rank draws the whole global batch from the run's seeded generators (drawing is cheap and
  keeps every generator in the state one process would have, which is also what the checkpoint saves) and
  runs the network on its own contiguous slice: rank r takes trials ``[r B / P, (r + 1) B / P)``, so uneven
  splits are fine.
- **Loss.** The ranks' outputs are assembled into the global ``[T, B, n_out]`` with a differentiable
  all-reduce (each rank contributes its slice, zeros elsewhere; adding zeros is exact), and every rank
  evaluates the task's loss on the global batch: the mean over the global batch by construction, for any task
  (masked means with per-trial mask counts included), not an average of per-rank means. Every rank holds the
  same loss of the same sum, so the backward of the all-reduce is the identity: rank r's parameter
  gradient is that loss's gradient through its own slice, and **summing** the parameter gradients over ranks
  (one all-reduce per step, :meth:`DataParallel.all_reduce_grads`) gives the gradient of the global loss.
  Clipping then acts on that global gradient, and every rank takes the same Adam step, so the weights stay
  identical. (torch's ``DistributedDataParallel`` wrapper is not used: it averages gradients of per-rank
  losses and hooks the module's ``forward``, while flossing runs the network through the Lyapunov estimator.)
- **Flossing.** Each rank estimates the spectrum on its own trajectories: the global batch's inputs, random
  initial states and frames are drawn as one process draws them and each rank runs
  :func:`~surroflos.lyapunov.lyapunov_spectrum` on its slice (``state0`` / ``frame0``). The per-trajectory
  exponents ``[B_r, k]`` are all-reduced into the global ``[B, k]`` (the same differentiable all-reduce) before
  the flossing loss, which is then the single-process definition exactly:
  ``L = mean_b sum_i (lambda_bi - target_i)^2`` over the global batch, and the recorded spectrum is the global
  batch mean. Averaging only the ranks' batch-mean exponents would not do: the loss is a mean of squares over
  trajectories, ``sum_i [(mean_b lambda_bi - target_i)^2 + var_b lambda_bi]``, which needs the per-trajectory
  values (or their second moments), not just the mean.
- **Monitoring.** Validation outputs are assembled the same way, so losses and metrics are those of the
  global validation set; the monitoring spectra (4 trajectories, no gradient) are computed on every rank
  alike. Rank 0 writes the run folder, the checkpoints and ``result.json``; ``--resume`` reads the checkpoint
  on rank 0 and broadcasts it.

So P processes reproduce one process on the same global batch up to the rounding of a different batch split
of the matrix products (tested in float64 to 1e-10 relative with 2 processes, ``tests/test_distributed.py``).
Ensembles and the local learning rules (e-prop, RFLO, which set gradients without a loss) are refused.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional

import torch

from .errors import UsageError

__all__ = ["DataParallel", "floss_data_parallel", "TORCHRUN_ENV"]

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class _SumOverRanks(torch.autograd.Function):
    """``sum_r x_r`` on every rank. Backward: the identity, because every rank evaluates the same loss of the
    sum (see the module docstring); the parameter gradients are summed over ranks afterwards."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        y = x.detach().clone().contiguous()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class DataParallel:
    """This process's place in a data-parallel run: ``rank`` of ``world`` processes, its ``device``."""

    def __init__(self, rank: int, world: int, device: torch.device, backend: str) -> None:
        self.rank, self.world, self.device, self.backend = rank, world, device, backend

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "DataParallel":
        """Join the process group that ``torchrun`` describes in the environment (gloo for ``device`` cpu,
        NCCL with ``cuda:LOCAL_RANK`` for cuda/auto with CUDA); a :class:`UsageError` outside torchrun."""
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise UsageError(f"--distributed runs under torchrun (the environment lacks {', '.join(missing)}); "
                             "start it as `torchrun --nproc-per-node P -m surroflos train --distributed ...`")
        import torch.distributed as dist

        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            if not torch.cuda.is_available() or local >= torch.cuda.device_count():
                raise UsageError(f"--device {device} with --distributed needs one GPU per process on a node, but "
                                 f"local rank {local} sees {torch.cuda.device_count()} GPU(s)")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
            backend = "nccl"
        else:
            dev, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return cls(rank, world, dev, backend)

    def close(self, barrier: bool = True) -> None:
        """Leave the process group while Python is fully alive. A gloo worker thread drops its last finished
        collective (and the Python-held tensors in it, which needs the GIL) just after the collective
        completes; a process that exits at that moment (rank 1, with no files to write) aborted in C++ while
        the interpreter shut down ("terminate called without an active exception", about 1 run in 8). The
        barrier lets every worker finish with the earlier collectives, and destroying the group here joins
        its threads before the interpreter exits. ``barrier=False`` on an error, where the other processes
        may never reach one."""
        import gc

        import torch.distributed as dist

        if dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()
            gc.collect()

    # -- the batch split ------------------------------------------------------------------------------------
    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items: ``[r n / P, (r + 1) n / P)``."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def assemble(self, local: torch.Tensor, n: int, dim: int) -> torch.Tensor:
        """The global tensor (``n`` along ``dim``) from every rank's slice ``local`` (this rank's
        :meth:`part`): differentiable, the gradient of the slice is the global gradient's slice."""
        s = self.part(n)
        if local.shape[dim] != s.stop - s.start:
            raise ValueError(f"rank {self.rank}: expected {s.stop - s.start} items along dim {dim}, got "
                             f"{local.shape[dim]}")
        pad = list(local.shape)
        before, after = pad.copy(), pad.copy()
        before[dim], after[dim] = s.start, n - s.stop
        full = torch.cat([local.new_zeros(before), local, local.new_zeros(after)], dim=dim)
        return _SumOverRanks.apply(full)

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the parameters' gradients over ranks (one all-reduce of their concatenation)."""
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    # -- rank 0 decides -------------------------------------------------------------------------------------
    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, its value (or the exception it raised) on every rank."""
        import torch.distributed as dist

        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # raised on every rank, so that none waits for the others forever
                box[0] = ("error", e)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value


def check_config(cfg, world: int) -> None:
    """What a data-parallel run cannot do, refused before any work (one-line :class:`UsageError`)."""
    if cfg.ensemble is not None:
        raise UsageError("--distributed with --ensemble is not supported: train the ensemble in one process, or "
                         "spread its seeds over machines with `surroflos sweep --engine ray`")
    if cfg.rule != "bptt":
        raise UsageError(f"--distributed trains with --rule bptt only (the {cfg.rule} rule sets gradients without a "
                         "loss to split over processes)")
    sizes = [("--batch", cfg.batch), ("--eval-batch", cfg.eval_batch)]
    if cfg.flossing != "none":
        sizes.append(("--floss-batch", cfg.floss_batch))
    for flag, n in sizes:
        if n < world:
            raise UsageError(f"{flag} {n} is smaller than the {world} processes: each process needs at least one "
                             f"trial; give {flag} {world} or more")


def floss_data_parallel(dp: DataParallel, model, steps: int, *, k: int, T: int, batch: int, lr: float,
                        target, inputs: Callable[[int, torch.Generator], torch.Tensor], generator: torch.Generator,
                        max_grad_norm: Optional[float] = None, local: bool = False, progress: bool = False):
    """:func:`surroflos.flossing.floss` (its solo path, with task inputs and a generator, as training calls it)
    over ranks: the same draws, each rank's spectrum on its slice of the trajectories, the exponents
    all-reduced into the global ``[B, k]`` before :func:`~surroflos.flossing.flossing_loss`, gradients summed.
    Returns the same :class:`~surroflos.flossing.FlossingHistory`."""
    from ._random import orthonormal_frame
    from .flossing import FlossingHistory, _progress, flossing_loss
    from .lyapunov import lyapunov_spectrum
    from .models.layered import as_model

    model = as_model(model)
    plist = list(model.flossing_parameters())
    opt = torch.optim.Adam(plist, lr=lr)
    transient, frame_warmup = T // 4, T // 4
    part = dp.part(batch)
    exps, losses = [], []
    bar = _progress(steps, progress and dp.is_main, "flossing")
    for i in range(steps):
        x = inputs(i, generator)
        if x.shape[1] != batch:
            raise ValueError(f"inputs gave {x.shape[1]} trajectories, expected batch={batch}")
        # lyapunov_spectrum's own draws for the whole batch, in its order: initial state, then the frame
        state0 = model.initial_state(x.shape[1], random=True, generator=generator, device=x.device, dtype=x.dtype)
        frame0 = orthonormal_frame(x.shape[1], model.state_dim, k, generator=generator, dtype=x.dtype,
                                   device=x.device)
        res = lyapunov_spectrum(model, x[:, part], k, transient=transient, frame_warmup=frame_warmup,
                                state0=state0[part], frame0=frame0[part], detach_state=local)
        lam = dp.assemble(res.exponents, x.shape[1], dim=0)
        opt.zero_grad(set_to_none=True)
        loss = flossing_loss(lam, target)
        loss.backward()
        dp.all_reduce_grads(plist)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(plist, max_grad_norm)
        opt.step()
        exps.append(lam.detach().mean(0))
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(lambda1=f"{float(exps[-1][0]):+.4f}", loss=f"{losses[-1]:.3g}")
    if bar is not None:
        bar.close()
    return FlossingHistory(torch.stack(exps) if exps else torch.empty(0, k), torch.tensor(losses, dtype=torch.float64),
                           target)
