"""What the long verbs do, as library calls: an options dataclass in, a run folder written and
an exit code out (torchtune's recipes: linear, readable, importable).

    search_options   SearchOptions (qra search's options, field docstrings the help), presets, checks
    search           run(SearchOptions): every check before the weights load, the locks, then execute
    search_execution the search once its folder is held: load, windows, workers, run, write
    search_output    the search's run folder: results, plots, the printed summary
    train_options    TrainOptions (qra train's options; TrainConfig's and DataSpec's defaults)
    train            run(TrainOptions): checks, the lock, train_plan, the run folder
    train_output     --eval-tasks into RUN/eval.json and the printed summary
    max_memory       --max-memory: each verb's predicted peak checked before any weight loads
    inputs           what a user names (model, plan, sensitivity table, device, output), checked

``qradaptor.cli`` parses a command line into the options (``cli/options.py`` builds the parser
from the dataclass) and calls ``run``; a benchmark or a runner can call ``run`` in-process.
Nothing here imports ``qradaptor.cli``, and this ``__init__`` imports none of its modules, so
``qra --help`` stays light.
"""
