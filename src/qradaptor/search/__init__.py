"""Search for a per-block (bits, rank) plan under a memory budget (QR-Adaptor §3.3–3.5).

Pure parts (arrays of choice indices, no model):
    nsga2      Pareto ranks, crowding distance, constrained selection, layer-wise crossover,
               proximity mutation
    space      genomes <-> Plans (block or module units) and their exact memory table
    budget     "3.5bits" / "1.2GB" budgets: violation, repair down to them, fill up to them
    initial    the sensitivity-biased first population
    evolve     the NSGA-II generations against any objective ``Plan -> loss``
    bayes      Matérn-5/2 GP + Expected Improvement near the Pareto front
    knapsack, candidates, multifidelity, choice   the exact allocation, the halving
               strategy's candidates and rungs, the final choice
Glue:
    proxy      the objective for real: a short, seeded LoRA fine-tune scored by held-out loss
    pipeline   ``run_search``: profile, references, halving or NSGA-II, Bayes, choice
    cost       what a search will do and its measured cost, said before it starts
    records, report   finished searches as plain records; plots and the summary
Where a search runs (the Optuna study, the worker queue, workers and their launch) is the
sibling package ``qradaptor.distributed``, as optuna keeps its storages apart from its samplers.
"""
