"""Search for a per-block (bits, rank) plan under a memory budget (QR-Adaptor §3.3–3.4).

``nsga2`` holds the pure NSGA-II kernels (Pareto ranks, crowding distance, constrained
selection, layer-wise crossover, proximity mutation) on arrays of choice indices;
``space`` maps those genomes to Plans, prices them exactly with a memory table, and turns a
budget ("3.5bits", "1.2GB") into a constraint violation and a repair step; ``initial``
draws the sensitivity-biased first population; ``evolve`` runs the NSGA-II generations
against any objective ``Plan -> loss``; ``proxy`` is that objective for real: a short,
seeded LoRA fine-tune of the candidate scored by held-out loss. Only ``proxy`` builds models.
"""
