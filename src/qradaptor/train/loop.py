"""The training loop: AdamW on the adapters, warm-up + decay, accumulation, clipping, resume.

One loop serves every method (LoRA, DoRA, AdaLoRA, LoftQ-initialised, bitsandbytes NF4),
so their numbers are comparable. Per optimiser step s (0-based):

    micro-batches  i = s*A .. s*A + A - 1          A = grad_accum, see data.py for batch i
    loss_s         = sum_i n_i * mean_loss_i / sum_i n_i    n_i = label tokens of batch i
    update         clip ||g|| to max_grad_norm, AdamW at lr * lr_factor(s), then (AdaLoRA)
                   ``update_and_allocate(s)`` before the gradients are cleared

A non-finite loss, or one above ``divergence_factor`` x the lowest smoothed loss so far,
stops the run with ``TrainingDiverged`` before anything else is written; the newest
checkpoint on disk is the last good state. A finite loss with a non-finite gradient is not
applied: clipping would spread it to every adapter (a NaN norm scales all of them to NaN), as
an 8B run on the GPU did at step 70. The step is skipped and said, as AMP's GradScaler skips
an overflowed step; ``NONFINITE_STEPS`` of them in a row stop the run. A collapsed run stops the same way
(``TrainingCollapsed``): its training loss sat at or above ln(vocab), what a uniform guess
over the vocabulary scores, for ``collapse_steps`` steps in a row, or its final held-out
loss did; ``allow_collapse`` lets it finish and only reports it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qradaptor.schedule import lr_factor
from qradaptor.train.checkpoint import (
    check_same_run,
    complete_checkpoints,
    newest_intact,
    save_checkpoint,
)
from qradaptor.train.compiled import (
    check_compile,
    compile_step,
    forward_loss,
    heldout_loss,
    keep_grads_,
    loss_sums,
    static_batch,
)
from qradaptor.train.config import TrainConfig
from qradaptor.train.state import (
    TrainResult,
    allocator_tensors,
    rank_allocator,
    restore_allocator_,
    rng_state,
    set_rng_state_,
    trainable_tensors,
)

COST_STEP = 2
"""The step after which the run says what is left and its cost: the first carries warm-up."""

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.train.data import TokenizedSet

EMA_BETA = 0.9
"""Smoothing of the loss the divergence check compares against."""
NONFINITE_STEPS = 3
"""Steps in a row with a non-finite gradient (and a finite loss) that stop a run."""


class TrainingDiverged(RuntimeError):
    """The loss became non-finite or exploded; the message says where and what to try."""


class TrainingCollapsed(TrainingDiverged):
    """The loss stayed at or above ln(vocab): the model predicts no better than a uniform guess."""


def chance_loss(model: nn.Module) -> float | None:
    """ln(vocab): the loss of a uniform next-token guess (None when the vocabulary is unknown)."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return math.log(vocab) if isinstance(vocab, int) and vocab > 1 else None


