"""The kernel benchmark behind `sparsebench kernels`: a client of the kernel library in `schedules/`.

One module per job: `plan` (what to measure), `timer` (how one measurement is taken), `bandwidth` (copy
bandwidth and the roofline), `peers` (numpy, onnxruntime, scipy CSR, TVM's default build), `suite` (build, check
and time everything), `document` (the JSON document), `summary`, `table` and `checks` (reading it back).

Nothing here imports TVM: the suite reaches it through `schedules.build` when it runs, so the table and the
checks of a saved document work without TVM. Editing this package leaves `schedules/` (whose source hash keys
every cached artifact) untouched.
"""

from __future__ import annotations

from .checks import issue_checks
from .document import SUITE_FORMAT, write_json
from .plan import FULL, QUICK, Plan
from .suite import kernel_suite
from .table import format_table

__all__ = ["FULL", "QUICK", "SUITE_FORMAT", "Plan", "format_table", "issue_checks", "kernel_suite", "write_json"]
