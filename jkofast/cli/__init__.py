"""The ``jkofast`` command line: train, sample, eval, plot, info.

``jkofast train --data moons --out runs/moons`` trains a flow and writes into ``runs/moons``:
model.pt (the final model, ``jkofast.Flow.load("runs/moons")``), checkpoint.pt (after every
block; rerunning the same command resumes), log.json, metrics.json (test NLL), samples.npy and
plot.png (2-D data).

``torchrun --nproc_per_node N -m jkofast train ...`` trains with N processes (distributed.py):
every rank evaluates its shard of the test set, rank 0 alone prints and writes the files.
``--mmap`` reads a ``.npy`` file through a memory map and splits it without copying
(datasets/streaming.py); by default files of MMAP_BYTES (1 GiB) or more are.

The package, one job a module: options.py (train's option tables, help and checks),
parser.py (the commands and their flags), data_spec.py (the data a command line names, and
the checks on a recorded file), recorded_data.py (a saved model's data for eval and plot),
report.py (the printed evaluation and its Gaussian baseline), output_files.py (the files
written), train_command.py and commands.py (the commands), process.py (stderr notes, torchrun
ranks, errors, SIGTERM), command_line.py (main: an exit status for every ending).
"""
from .command_line import main

__all__ = ["main"]
