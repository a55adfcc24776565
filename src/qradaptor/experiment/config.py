"""An experiment file (YAML) read into cells: methods x budgets x seeds, each a list of qra commands.

A cell is one (method, budget, seed) run end to end. Its steps are ordinary ``qra``
command lines, so the folder it leaves is what a user running those commands by hand
would get, and every number in a results table can be re-made from the line next to it:

    [qra plan ...]       a hand-made plan (e.g. the pilot study's Configs C and D)
    [qra search ...]     a searched plan; shared by every cell with the same search
    qra train ...        the fine-tune (its run folder: train/)
    qra eval --run ...   the evaluation of exactly what was trained (eval.json)

The file::

    name: pilot                      # folder under -o, and the results' title
    description: ...                 # one paragraph for the results page
    model: null                      # hub id, directory or .gguf; omitted: embedded SmolLM2
    seeds: [0, 1, 2]
    reference: lora16                # tokens/s are also given relative to this label (for
                                     # the labels trained on its device)
    train: {epochs: 1, batch_size: 32}    # qra train options of every cell
    eval: {tasks: suite, limit: 1000}     # qra eval options of every cell
    search: {preset: full}                # qra search options of every searched method
                                          # (with no preset each search takes its device's:
                                          # quick on the CPU, full on CUDA)
    profile: {samples: 8, seq_len: 512}   # optional: one qra profile that every search and
                                          # knapsack plan reads (--sensitivity), not one each
    methods:
      - label: lora16
        method: lora16
      - label: C
        plan: {bits: 4x15,2x15, ranks: 8x15,16x15}
      - label: U4dq                  # other qra plan options beside bits and ranks
        plan: {bits: 4, ranks: 4, double_quant: true}
      - label: knapsack
        plan: knapsack               # qra plan --baseline knapsack at each budget
        budgets: [4.0bits]
      - label: knapsack-dq           # its own profile and qra plan options
        plan: knapsack
        profile: {bits: [2, 3, 4, 5, 6, 8], double_quant: true}
        knapsack: {bits: [2, 3, 4, 5, 6, 8], double_quant: true}
        budgets: [4.0bits]
      - label: qra
        search: {}                   # this method's own search options, over the shared ones
        budgets: [3.5bits, 5.0bits]

Options are written as in the command line with ``_`` for ``-`` (``batch_size: 32`` is
``--batch-size 32``); ``true`` is a bare flag, a list is joined by commas. The CLI checks
each command against the verb's own parser before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qradaptor.experiment.commands import Cell, Experiment
from qradaptor.experiment.fields import check_keys, check_name, check_seeds, options_argv
from qradaptor.experiment.method_cells import method_cells, shared_profile

TOP_KEYS = (
    "name",
    "description",
    "model",
    "seeds",
    "reference",
    "train",
    "eval",
    "search",
    "profile",
    "methods",
)
"""Keys an experiment file may have."""
METHOD_KEYS = (
    "label",
    "method",
    "plan",
    "search",
    "budgets",
    "search_seed",
    "train",
    "seeds",
    "profile",
    "knapsack",
)
"""Keys a ``methods`` entry may have."""


def _where(source: Path, key: str) -> str:
    return f"{source}: {key}"


def load(path: str | Path, output: str | Path) -> Experiment:
    """Reads an experiment file into its cells under ``output``.

    Args:
        path: the YAML file.
        output: the experiments' folder (``qra experiment -o``).

    Returns:
        The experiment; nothing is run or written.

    Raises:
        ValueError: a missing file, bad YAML or any key or value the format does not accept,
            naming the file, the key and what is accepted.
    """
    import yaml

    source, root = Path(path), Path(output)
    if not source.is_file():
        raise ValueError(f"experiment file {str(source)!r} does not exist")
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{source} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{source} must be a mapping with name, seeds and methods; got {type(data).__name__}"
        )
    check_keys(data, TOP_KEYS, str(source))
    for key in ("name", "methods"):
        if key not in data:
            raise ValueError(f"{source}: {key!r} is missing")
    name = check_name(data["name"], _where(source, "name"))
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"{source}: model must be a hub id, a directory or a .gguf path, got {model!r}")
    seeds = check_seeds(data.get("seeds", [0]), _where(source, "seeds"))
    shared: dict[str, Any] = {verb: data.get(verb) for verb in ("train", "eval", "search")}
    for verb, options in shared.items():
        options_argv(options, verb, _where(source, verb))
    model_argv = [model] if model else []
    shared["profile"] = None
    if "profile" in data:
        shared["profile"] = shared_profile(data["profile"], root, model_argv, _where(source, "profile"))
    methods = data["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError(f"{source}: methods must be a non-empty list, got {methods!r}")
    cells: list[Cell] = []
    labels: list[str] = []
    for index, entry in enumerate(methods):
        where = _where(source, f"methods[{index}]")
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping with a label, got {entry!r}")
        check_keys(entry, METHOD_KEYS, where)
        for cell in method_cells(entry, where, name, root, model_argv, seeds, shared):
            if cell.label not in labels:
                labels.append(cell.label)
            cells.append(cell)
    seen: set[tuple[str, int]] = set()
    for c in cells:
        if (c.label, c.seed) in seen:
            raise ValueError(f"{source}: labels must be unique, {c.label!r} is used twice")
        seen.add((c.label, c.seed))
    reference = data.get("reference")
    if reference is not None and reference not in labels:
        raise ValueError(f"{source}: reference {reference!r} is none of the labels ({', '.join(labels)})")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"{source}: description must be text, got {description!r}")
    return Experiment(name, description.strip(), source, tuple(labels), reference, tuple(cells))
