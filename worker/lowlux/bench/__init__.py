"""``lowlux bench``: time, peak memory and accuracy of the net, as ratios to an eager reference.

Every configuration runs in its own child process, so its peak RSS is its own and not the
maximum of everything measured before it. The first row is always the plain eager fp32 net
(``reference: true``); every other row reports its speed-up over it and its largest deviation
from the reference output, measured in the same run on the same input.

The timing input is noise, which flatters reduced precision: bf16 deviates two to four times more
on photographs. So every row also reports its deviation on a photograph (:func:`photo_input`).

One module per concern:

- :mod:`.configs`: which configurations run, the reference first;
- :mod:`.command`: the command's arguments and the run over sizes and configurations (parent);
- :mod:`.child`: one configuration measured in a process of its own; :mod:`.e2e` the file -> TIFF row;
- :mod:`.workload`, :mod:`.accuracy`, :mod:`.memory`: the input, the deviations, the peak RSS;
- :mod:`.report`: the rows as console lines, JSON and Markdown tables.
"""

from .accuracy import photo_input
from .configs import LARGE_PIXELS, Config, default_configs
from .command import DEFAULT_SIZES, add_bench_arguments, parse_size, run_bench
from .report import Row, machine_line, markdown_tables
from .workload import bench_input, count_macs

__all__ = ["DEFAULT_SIZES", "LARGE_PIXELS", "Config", "Row", "add_bench_arguments", "bench_input", "count_macs",
           "default_configs", "machine_line", "markdown_tables", "parse_size", "photo_input", "run_bench"]
