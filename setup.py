"""What pyproject.toml cannot say: the device profiles, kept in the repository's top-level ``targets/`` folder,
ship inside the package as ``harness/targets/`` (``harness/paths.py`` looks there first, then in the checkout).
Everything else about the distribution is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["harness", "harness.*", "schedules", "schedules.*"]) + ["harness.targets"],
    package_dir={"harness.targets": "targets"},
)
