"""Fine-tuning a plan: one resumable trainer for a searched plan and every baseline.

    config       TrainConfig: optimiser, schedule, batching, checkpoints
    data         tokenized examples and the seeded order of micro-batches
    loop         Trainer: AdamW, warm-up + decay, accumulation, clipping, divergence stop, resume
    compiled     the step's forward + loss and the held-out forward, eager or compiled (static shapes)
    checkpoint   atomic checkpoints, found by step, refused when they belong to another run
    methods      the named methods: plan + adapter variant + backend
    run          train_plan: load, build the method, train, measure
    outputs      the run folder: PEFT adapter, plan, packed base, train.json, loss.csv
    nf4          bitsandbytes NF4 base (qlora-nf4 with double quantisation, qlora-nf4-nodq; CUDA)
    adalora      AdaLoRA's initial and target ranks on any plan, and the ranks it kept
    probe        per-block gradient norms (rank-gradient)

Example:
    >>> from qradaptor.train.config import TrainConfig
    >>> from qradaptor.train.run import DataSpec, train_plan
    >>> outcome = train_plan(None, "qlora", TrainConfig(max_steps=100), DataSpec(), device="cuda")
"""
