"""Proxy tuning: score a candidate Plan by a few LoRA steps and a held-out loss (§3.4).

QR-Adaptor ranks candidate (bits, rank) allocations by "proxy tuning": build the candidate
(quantise per plan, attach adapters), train its adapters briefly, and take the loss on
held-out data as the performance objective. To make scores comparable every candidate sees
the same seed, the same batches in the same order and the same schedule; a cache keyed by
``Plan.plan_hash`` ensures no plan is evaluated twice.

Notation:
    N, T    training windows and their length: ``train_ids`` is (N, T)
    M       held-out windows: ``eval_ids`` is (M, T')
    B       ``batch_size``; training batch i is rows (i*B + 0..B-1) mod N
    loss    mean next-token cross-entropy, token-weighted over all held-out batches

This module is the glue between a model and the search: the search itself only sees the
``ProxyEvaluator`` as a ``Callable[[Plan], ProxyScore]``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from qradaptor.schedule import SCHEDULES, Schedule, lr_factor

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qradaptor.plan import Plan
    from qradaptor.quant.cache import QuantCache


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ProxyConfig:
    """How each candidate is tuned and scored; identical for every plan of one search."""

    steps: int = 20
    """Optimiser steps of adapter training per candidate (0 scores the quantised model only)."""
    batch_size: int = 4
    """Windows per training and per held-out batch."""
    lr: float = 2e-4
    """Peak AdamW learning rate of the adapters."""
    warmup: int = 2
    """Steps of linear warm-up before the decay."""
    eval_batches: int = 4
    """Held-out batches scored: the first ``eval_batches * batch_size`` rows of eval_ids."""
    seed: int = 0
    """Seeds adapter initialisation and dropout, so every plan starts alike."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input during the proxy steps."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip of the adapter parameters."""
    schedule: Schedule = "cosine"
    """Decay after warm-up: "cosine", "linear" (both towards 0) or "constant"."""
    weight_decay: float = 0.0
    """AdamW weight decay."""

    def __post_init__(self) -> None:
        _check_int(self.steps, "steps", 0)
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.warmup, "warmup", 0)
        _check_int(self.eval_batches, "eval_batches", 1)
        _check_int(self.seed, "seed", 0)
        if not isinstance(self.lr, int | float) or isinstance(self.lr, bool) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.lora_dropout, int | float) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not isinstance(self.max_grad_norm, int | float) or not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be a number > 0, got {self.max_grad_norm!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.weight_decay, int | float) or not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class ProxyScore:
    """The outcome of proxy-tuning one plan."""

    plan_hash: str
    """``Plan.plan_hash`` of the scored plan (the cache key)."""
    loss: float
    """Mean held-out token loss after tuning: the objective to minimise; inf if it diverged."""
    loss_before: float
    """Mean held-out token loss of the quantised model before any tuning; inf if non-finite."""
    train_loss: tuple[float, ...]
    """Training loss of each step taken (stops early, with inf last, on divergence)."""
    seconds: float
    """Wall time of build, training and scoring."""
    tokens: int
    """Input tokens trained on (steps taken x batch_size x T)."""
    collapsed: bool = False
    """The finite score is at or above ln(vocab), a uniform guess's loss: the plan collapsed
    (marked on its trial; the search warns when its choice is one)."""
    skipped_steps: int = 0
    """Steps whose gradient was not finite under a finite loss: not applied, as in qra train."""

    @property
    def diverged(self) -> bool:
        """True when the score is inf (a non-finite loss somewhere)."""
        return not math.isfinite(self.loss)


def _check_ids(ids: object, name: str) -> None:
    import torch

    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
        is_tensor = isinstance(ids, torch.Tensor)
        got = f"{ids.dtype} tensor of shape {tuple(ids.shape)}" if is_tensor else type(ids).__name__
        raise ValueError(f"{name} must be a 2-d torch.long tensor (rows, T), got {got}")
    if ids.shape[0] < 1 or ids.shape[1] < 2:
        raise ValueError(f"{name} needs at least 1 row of at least 2 tokens, got shape {tuple(ids.shape)}")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules that shares its tensors: no weight is duplicated.

    Parameters become new frozen ``Parameter`` objects over the same storage (so the copy's
    ``requires_grad`` never touches the original's, and tied weights stay tied), buffers are
    the same tensors. Replacing a module of the copy (``apply_plan`` does) leaves the original
    as it was; changing a shared tensor in place would not, and nothing here does.
    """
    from torch import nn as torch_nn

    memo: dict[int, object] = {}
    for param in model.parameters():
        memo[id(param)] = torch_nn.Parameter(param.detach(), requires_grad=False)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer
    return copy.deepcopy(model, memo)


