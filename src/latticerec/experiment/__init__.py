"""The research workbench, a floor above ``evaluate`` and ``serve`` and below ``cli``.

* :mod:`~latticerec.experiment.spec`      an experiment spec (TOML): models x datasets x seeds x options;
* :mod:`~latticerec.experiment.runner`    runs its grid (skipping finished runs, resuming cut ones);
* :mod:`~latticerec.experiment.results`   ``results.csv``, ``summary.md`` and paired tests;
* :mod:`~latticerec.experiment.report`    markdown tables and PNG figures of a finished grid;
* :mod:`~latticerec.experiment.tune`      optuna tuning on the validation split only;
* :mod:`~latticerec.experiment.plots`     a run's loss and validation curves;
* :mod:`~latticerec.experiment.optfile`   option files (``latticerec train --config FILE``);
* :mod:`~latticerec.experiment.commands`  the ``experiment``, ``report``, ``tune`` and ``plot`` commands.

Nothing runs at import; torch, optuna and matplotlib are imported by the functions that use them.
"""
