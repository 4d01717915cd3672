"""What every power sensor is: readings, calibrations, the backend interface, and the helpers backends share.

Part of the board package: standard library (3.8+: JetPack 5 ships 3.8) and numpy only, relative imports only.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

#: A sensor command: an argv list, or (tests, embedding) a callable that returns what the command would print.
Command = Union[Sequence[str], Callable[[], str]]

NO_SENSOR = "no power sensor"
DEFAULT_RATE_HZ = 50.0
#: Rails that carry the whole module's input power, in order of preference; without one, total = sum of rails.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


class SensorUnavailable(Exception):
    """This sensor cannot measure here. ``str(err)`` is the reason, written for the user."""


@dataclass(frozen=True)
class Reading:
    """One reading of a sensor.

    ``t_s``: ``time.perf_counter()`` seconds when the value was taken (middle of the read for slow reads).
    Power sensors fill ``total_w`` (whole-device power per ``total_rail``, W) and ``rails_w`` (W per rail);
    energy counters fill ``energy_j`` and ``rails_j`` (cumulative J since the sensor was created, wrap-corrected).
    """

    t_s: float
    total_w: Optional[float] = None
    rails_w: dict = field(default_factory=dict)
    energy_j: Optional[float] = None
    rails_j: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    """A linear map from a sensor's raw total to a reference meter: ``P_cal = scale * P_raw + offset_w`` (W)."""

    scale: float
    offset_w: float
    source: str

    def apply(self, watts: float) -> float:
        return self.scale * watts + self.offset_w

    def as_dict(self) -> dict:
        return {"scale": self.scale, "offset_w": self.offset_w, "source": self.source}


class PowerSensor:
    """The interface every backend implements.

    A backend probes its hardware once in ``__init__`` and raises :class:`SensorUnavailable` there, so a sensor
    that exists but cannot be read is found before a run, not in the middle of one.
    """

    method = ""
    #: True: ``read()`` returns cumulative energy (``energy_j``), not instantaneous power.
    counter = False
    #: True: ``read()`` blocks until the sensor's next value (a stream), so the sampler must not sleep between reads.
    paced = False
    #: The fastest rate worth polling at (Hz); the sampler caps its rate here.
    max_rate_hz = 100.0

    def __init__(self) -> None:
        self.rails: Tuple[str, ...] = ()
        self.total_rail: Optional[str] = None
        #: How often the value itself changes (s); None: unknown, judged from the readings.
        self.update_period_s: Optional[float] = None
        self.calibration: Optional[Calibration] = None
        #: Backend-specific facts worth storing with the result (paths, units chosen, the command).
        self.detail: dict = {}

    def open(self, rate_hz: float) -> None:
        """Start the sensor (streams start their process here). Polled sensors need nothing."""

    def read(self) -> Reading:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what ``open`` started."""


# ---------------------------------------------------------------------------------------------------------------
# helpers the backends share

def read_sysfs(path: Path) -> str:
    """A sysfs file's text; an unreadable file is :class:`SensorUnavailable` saying why."""
    try:
        return path.read_text().strip()
    except PermissionError:
        raise SensorUnavailable(f"{path}: permission denied") from None
    except OSError as err:
        raise SensorUnavailable(f"{path}: {err.strerror or err}") from None


def read_int(path: Path) -> int:
    text = read_sysfs(path)
    try:
        return int(text)
    except ValueError:
        raise SensorUnavailable(f"{path}: expected an integer, read {text!r}") from None


def command_name(command: Command) -> str:
    """How a command is named in messages and results."""
    return getattr(command, "__name__", "callable") if callable(command) else " ".join(command)


def run_command(command: Command, timeout_s: float = 5.0) -> str:
    """What ``command`` prints on stdout; a missing, failing or hanging command is :class:`SensorUnavailable`."""
    if callable(command):
        return command()
    try:
        proc = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SensorUnavailable(f"{command[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise SensorUnavailable(f"`{command_name(command)}` took over {timeout_s:g} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-200:]
        raise SensorUnavailable(f"`{command_name(command)}` exited with {proc.returncode}: {tail}")
    return proc.stdout


def pick_total_rail(rails: Sequence[str]) -> Optional[str]:
    """The input rail if the board has one; else ``"sum"`` (AGX Xavier / AGX Orin have no input rail)."""
    for name in INPUT_RAILS:
        if name in rails:
            return name
    return "sum" if rails else None


def total_of(values: dict, total_rail: Optional[str]) -> float:
    """Whole-device power from per-rail values: the total rail's value, else their sum."""
    return values[total_rail] if total_rail in values else sum(values.values())
