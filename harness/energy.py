"""Offline energy tools: tegrastats logs and Raspberry Pi 5 PMIC dumps, read on the host.

The line parsers live in the board package (``harness/board/sensors/``) because the runner needs them on the board;
this module adds files, time windows and printing for ``sparsebench energy tegrastats LOGFILE`` and
``sparsebench energy pmic FILE``.
User mistakes (a missing file, a log without timestamps and no interval) raise :class:`HarnessError`.
"""

from __future__ import annotations

import json as jsonlib
from datetime import datetime
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from .board.sensors import PI5_CALIBRATION, Calibration, integrate_power, parse_pmic_adc, parse_tegrastats_line
from .errors import HarnessError

#: How ``--start``/``--end`` may name a time: ISO, or as tegrastats prints it.
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%m-%d-%Y %H:%M:%S")


def _read_text(path: Union[str, Path], what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise HarnessError(f"cannot read {what} {path}: {err.strerror or err}") from None


def parse_tegrastats_log(source: Union[str, Path, Iterable[str]]) -> list:
    """A tegrastats log (a path, or its lines) as one dict per non-blank line; keys as in
    :func:`harness.board.sensors.parse_tegrastats_line` (``timestamp``, ``rails_mw``, ``total_mw``, ...)."""
    lines = _read_text(source, "tegrastats log").splitlines() if isinstance(source, (str, Path)) else source
    return [parse_tegrastats_line(line) for line in lines if line.strip()]


def _parse_time(text: str) -> datetime:
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise HarnessError(f"cannot read time {text!r}: give seconds from the first line, or YYYY-MM-DDTHH:MM:SS, "
                       "or MM-DD-YYYY HH:MM:SS as tegrastats prints it")


def _line_times(samples: list, interval_s: Optional[float]) -> np.ndarray:
    """Seconds since the first line, from ``interval_s`` if given, else from the lines' timestamps."""
    if interval_s is not None:
        if interval_s <= 0:
            raise HarnessError(f"interval must be positive, got {interval_s:g} s")
        return np.arange(len(samples)) * float(interval_s)
    if any(s["timestamp"] is None for s in samples):
        raise HarnessError("the log has no timestamps (JetPack 4 prints none): give the tegrastats --interval, "
                           "in seconds")
    first = datetime.fromisoformat(samples[0]["timestamp"])
    t = np.array([(datetime.fromisoformat(s["timestamp"]) - first).total_seconds() for s in samples])
    if np.any(np.diff(t) <= 0):
        raise HarnessError("the log's timestamps repeat or go back (one-second stamps, lines faster than that): "
                           "give the tegrastats --interval, in seconds")
    return t


def _offset(value: Union[str, float, None], samples: list, default: float) -> float:
    """``--start``/``--end`` as seconds since the first line: a number is that already, text is a clock time."""
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        pass
    if samples[0]["timestamp"] is None:
        raise HarnessError(f"cannot place {value!r}: the log has no timestamps; give seconds from the first line")
    return (_parse_time(str(value)) - datetime.fromisoformat(samples[0]["timestamp"])).total_seconds()


def energy_over(samples: list, start: Union[str, float, None] = None, end: Union[str, float, None] = None, *,
                interval_s: Optional[float] = None) -> dict:
    """Energy between ``start`` and ``end`` of a parsed tegrastats log: trapezoid over the instantaneous values
    (tegrastats' own "avg" column is a running average since it started, not ours).

    ``start``/``end``: seconds since the first line, or a clock time in the log (ISO or tegrastats' format);
    default: the whole log. ``interval_s``: seconds between lines, needed when the log has no timestamps
    (JetPack 4) or they repeat (interval under a second).

    Returns ``energy_j``, ``mean_w``, ``duration_s``, ``start_s``/``end_s`` (since the first line), ``lines``
    (inside the window), ``total_rail``, ``rails_j`` (J per rail on every line) and ``first_timestamp``.
    """
    samples = [s for s in samples if s["total_mw"] is not None]
    if len(samples) < 2:
        raise HarnessError("the log has fewer than two lines with power rails: nothing to integrate")
    t = _line_times(samples, interval_s)
    lo, hi = _offset(start, samples, 0.0), _offset(end, samples, float(t[-1]))
    if not (0.0 <= lo < hi <= t[-1]):
        raise HarnessError(f"window {lo:g}..{hi:g} s is empty or outside the log (0..{t[-1]:g} s since the "
                           "first line)")
    total_w = np.array([s["total_mw"] for s in samples]) / 1000.0
    energy_j = integrate_power(t, total_w, lo, hi)
    rails = [name for name in samples[0]["rails_mw"] if all(name in s["rails_mw"] for s in samples)]
    rails_j = {name: integrate_power(t, np.array([s["rails_mw"][name] for s in samples]) / 1000.0, lo, hi)
               for name in rails}
    return {
        "energy_j": energy_j,
        "mean_w": energy_j / (hi - lo),
        "duration_s": hi - lo,
        "start_s": lo,
        "end_s": hi,
        "lines": int(np.count_nonzero((t >= lo) & (t <= hi))),
        "total_rail": samples[0]["total_rail"],
        "rails_j": rails_j,
        "first_timestamp": samples[0]["timestamp"],
    }


def parse_pmic(text: str, calibration: Calibration = PI5_CALIBRATION) -> dict:
    """``vcgencmd pmic_read_adc`` output: ``rails_w`` (W), ``total_raw_w`` (Σ V·I), ``total_calibrated_w``
    (``calibration`` applied; it is per setup), ``calibration``, ``rails_v``, ``rails_a`` and ``unpaired``."""
    parsed = parse_pmic_adc(text)
    if not parsed["rails_w"]:
        raise HarnessError("no PMIC rails found: expected the output of `vcgencmd pmic_read_adc` on a Raspberry Pi 5")
    return {
        "rails_w": parsed["rails_w"],
        "total_raw_w": parsed["total_raw_w"],
        "total_calibrated_w": calibration.apply(parsed["total_raw_w"]),
        "calibration": calibration.as_dict(),
        "rails_v": parsed["rails_v"],
        "rails_a": parsed["rails_a"],
        "unpaired": parsed["unpaired"],
    }


def main_tegrastats(path: Union[str, Path], json: bool = False, start: Union[str, float, None] = None,
                    end: Union[str, float, None] = None, interval_s: Optional[float] = None) -> int:
    """``sparsebench energy tegrastats LOGFILE [--json] [--start] [--end] [--interval]``: print the energy of a
    tegrastats log (JSON, or lines for people). Returns the exit code; user errors raise HarnessError."""
    summary = {"file": str(path), **energy_over(parse_tegrastats_log(path), start, end, interval_s=interval_s)}
    if json:
        print(jsonlib.dumps(summary, indent=2))
        return 0
    print(f"{path}: {summary['lines']} lines, {summary['start_s']:g}..{summary['end_s']:g} s since the first line")
    print(f"energy {summary['energy_j']:.3f} J over {summary['duration_s']:.3f} s, mean {summary['mean_w']:.3f} W "
          f"(total: {summary['total_rail']})")
    for name, joules in summary["rails_j"].items():
        print(f"  {name:<20} {joules:10.3f} J  {joules / summary['duration_s']:8.3f} W")
    return 0


def main_pmic(path: Union[str, Path], json: bool = False) -> int:
    """``sparsebench energy pmic FILE [--json]``: print the rails and totals of a saved ``vcgencmd pmic_read_adc``
    output. Returns the exit code; user errors raise HarnessError."""
    summary = {"file": str(path), **parse_pmic(_read_text(path, "PMIC output"))}
    if json:
        print(jsonlib.dumps(summary, indent=2))
        return 0
    for name, watts in summary["rails_w"].items():
        print(f"  {name:<12} {summary['rails_v'][name]:8.4f} V  {summary['rails_a'][name]:9.5f} A  {watts:8.4f} W")
    cal = summary["calibration"]
    print(f"total {summary['total_raw_w']:.4f} W raw (sum of V x I), {summary['total_calibrated_w']:.4f} W "
          f"calibrated ({cal['scale']:g} x raw + {cal['offset_w']:g} W; {cal['source']})")
    return 0
