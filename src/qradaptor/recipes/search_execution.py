"""``qra search`` once its options are checked and its run folder (and study) are held: load
the model, cut the token windows, start the workers, run the search and write the folder.

``recipes/search.py`` checks every option before anything loads and takes the locks; this module
does the work that needs the weights, so the verb reads as checks, then one call.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qradaptor.recipes.inputs import read_sensitivity
from qradaptor.recipes.search_options import jsonable
from qradaptor.runfolder.search_run import SEARCH_SENSITIVITY

if TYPE_CHECKING:
    from qradaptor.data.search_texts import SearchTexts
    from qradaptor.models.structure import ModelStructure
    from qradaptor.search.definition import SearchConfig
    from qradaptor.search.proxy import ProxyConfig
    from qradaptor.search.space import MemoryTable
    from qradaptor.sensitivity_table import SensitivityTable


@dataclass(frozen=True)
class SearchRequest:
    """A checked ``qra search``: what to load, search and write."""

    model: str | None
    """The model as given (None: the embedded one)."""
    budget: str
    """The budget as given, for config.json."""
    config: SearchConfig
    """The search."""
    proxy: ProxyConfig
    """The proxy fine-tunes (steps, batch size, lr, held-out batches)."""
    seq_len: int
    """Tokens per training and held-out window."""
    calibration_samples: int
    """Windows the sensitivity profile runs on."""
    texts: SearchTexts
    """The calibration and selection text and their roles."""
    sensitivity: SensitivityTable | None
    """A given profile (--sensitivity), or None to profile (or read the folder's on resume)."""
    run_dir: Path
    """The run folder, held by this process."""
    device: str
    """cpu or cuda, resolved."""
    dtype: str
    """fp32 or bf16: what the model is loaded, profiled and proxy-tuned in."""
    preset: str
    """quick or full, resolved."""
    workers: int
    """Local worker processes (0: score here, or by workers of --storage)."""
    gpus: list[int] | None
    """GPUs the local workers are spread over (None: all)."""
    storage: str | None
    """The shared storage URL, or None for the folder's study.db."""
    study: str
    """The study's name in the storage."""
    lean: dict[str, bool]
    """``run_search``'s memory options under --max-memory (empty without it)."""
    progress: bool
    """Show progress."""


def execute(request: SearchRequest, structure: ModelStructure, table: MemoryTable) -> int:
    """Runs the search and writes its folder; the exit code (130 when interrupted).

    Args:
        request: the checked options.
        structure, table: the model's structure and the search space's memory table, from
            ``search_space`` before any weight loaded.
    """
    from qradaptor.data import pack_texts
    from qradaptor.distributed.launch import local_worker_devices
    from qradaptor.distributed.queue import display_url
    from qradaptor.distributed.study import sqlite_url
    from qradaptor.models.loading import load_model
    from qradaptor.recipes.search_output import print_outcome, write_config, write_run
    from qradaptor.search.cost import cost_line
    from qradaptor.search.pipeline import run_search

    r, config, proxy, texts, run_dir = request, request.config, request.proxy, request.texts, request.run_dir
    storage_url = r.storage or sqlite_url(run_dir / "study.db")
    started = time.perf_counter()
    import torch

    loaded = load_model(
        r.model, device=r.device, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[r.dtype]
    )
    devices, worker_bytes = local_worker_devices(
        r.workers,
        r.device,
        r.gpus,
        structure,
        table,
        loaded.model,
        proxy.batch_size,
        r.seq_len,
        config.group_size,
        double_quant=config.double_quant,
        quant_method=config.quant_method,
    )
    train_windows = pack_texts(texts.calibration, loaded.tokenizer, r.seq_len, seed=0)  # the whole corpus
    # --steps 0 trains nothing; one batch still goes in, the windows the cost line times.
    train_ids = train_windows[: max(proxy.steps, 1) * proxy.batch_size]
    eval_ids = pack_texts(
        texts.selection, loaded.tokenizer, r.seq_len, num_sequences=proxy.eval_batches * proxy.batch_size
    )
    calibration = train_windows[-r.calibration_samples :]
    profiled = r.sensitivity
    if profiled is None and config.profile and (run_dir / SEARCH_SENSITIVITY).is_file():
        profiled = read_sensitivity(str(run_dir / SEARCH_SENSITIVITY))  # resume: profiled already
    profiles = profiled is None and config.profile
    line = cost_line(loaded.model, structure, config, proxy, train_ids, r.calibration_samples, profiles)
    print(f"qra search: {line}", file=sys.stderr)  # what it will do, priced here, before doing it
    settings = {
        "model": loaded.source,
        "budget": r.budget,
        "data": texts.roles["calibration"],
        "eval_data": texts.roles["selection"],
        "roles": texts.roles,
        "epoch_tokens": int(train_windows.numel()),
        "device": r.device,
        "dtype": r.dtype,
        "workers": devices,
        "worker_bytes_predicted": worker_bytes,
        "study": r.study,
        "preset": r.preset,
        "config": jsonable(config),
        "proxy": jsonable(proxy),
    }
    write_config(run_dir, settings)  # with the command line, passwords hidden
    pool = None
    queue = None
    if devices or r.storage:
        from qradaptor.distributed.launch import LocalWorkers
        from qradaptor.distributed.queue import QueueSettings
        from qradaptor.search.pipeline import WorkerQueue

        queue_settings = QueueSettings()
        pool = LocalWorkers(storage_url, r.study, devices, run_dir / "workers", queue_settings)
        queue = WorkerQueue(
            model_source=loaded.source,
            queue=queue_settings,
            on_ready=(lambda _study: pool.start()) if devices else None,
            check_alive=pool.check_alive if devices else None,
        )
        print(
            f"plans are scored by {len(devices)} local worker(s) (logs in {run_dir / 'workers'}); "
            "more can join from any machine: "
            f"qra worker --storage {display_url(storage_url)} --study {r.study}",
            file=sys.stderr,
        )
    try:
        with pool if pool is not None else contextlib.nullcontext():
            outcome = run_search(
                loaded.model,
                train_ids,
                eval_ids,
                config,
                storage=storage_url,
                proxy=proxy,
                calibration=calibration,
                sensitivity=profiled,
                study_name=r.study,
                device=r.device,
                progress=r.progress,
                workers=queue,
                **r.lean,
            )
    except KeyboardInterrupt:
        print(
            f"interrupted; finished trials are in the study {r.study!r} of {display_url(storage_url)}: "
            "run the same command to resume",
            file=sys.stderr,
        )
        return 130
    seconds = time.perf_counter() - started
    vocab = loaded.model.config.vocab_size
    summary = write_run(
        run_dir, outcome, config, int(train_windows.numel()), seconds, texts.roles, math.log(vocab)
    )
    print_outcome(outcome, summary, run_dir)
    return 0
