"""``qra experiment``: a grid of methods x budgets x seeds run end to end, and its report."""
