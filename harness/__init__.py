"""sparsebench: what does weight sparsity buy a pruned network on *your* hardware?

Data flows one way: config -> variants -> artifacts -> run results -> store -> report.
"""

__version__ = "0.1.0"