class Trainer:
    """Runs ``config`` on a built model (adapters attached, base frozen); resumable.

    Example:
        >>> config = TrainConfig(max_steps=100, save_every=20)
        >>> trainer = Trainer(model, train_set, eval_set, config, checkpoints=run / "checkpoints")
        >>> result = trainer.run(resume=True)
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: TokenizedSet,
        eval_set: TokenizedSet | None,
        config: TrainConfig,
        *,
        checkpoints: Path | None = None,
        fingerprint: dict[str, Any] | None = None,
        diagnose: Callable[[nn.Module, dict[str, torch.Tensor]], str] | None = None,
        log: Callable[[str, float, int], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        """Prepares the optimiser and schedule; nothing runs until ``run``.

        Args:
            model: the model to train; only parameters with requires_grad are updated.
            train_set: training examples.
            eval_set: held-out examples for the evaluations (None: no evaluation).
            config: the run's settings.
            checkpoints: folder for checkpoints (None: none are written or read).
            fingerprint: what names this run (plan hash, weights, data, method); a resume
                from a checkpoint with another fingerprint or config is refused.
            diagnose: called with the model and the failing batch on divergence; returns a
                sentence on the likely cause for the error message.
            log: called as ``log(tag, value, step)`` with each step's ``"train/loss"`` and each
                ``"eval/loss"`` as they happen (e.g. a TensorBoard writer's ``add_scalar``).
            on_note: receives what the user should know but that stops nothing (a corrupt
                checkpoint skipped, a collapse allowed); None: printed on stderr.
        """
        import torch

        self.log = log
        self.model = model
        self.train_set = train_set
        self.eval_set = eval_set
        self.config = config
        self.checkpoints = checkpoints
        self.fingerprint = dict(fingerprint or {})
        self.diagnose = diagnose
        self._on_note = on_note
        self.chance = chance_loss(model)
        self.named_params = trainable_tensors(model)
        self.params = list(self.named_params.values())
        if not self.params:
            raise ValueError("the model has no trainable parameters: every rank in the plan is 0")
        self.device = self.params[0].device
        check_compile(config.compile, self.device.type)
        # Compiled or not, the same two functions; compiled, they want one static shape.
        self._static = config.compile != "off"
        self._forward_loss = compile_step(forward_loss, config.compile)
        self._loss_sums = compile_step(loss_sums, config.compile)
        self.total_steps = config.total_steps(train_set.batches_per_epoch(config.batch_size))
        self.warmup = config.warmup_steps(self.total_steps)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, self.warmup, config.schedule)
        )

    def _note(self, message: str) -> None:
        if self._on_note is not None:
            self._on_note(message)
        else:
            print(f"note: {message}", file=sys.stderr)

    def _cost_line(self, done: int, step_seconds: float) -> str:
        """What the rest of the run will do and about how long, from a step just measured."""
        cfg = self.config
        left = self.total_steps - done
        evals = 0
        if self.eval_set is not None:  # those between steps (multiples of eval_every), then the final one
            every = cfg.eval_every
            evals = ((self.total_steps - 1) // every - done // every if every else 0) + 1
        what = f"{left} more steps of {cfg.batch_size * cfg.grad_accum} sequences"
        if evals:
            what += f", {evals} held-out evaluation{'s' if evals > 1 else ''}"
        return (
            f"train: {what}; about {math.ceil(left * step_seconds / 60)} min of steps on this device "
            f"(step {done} took {step_seconds:.2f} s, measured just now)"
        )

    # ----- checkpoints ----------------------------------------------------------------
    def _state(self, result: TrainResult, ema: dict[str, float]) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "fingerprint": self.fingerprint,
            "total_steps": self.total_steps,
            "losses": result.losses,
            "evals": result.evals,
            "step_seconds": result.step_seconds,
            "step_tokens": result.step_tokens,
            "skipped_steps": result.skipped_steps,
            "ema": ema,
        }

    def _save(self, step: int, result: TrainResult, ema: dict[str, float]) -> None:
        assert self.checkpoints is not None
        tensors = {**trainable_tensors(self.model), **allocator_tensors(self.model)}
        save_checkpoint(
            self.checkpoints,
            step,
            tensors=tensors,
            optimizer={"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            rng=rng_state(),
            state=self._state(result, ema),
            keep=self.config.keep_checkpoints,
        )

    def _restore(self, result: TrainResult, ema: dict[str, float]) -> int:
        """Loads the newest checkpoint, if any; returns the step to continue from."""
        import torch

        ckpt = newest_intact(self.checkpoints, self._note) if self.checkpoints else None
        if ckpt is None:
            return 0
        check_same_run(ckpt.state["fingerprint"], self.fingerprint, ckpt.path)
        differ = TrainConfig.from_dict(ckpt.state["config"]).differences(self.config)
        if differ:
            raise ValueError(
                f"cannot resume from {str(ckpt.path)!r} with other training settings ("
                + "; ".join(differ)
                + "); resume with the same settings or start a new run folder"
            )
        named = trainable_tensors(self.model)
        if set(named) != {k for k in ckpt.tensors if not k.startswith("rankallocator.")}:
            raise ValueError(f"checkpoint {str(ckpt.path)!r} holds other adapter tensors than this model has")
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(ckpt.tensors[name])
        restore_allocator_(self.model, ckpt.tensors)
        self.optimizer.load_state_dict(ckpt.optimizer["optimizer"])
        self.scheduler.load_state_dict(ckpt.optimizer["scheduler"])
        set_rng_state_(ckpt.rng)
        result.losses = list(ckpt.state["losses"])
        result.evals = [tuple(e) for e in ckpt.state["evals"]]  # type: ignore[misc]
        result.step_seconds = [float(x) for x in ckpt.state["step_seconds"]]
        result.step_tokens = [int(x) for x in ckpt.state["step_tokens"]]
        result.skipped_steps = [int(x) for x in ckpt.state.get("skipped_steps", [])]  # older: none
        result.resumed_from = ckpt.step
        ema.update(ckpt.state["ema"])
        return ckpt.step

    # ----- the loop -------------------------------------------------------------------
    def _diverged(
        self, step: int, loss: float, ema: dict[str, float], batch: dict[str, torch.Tensor]
    ) -> None:
        if math.isfinite(loss):
            factor = self.config.divergence_factor
            what = f"loss {loss:.4g} exceeds {factor:g} x the lowest smoothed loss {ema['best']:.4g}"
        else:
            what = f"loss is {loss}"
        cause = self.diagnose(self.model, batch) if self.diagnose else ""
        self._stop_diverged(step, f"{what}. {cause}")

    def _stop_diverged(self, step: int, what: str) -> None:
        last = complete_checkpoints(self.checkpoints) if self.checkpoints else []
        kept = f"the last good checkpoint is {str(last[-1])!r}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged at step {step + 1} of {self.total_steps}: {what.rstrip()} "
            f"No adapter was written; {kept}. Try a lower --lr (now {self.config.lr:g}), "
            "more warm-up, or more bits for the weakest blocks."
        )

    def _grad_norm(self) -> torch.Tensor:
        """The gradients' total norm, not clipped yet (a NaN one would clip every adapter to NaN)."""
        import torch

        return torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])

    def _apply_gradients(
        self, step: int, norm: float, loss: float, ema: dict[str, float], result: TrainResult
    ) -> bool:
        """False for a step whose gradient is not finite: skipped, said, and counted."""
        if math.isfinite(norm):
            ema["nonfinite"] = 0.0
            return True
        name = next(
            (n for n, p in self.named_params.items() if p.grad is not None and not p.grad.isfinite().all()),
            "an adapter",
        )
        ema["nonfinite"] = ema.get("nonfinite", 0.0) + 1
        result.skipped_steps.append(step + 1)
        if ema["nonfinite"] >= NONFINITE_STEPS:
            self._stop_diverged(
                step,
                f"the gradient was not finite for {NONFINITE_STEPS} steps in a row while the loss was "
                f"(now {loss:.4g}); the first non-finite one is {name}'s.",
            )
        self._note(
            f"step {step + 1}: the gradient of {name} is not finite (the loss, {loss:.4g}, is); "
            "the step was skipped and the adapters kept as they were"
        )
        return False

    def _check_loss(
        self, step: int, loss: float, ema: dict[str, float], batch: dict[str, torch.Tensor]
    ) -> None:
        if not math.isfinite(loss):
            self._diverged(step, loss, ema, batch)
        n = ema.get("n", 0.0) + 1
        ema["value"] = EMA_BETA * ema.get("value", 0.0) + (1 - EMA_BETA) * loss
        ema["n"] = n
        smoothed = ema["value"] / (1 - EMA_BETA**n)
        if step >= self.warmup and "best" in ema and loss > self.config.divergence_factor * ema["best"]:
            self._diverged(step, loss, ema, batch)
        ema["best"] = min(ema.get("best", math.inf), smoothed)
        if self.chance is not None and step >= self.warmup:
            ema["at_chance"] = ema.get("at_chance", 0.0) + 1 if loss >= self.chance else 0.0
            limit = self.config.collapse_steps
            if limit and ema["at_chance"] == limit:
                self._collapsed(
                    f"the training loss stayed at or above {self.chance:.4g} = ln(vocab), a uniform guess, "
                    f"for {limit} steps in a row (steps {step + 2 - limit}..{step + 1}, now {loss:.4g})"
                )

    def _collapsed(self, what: str) -> None:
        """Raises TrainingCollapsed, or with ``allow_collapse`` only reports it."""
        if self.config.allow_collapse:
            self._note(f"training collapsed: {what}; continuing (--allow-collapse)")
            return
        raise TrainingCollapsed(
            f"training collapsed: {what}. No adapter was written. The plan's lowest bit-widths are "
            "the usual cause: give the weakest blocks more bits, or lower --lr; pass --allow-collapse "
            "to write the run anyway."
        )

    def _step_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        cfg = self.config
        first = step * cfg.grad_accum
        return [self.train_set.batch(first + k, cfg.batch_size, cfg.seed) for k in range(cfg.grad_accum)]

    def _heldout(self) -> float:
        assert self.eval_set is not None
        return heldout_loss(
            self.model, self.eval_set, self.config.batch_size, sums=self._loss_sums, static=self._static
        )

    def run(self, *, resume: bool = False) -> TrainResult:
        """Trains to ``total_steps``; with ``resume`` continues from the newest checkpoint.

        Raises:
            TrainingDiverged: on a non-finite or exploding loss.
            ValueError: when resuming from a checkpoint of another run or other settings.
        """
        import torch

        from qradaptor.progress import progress_bar

        cfg = self.config
        result = TrainResult()
        ema: dict[str, float] = {}
        start = self._restore(result, ema) if resume else 0
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        params = self.params
        graphs = cfg.compile == "graphs"
        if graphs:
            keep_grads_(params)
        width = self.train_set.longest() if self._static else 0  # of the static batches
        self.model.train()
        bar = progress_bar(
            total=self.total_steps, initial=start, desc="train", unit="step", enabled=cfg.progress
        )
        seen_tokens, seen_seconds = result.tokens, result.train_seconds  # running sums for the bar
        for step in range(start, self.total_steps):
            began = time.perf_counter()
            batches = self._step_batches(step)
            counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
            step_tokens = max(sum(counts), 1)
            step_loss = torch.zeros((), device=self.device)
            tokens = sum(int(b["attention_mask"].sum()) for b in batches)  # CPU copies: no sync
            for batch, count in zip(batches, counts, strict=True):
                if self._static:
                    batch = static_batch(batch, cfg.batch_size, width, self.train_set.pad_id)
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                loss = self._forward_loss(self.model, batch) * (count / step_tokens)
                step_loss += loss.detach()
                # A non-finite loss gives non-finite gradients; they are never applied (checked below).
                loss.backward()
            norm = self._grad_norm().to(step_loss.device, torch.float32)
            value, grad_norm = torch.stack([step_loss.float(), norm]).tolist()  # the step's one host sync
            self._check_loss(step, value, ema, batch)
            applied = self._apply_gradients(step, grad_norm, value, ema, result)
            if applied and cfg.max_grad_norm > 0:  # clip_grad_norm_ in two halves, around the check
                torch.nn.utils.clip_grads_with_norm_(params, cfg.max_grad_norm, norm)
            if applied:
                self.optimizer.step()
            self.scheduler.step()  # a skipped step still counts: the schedule stays the run's
            if applied and rank_allocator(self.model) is not None:  # AdaLoRA scores the gradients
                self.model.base_model.update_and_allocate(step)  # type: ignore[union-attr]
            self.optimizer.zero_grad(set_to_none=not graphs)  # graphs: keep_grads_'s own memory
            if on_cuda:
                torch.cuda.synchronize(self.device)
            result.step_seconds.append(time.perf_counter() - began)
            result.step_tokens.append(tokens)
            seen_tokens, seen_seconds = seen_tokens + tokens, seen_seconds + result.step_seconds[-1]
            result.losses.append(value)
            done = step + 1
            if self.log is not None:
                self.log("train/loss", value, done)
            if (
                self.eval_set is not None
                and cfg.eval_every
                and done % cfg.eval_every == 0
                and done < self.total_steps
            ):
                result.evals.append((done, self._heldout()))
                if self.log is not None:
                    self.log("eval/loss", result.evals[-1][1], done)
                self.model.train()
            if self.checkpoints is not None and cfg.save_every and done % cfg.save_every == 0:
                self._save(done, result, ema)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{seen_tokens / seen_seconds:,.0f}")
            if done == start + COST_STEP and cfg.progress and done < self.total_steps:
                bar.write(self._cost_line(done, result.step_seconds[-1]), file=sys.stderr)  # above a bar
        bar.close()
        self.model.eval()
        if self.eval_set is not None:
            result.evals.append((self.total_steps, self._heldout()))
            if self.log is not None:
                self.log("eval/loss", result.evals[-1][1], self.total_steps)
            final = result.evals[-1][1]
            limit = self.config.collapse_steps  # a run shorter than that is too short to judge
            if self.chance is not None and limit and self.total_steps >= limit and final >= self.chance:
                self._collapsed(
                    f"the final held-out loss {final:.4g} is at or above {self.chance:.4g} = ln(vocab), "
                    "a uniform guess"
                )
        if on_cuda:
            result.peak_memory = int(torch.cuda.max_memory_allocated(self.device))
        return result
