"""``qra train``'s options: ``TrainOptions``, one field per option, its docstring the help.

Every option that is a ``TrainConfig`` or ``DataSpec`` field takes that dataclass's default
here (one source of truth; ``tests/cli/test_train.py`` checks the command line agrees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qradaptor.schedule import Schedule
from qradaptor.train.compiled import CompileMode
from qradaptor.train.config import TrainConfig
from qradaptor.train.run import DataSpec


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """A ``qra train``, as its command line gives it; ``recipes.train.run`` checks and runs it.

    The fields are in the order ``qra train --help`` lists them.
    """

    model: str | None = None
    """a local model directory, a .gguf file or a hub id; omitted: the embedded
    SmolLM2-135M-Instruct"""
    output: str
    """the run folder"""
    plan: str | None = None
    """a plan JSON file (e.g. from qra search) or uniform:BITS:RANK; trains it with LoRA (or with
    --method dora, qdora, loftq, adalora, amq-lora)"""
    method: str | None = None
    """a named method: lora, lora16, qlora, qlora-4, qlora-3, qlora-2, qlora-nf4 (QLoRA:
    bitsandbytes NF4 with double quantisation), qlora-nf4-nodq (NF4 without it), adalora,
    amq-lora, dora, qdora, loftq, rank-linear-decay, rank-linear-growth, rank-attn-focus,
    rank-ffn-focus, rank-attn-focus-matched, rank-ffn-focus-matched, rank-gradient, embed8-body4"""
    rank: int = 16
    """LoRA rank r of the named methods (their average rank)"""
    bits: int = 4
    """bits b of the named uniform methods (qlora, adalora, qdora, loftq; 16: unquantised)"""
    adalora_init_r: int | None = None
    """adalora: every adapted module's rank before pruning (default 1.5 x the target)"""
    adalora_target_r: int | None = None
    """adalora: the average rank AdaLoRA prunes to (default --rank, or the mean adapted rank of
    --plan)"""
    data: str | None = DataSpec.source
    """Alpaca-style .json/.jsonl (instruction, input, output), a save_to_disk folder or a hub
    dataset; with --text, plain text; omitted: the embedded QA mix"""
    text: bool = DataSpec.text
    """language-model fine-tuning on plain text (loss on every token)"""
    eval_data: str | None = DataSpec.eval_source
    """held-out examples from here instead of a split of --data"""
    eval_size: int = DataSpec.eval_size
    """examples of --data held out for evaluation (0: none)"""
    limit: int | None = DataSpec.limit
    """train on the first N examples only"""
    split: str = DataSpec.split
    """dataset split of --data"""
    epochs: float = TrainConfig.epochs
    """passes over the data (fractions allowed)"""
    max_steps: int | None = TrainConfig.max_steps
    """optimiser steps (overrides --epochs)"""
    batch_size: int = TrainConfig.batch_size
    """examples per micro-batch"""
    grad_accum: int = TrainConfig.grad_accum
    """micro-batches per optimiser step"""
    lr: float = TrainConfig.lr
    """peak AdamW learning rate"""
    warmup: float = TrainConfig.warmup
    """warm-up as a fraction of the steps (< 1) or a number of steps"""
    schedule: Schedule = TrainConfig.schedule
    """cosine, linear or constant after warm-up"""
    weight_decay: float = TrainConfig.weight_decay
    """AdamW weight decay"""
    max_grad_norm: float = TrainConfig.max_grad_norm
    """gradient-norm clip (0: off)"""
    seq_len: int = TrainConfig.seq_len
    """longest example in tokens"""
    lora_dropout: float = TrainConfig.lora_dropout
    """dropout on the adapter input"""
    gradient_checkpointing: bool = TrainConfig.gradient_checkpointing
    """recompute activations in the backward (less memory)"""
    compile: CompileMode = TrainConfig.compile
    """off (eager), default (torch.compile the forward, loss and backward) or graphs (the same
    replayed as CUDA graphs; CUDA only). Compiled, every micro-batch is padded to the longest
    example (at most --seq-len) so one graph serves every step; the first steps are slower while
    compiling (tens of seconds to minutes). It pays off for small models, whose steps are bound
    by kernel launches; "default" also runs on a CPU"""
    seed: int = TrainConfig.seed
    """seed of adapter init, dropout, data order and the held-out split"""
    eval_every: int = TrainConfig.eval_every
    """held-out loss every N steps (0: at the end only)"""
    save_every: int = TrainConfig.save_every
    """checkpoint every N steps (0: none)"""
    keep_checkpoints: int = TrainConfig.keep_checkpoints
    """newest checkpoints kept"""
    resume: bool = False
    """continue from the newest checkpoint in RUN/checkpoints"""
    force: bool = False
    """train again in a folder that holds a finished or unfinished run"""
    allow_collapse: bool = TrainConfig.allow_collapse
    """write the run even when training collapsed (its loss at or above ln(vocab), no better than
    a uniform guess, for 20 steps after warm-up, or at the end of a run of 20 steps or more);
    without it such a run stops with exit code 3 and writes no adapter"""
    eval_tasks: str | None = None
    """after training, evaluate these tasks (as qra eval --tasks; perplexity windows of --seq-len
    tokens) into RUN/eval.json"""
    eval_limit: int | None = None
    """documents per task of --eval-tasks"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto (cuda if available), cpu or cuda; bf16 on cuda, fp32 on cpu"""
    max_memory: str | None = None
    """refuse to start unless the predicted peak fits SIZE (e.g. 24GB, 24GiB, 24000MB), checked
    from the model's config before any weight loads; gradient checkpointing is turned on when
    only that fits; on CUDA the process is capped at SIZE"""
    tensorboard: bool = False
    """also log train and held-out loss as TensorBoard events in RUN/tensorboard, as training goes
    (needs the tensorboard package: pip install 'qradaptor[tensorboard]')"""
    no_progress: bool = False
    """no progress output"""
