"""Search for a per-block (bits, rank) plan under a memory budget (QR-Adaptor §3.4).

``nsga2`` holds the pure NSGA-II kernels (Pareto ranks, crowding distance, constrained
selection, layer-wise crossover, proximity mutation) on arrays of choice indices;
``space`` maps those genomes to Plans, prices them exactly with a memory table, and turns a
budget ("3.5bits", "1.2GB") into a constraint violation and a repair step. The search never
imports a model: it is handed an objective that scores a Plan.
"""