class ProxyEvaluator:
    """Scores Plans by proxy tuning; callable as the search's objective ``Plan -> ProxyScore``.

    Keeps a frozen private copy of the base model and the fixed data. Each new plan is built
    on a fresh deep copy (``apply_plan`` changes a model in place) with simulated (dense,
    dequantised) weights, its adapters are trained for ``config.steps`` AdamW steps, and the
    held-out loss is the score (QR-Adaptor §3.4). A non-finite loss (e.g. a 2-bit block that
    blows up) gives an inf score, recorded, never raised.

    Example:
        >>> evaluator = ProxyEvaluator(model, train_ids, eval_ids, ProxyConfig(steps=10))
        >>> evaluator(Plan.uniform(30, 4, 8)).loss
    """

    def __init__(
        self,
        base_model: nn.Module,
        train_ids: torch.Tensor,
        eval_ids: torch.Tensor,
        config: ProxyConfig | None = None,
        device: str | torch.device | None = None,
        cache: QuantCache | None = None,
        shared_base: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        """Copies ``base_model`` (the caller's model is never changed) and the data.

        Args:
            base_model: a causal LM accepted by ``apply_plan``.
            train_ids: (N, T) long tensor of training windows.
            eval_ids: (M, T') long tensor of held-out windows.
            config: the proxy settings; ``ProxyConfig()`` when None.
            device: where to build, train and score; None keeps the model's device.
            cache: fitted (linear, bits) codes of ``base_model`` to reuse and extend (e.g. the
                profile's); None starts an empty one. Either way each layer is fitted once
                per bit-width over all the plans this evaluator builds.
            shared_base: the low-memory path: the base and every candidate share
                ``base_model``'s tensors (``shared_copy``; it must stay unchanged while the
                evaluator lives) and candidates are built packed (``QuantLinear``, one alive at
                a time), so a candidate costs only its codes and adapters, not a dense model.
                Scores agree with the default path to float rounding (tests/search/test_proxy.py);
                on a CPU the packed steps are slower. Needs ``device`` to be the model's.
            gradient_checkpointing: recompute each block's activations in the proxy steps'
                backward (less memory, same scores).

        Raises:
            ValueError: if the ids are not 2-d long tensors or the config is not a ProxyConfig.
        """
        config = ProxyConfig() if config is None else config
        if not isinstance(config, ProxyConfig):
            raise ValueError(f"config must be a ProxyConfig, got {type(config).__name__}")
        _check_ids(train_ids, "train_ids")
        _check_ids(eval_ids, "eval_ids")
        if device is None:
            param = next(base_model.parameters(), None)
            device = param.device if param is not None else "cpu"
        from qradaptor.devices import indexed

        self.config = config
        self.device = indexed(device)  # "cuda" as cuda:N, so it equals a parameter's device
        self.shared_base = shared_base
        self.gradient_checkpointing = gradient_checkpointing
        param = next(base_model.parameters(), None)
        if shared_base and param is not None and param.device != self.device:
            raise ValueError(
                f"shared_base needs the model on the evaluator's device {self.device}, got {param.device}"
            )
        if shared_base:
            self._base = shared_copy(base_model).eval()
        else:
            self._base = copy.deepcopy(base_model).to(self.device).eval().requires_grad_(False)
        self._train_ids = train_ids.detach().to(self.device)
        rows = min(eval_ids.shape[0], config.eval_batches * config.batch_size)
        self._eval_ids = eval_ids[:rows].detach().to(self.device)
        self._cache: dict[str, ProxyScore] = {}
        from qradaptor.quant.cache import QuantCache

        self.quant_cache = QuantCache() if cache is None else cache
        self._evaluations = 0
        self._hits = 0
        vocab = getattr(getattr(base_model, "config", None), "vocab_size", None)
        self.chance = math.log(vocab) if isinstance(vocab, int) and vocab > 1 else math.inf
        """ln(vocab): a score at or above it is marked collapsed."""

    # ----- bookkeeping --------------------------------------------------------------
    @property
    def evaluations(self) -> int:
        """Plans actually built and tuned (cache misses)."""
        return self._evaluations

    @property
    def hits(self) -> int:
        """Calls answered from the cache."""
        return self._hits

    @property
    def cache(self) -> Mapping[str, ProxyScore]:
        """Read-only view: plan hash -> score."""
        return MappingProxyType(self._cache)

    def scores(self) -> list[ProxyScore]:
        """Every score so far, in evaluation order."""
        return list(self._cache.values())

    # ----- scoring ------------------------------------------------------------------
    def __call__(self, plan: Plan) -> ProxyScore:
        """The proxy score of ``plan``, from the cache when it was scored before.

        Raises:
            ValueError: if the plan does not fit the model (see ``Plan.validate``).
        """
        key = plan.plan_hash
        if key in self._cache:
            self._hits += 1
            return self._cache[key]
        score = self._evaluate(plan, key)
        self._cache[key] = score
        self._evaluations += 1
        return score

    def window_losses(self, plan: Plan) -> list[float]:
        """The forward-only loss of each held-out window under ``plan`` (adapters as initialised,
        no step): the terms whose mean is its 0-step score, for comparing two plans window by
        window (``screen_choice``). Not cached: a search calls it for two plans at most."""
        import torch

        out: list[float] = []
        with self._built(plan) as model, torch.inference_mode():
            for ids in self._eval_ids.split(self.config.batch_size):  # (b, T')
                logits = model(input_ids=ids).logits[:, :-1].float()  # (b, T'-1, V)
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                out += nll.mean(dim=1).tolist()  # (b,): every window has T'-1 targets
        return out

    @contextlib.contextmanager
    def _built(self, plan: Plan) -> Iterator[nn.Module]:
        """``plan`` applied to a fresh copy of the base, inside a forked RNG (the evaluator's
        seeding never leaks into the caller's stream); seeding first makes every plan's adapter
        init (A) the same draw."""
        import torch

        from qradaptor.build import apply_plan, enable_gradient_checkpointing

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed)
            model = apply_plan(
                shared_copy(self._base) if self.shared_base else copy.deepcopy(self._base),
                plan,
                simulated=not self.shared_base,
                lora_dropout=self.config.lora_dropout,
                cache=self.quant_cache,
            )
            if self.gradient_checkpointing:
                enable_gradient_checkpointing(model)
            yield model

    def _evaluate(self, plan: Plan, key: str) -> ProxyScore:
        start = time.perf_counter()
        with self._built(plan) as model:
            loss_before = self.held_out_loss(model)
            params = [p for p in model.parameters() if p.requires_grad]
            train_loss: list[float] = []
            skipped = 0
            if params and self.config.steps > 0 and math.isfinite(loss_before):
                train_loss, skipped = self._train(model, params)
            diverged = bool(train_loss) and not math.isfinite(train_loss[-1])
            loss = math.inf if diverged else (self.held_out_loss(model) if train_loss else loss_before)
        tokens = len(train_loss) * self.config.batch_size * self._train_ids.shape[1]
        return ProxyScore(
            plan_hash=key,
            loss=_finite(loss),
            loss_before=loss_before,
            train_loss=tuple(train_loss),
            seconds=time.perf_counter() - start,
            tokens=tokens,
            collapsed=math.isfinite(loss) and loss >= self.chance,
            skipped_steps=skipped,
        )

    def _batch(self, step: int) -> torch.Tensor:
        import torch

        n, bs = self._train_ids.shape[0], self.config.batch_size
        rows = (step * bs + torch.arange(bs, device=self.device)) % n
        return self._train_ids[rows]  # (B, T)

    def _train(self, model: nn.Module, params: list[torch.nn.Parameter]) -> tuple[list[float], int]:
        """AdamW with warm-up and decay over the fixed batch order; stops at a non-finite loss.

        Returns the step losses and the steps skipped for a non-finite gradient (qra train's
        rule: the norm is checked before clipping, which would spread a NaN to every adapter).
        """
        import torch

        cfg = self.config
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, cfg.steps, cfg.warmup, cfg.schedule)
        )
        model.train()
        losses: list[float] = []
        skipped = 0
        for step in range(cfg.steps):
            ids = self._batch(step)
            loss = model(input_ids=ids, labels=ids).loss
            value = float(loss.detach())
            if not math.isfinite(value):
                losses.append(math.inf)
                break
            loss.backward()
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if math.isfinite(float(norm)):
                torch.nn.utils.clip_grads_with_norm_(params, cfg.max_grad_norm, norm)
                optimizer.step()
            else:
                skipped += 1
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(value)
        model.eval()
        return losses, skipped

    def held_out_loss(self, model: nn.Module) -> float:
        """Token-weighted mean next-token loss of ``model`` on the held-out rows; inf if non-finite."""
        import torch

        total, count = 0.0, 0
        with torch.inference_mode():
            for ids in self._eval_ids.split(self.config.batch_size):  # (b, T')
                logits = model(input_ids=ids).logits[:, :-1].float()  # (b, T'-1, V)
                targets = ids[:, 1:]  # (b, T'-1)
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
                )
                total += float(nll)
                count += targets.numel()
        return _finite(total / count)
