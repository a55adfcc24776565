"""The run folders qradaptor writes: their layout and their typed, versioned JSON records.

One module per kind of folder owns its file names and its record (a frozen dataclass with
``to_dict``/``from_dict``, ``save``/``load``, and a ``format`` number written first):

    train_run   qra train's RUN/       plan.json, adapter/, base.safetensors, train.json
                                       (``TrainRecord``, its memory a ``TrainMemory``), loss.csv
    search_run  qra search's RUN/      summary.json (``SearchSummary``), config.json
                                       (``SearchConfigRecord``), plan.json, trials.csv, sensitivity.json
    cell        an experiment's cell   cell.json (``CellRecord``)

A file without ``format`` was written before records were versioned and reads as format 1
(the same fields); a newer format than this code knows is refused with a message naming the
file. The modules are plain data: no torch, no model, and this package imports none of them,
so that importing one brings in nothing of the others.
"""
