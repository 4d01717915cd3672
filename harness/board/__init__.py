"""The board side of sparsebench: the code that runs on the device, shipped there as one package.

On the host this is ``harness.board``; on a board the same files are uploaded into the job's work directory as
the package :data:`PACKAGE` and run with ``python -m sparsebench_board.<module> ...`` from that directory (see
``harness/device/ship.py``). So every module here imports only the standard library, numpy and the TVM runtime
(``tvm``, ``tvm.runtime``, ``tvm.runtime.vm``), and its own siblings by relative import -- never the host package.
Syntax stays Python 3.8 (JetPack 5's Python runs the sensors and the probe). A test enforces all of this.

- ``runner``: load the compiled variants of one model and batch, time them in interleaved rounds, evaluate them,
  measure their energy (``python -m ....runner JOB``)
- ``rounds``: the statistics that decide when a measurement is settled (median CI, round spread)
- ``timer``: time single kernels of a library, for the kernel-selection step (``python -m ....timer JOB``)
- ``probe``: what the device has, for ``sparsebench doctor`` (standard library only)
- ``meta``: device metadata, the timing fingerprint, the thread setting
- ``sensors``: power sensors by family and the sampler that turns them into energy per inference
"""

#: The package's name on the device.
PACKAGE = "sparsebench_board"

#: Every file that is shipped, relative to this folder (a test checks that each exists and that no ``*.py`` here
#: is missing from the list).
SHIPPED = (
    "__init__.py",
    "meta.py",
    "probe.py",
    "rounds.py",
    "runner.py",
    "timer.py",
    "sensors/__init__.py",
    "sensors/android.py",
    "sensors/base.py",
    "sensors/jetson.py",
    "sensors/meter.py",
    "sensors/pi.py",
    "sensors/rapl.py",
    "sensors/sampling.py",
)
