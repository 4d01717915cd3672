"""From a sensor to energy per inference: a sampler thread, integration over windows, the result record."""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional, Tuple

import numpy as np

from .base import DEFAULT_RATE_HZ, NO_SENSOR, PowerSensor, SensorUnavailable

#: A window must span this many sensor updates: fewer, and one stale value at an edge is a large share of it.
MIN_UPDATES = 10
#: ... and hold this many of our samples, so the trapezoid has a shape to follow.
MIN_SAMPLES = 10


def integrate_power(t_s, power_w, start: float, end: float) -> float:
    """∫ power dt over [start, end] (J): trapezoid between readings, values at the bounds interpolated linearly
    (the first and last reading hold beyond the readings). ``t_s`` must increase."""
    t = np.asarray(t_s, dtype=float)
    p = np.asarray(power_w, dtype=float)
    knots = np.concatenate([[start], t[(t > start) & (t < end)], [end]])
    values = np.interp(knots, t, p)
    return float(np.sum((values[1:] + values[:-1]) / 2.0 * np.diff(knots)))


def counter_energy(t_s, energy_j, start: float, end: float) -> float:
    """Energy (J) between ``start`` and ``end`` from a cumulative (already unwrapped) counter: the difference of
    the counter interpolated at both bounds."""
    at = np.interp([start, end], np.asarray(t_s, dtype=float), np.asarray(energy_j, dtype=float))
    return float(at[1] - at[0])



class Sampler:
    """Reads a sensor on a background thread at ``rate_hz`` (capped at the sensor's ``max_rate_hz``), or, for a
    stream, as fast as it delivers. A read that fails ends sampling; ``error`` holds why."""

    def __init__(self, sensor: PowerSensor, rate_hz: float = DEFAULT_RATE_HZ):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.sensor = sensor
        self.rate_hz = min(rate_hz, sensor.max_rate_hz)
        self.readings: list = []
        self.error: Optional[str] = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def timeout_s(self) -> float:
        """How long to wait for one reading before calling the sensor stalled."""
        return max(5.0, 3.0 * max(1.0 / self.rate_hz, self.sensor.update_period_s or 0.0))

    def start(self) -> None:
        """Open the sensor and start sampling; returns once the first reading is in, else raises SensorUnavailable."""
        self.sensor.open(self.rate_hz)
        self._thread = threading.Thread(target=self._loop, name="sparsebench-sensor", daemon=True)
        self._thread.start()
        if not self.wait_for_reading_after(-math.inf):
            reason = self.error or f"no reading within {self.timeout_s:g} s"
            self.stop()
            raise SensorUnavailable(reason)

    def _loop(self) -> None:
        period = 1.0 / self.rate_hz
        due = time.perf_counter()
        while not self._stopping.is_set():
            try:
                reading = self.sensor.read()
            except Exception as err:  # any failure ends sampling and becomes the result's status, not a crash
                if not self._stopping.is_set():  # a stream that stop() closed ends in an error: not one
                    with self._cond:
                        self.error = str(err) if isinstance(err, SensorUnavailable) else \
                            f"sensor read failed: {type(err).__name__}: {err}"
                        self._cond.notify_all()
                return
            with self._cond:
                self.readings.append(reading)
                self._cond.notify_all()
            if not self.sensor.paced:
                due += period
                delay = due - time.perf_counter()
                if delay > 0:
                    self._stopping.wait(delay)
                else:
                    due = time.perf_counter()  # a slow read: carry on from now rather than burst to catch up

    def has_reading_after(self, t_s: float) -> bool:
        readings = self.readings
        return bool(readings) and readings[-1].t_s > t_s

    def wait_for_reading_after(self, t_s: float) -> bool:
        """Block until a reading newer than ``t_s`` is in (True), or the sensor failed or stalled (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self.error is not None or self.has_reading_after(t_s), self.timeout_s)
            return self.error is None and self.has_reading_after(t_s)

    def stop(self) -> list:
        """Stop sampling and close the sensor; returns the readings."""
        self._stopping.set()
        if self._thread is not None:  # a stream's blocked read returns with its next line
            self._thread.join(self.timeout_s)
        self.sensor.close()
        return list(self.readings)


def _empty_result(sensor: Optional[PowerSensor], status: str, rate_hz: Optional[float]) -> dict:
    """Every key of an energy result, numbers None: the same shape whether or not a measurement happened."""
    return {
        "status": status,                          # "ok" | "unavailable: <reason>" | "invalid: <reason>"
        "method": sensor.method if sensor else None,
        "rails": list(sensor.rails) if sensor else [],
        "total_rail": sensor.total_rail if sensor else None,
        # None, or the calibration and the calibrated values of the four numbers below (the top-level ones are raw)
        "calibration": sensor.calibration.as_dict() if sensor and sensor.calibration else None,
        "energy_per_inference_mj": None,           # active energy / iterations
        "energy_above_idle_per_inference_mj": None,  # (active W - idle W) x window / iterations
        "idle_w": None,
        "active_w": None,
        "power_cv": None,                          # std / mean of the power readings in the window
        "rails_active_w": {},                      # mean W per rail in the window
        "idle_s": None,                            # the idle stretch integrated, s
        "window_s": None,                          # the active stretch integrated, s
        "iterations": None,                        # calls of run_fn inside the window
        "idle_samples": None,
        "samples": None,                           # readings inside the window
        "rate_hz": None,                           # achieved reading rate
        "requested_rate_hz": rate_hz,
        "sensor_update_s": None,                   # how often the sensor's value changes
        "sensor_update_source": None,              # "declared" by the sensor or "observed" in the idle readings
        "sensor_detail": dict(sensor.detail) if sensor else {},
    }


def unavailable(reason: str) -> dict:
    """An energy result that says why there is none (e.g. ``detect()``'s reason)."""
    return _empty_result(None, f"unavailable: {reason}", None)


def _too_short(update_s: float, rate_hz: float, idle_s: float, window_s: float) -> Optional[str]:
    """The verdict for windows too short for a sensor with a known update period, before measuring anything."""
    need = max(MIN_UPDATES * update_s, (MIN_SAMPLES + 1) / rate_hz)  # + 1: a window's edges rarely hit a reading
    if min(idle_s, window_s) >= need:
        return None
    return (f"invalid: window too short for the sensor's update rate (idle_s={idle_s:g} s, window_s={window_s:g} s; "
            f"the sensor updates every {update_s:.3g} s and is read at {rate_hz:g} Hz; a window needs "
            f"{MIN_UPDATES} updates and {MIN_SAMPLES} readings: use idle_s and window_s >= {need:.3g} s)")


def _changes(values: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(values)))


def measure_energy(run_fn: Callable[[], object], *, backend: Optional[PowerSensor], idle_s: float = 2.0,
                   window_s: float = 5.0, rate_hz: float = DEFAULT_RATE_HZ) -> dict:
    """Energy per inference of ``run_fn`` (one inference per call, including any device sync), measured.

    Samples an idle stretch of ``idle_s``, then calls ``run_fn`` back to back and integrates a window of at least
    ``window_s`` s. The first sensor update period (plus one sample) of each stretch is skipped, since sensors
    lag the load, and the load keeps running until a reading from after the window is in, so both edges of the
    window sit between readings of the same load; ``iterations`` counts only the calls inside the window.
    Power sensors are integrated with the trapezoid rule; energy counters by the difference of the counter.

    Returns the dict built by :func:`_empty_result` (keys and units there). ``status`` is ``"ok"``,
    ``"unavailable: <reason>"`` (no sensor, or it failed) or ``"invalid: ..."`` (window too short for the
    sensor). ``backend=None`` gives ``"unavailable: no power sensor"``; nothing is ever estimated.
    """
    if backend is None:
        return unavailable(NO_SENSOR)
    sampler = Sampler(backend, rate_hz)
    try:
        sampler.start()
    except SensorUnavailable as err:
        return _empty_result(backend, f"unavailable: {err}", rate_hz)
    try:
        result = _empty_result(backend, "ok", rate_hz)  # after start: a stream knows its rails only now
        result.update(_measure(run_fn, sampler, idle_s, window_s))
        return result
    finally:
        sampler.stop()


def _measure(run_fn: Callable[[], object], sampler: Sampler, idle_s: float, window_s: float) -> dict:
    sensor = sampler.sensor
    sample_s = 1.0 / sampler.rate_hz
    declared = sensor.update_period_s
    if declared is not None:
        verdict = _too_short(declared, sampler.rate_hz, idle_s, window_s)
        if verdict:
            return {"status": verdict}

    # idle
    settle_s = (declared or 0.0) + sample_s
    idle_start = time.perf_counter()
    time.sleep(idle_s + settle_s)
    idle_end = time.perf_counter()
    if not sampler.wait_for_reading_after(idle_end):
        return _lost(sampler)
    if declared is None:
        t, values = _series(list(sampler.readings), sensor.counter)
        inside = (t >= idle_start) & (t <= idle_end)
        changes = _changes(values[inside])
        if changes < MIN_UPDATES:
            update = f"about every {idle_s / changes:.3g} s" if changes else "never"
            return {"status": f"invalid: window too short for the sensor's update rate (the reading changed "
                              f"{changes} times in {idle_s:g} s of idle, so it updates {update}; a window needs "
                              f"{MIN_UPDATES} updates: lengthen idle_s and window_s)"}
        update_s = float(t[inside][-1] - t[inside][0]) / changes
        settle_s = update_s + sample_s
    else:
        update_s = declared

    # active: the window opens at the end of the first call after the settle time, closes at a call's end
    calls, window_start, window_end, first_in = 0, None, None, 0
    active_start = time.perf_counter()
    while window_end is None:
        run_fn()
        calls += 1
        now = time.perf_counter()
        if window_start is None:
            if now - active_start >= settle_s:
                window_start, first_in = now, calls
        elif now - window_start >= window_s:
            window_end = now
        if sampler.error:
            return _lost(sampler)
    iterations = calls - first_in
    deadline = time.perf_counter() + sampler.timeout_s
    while not sampler.has_reading_after(window_end):
        if sampler.error or time.perf_counter() > deadline:
            return _lost(sampler)
        run_fn()

    readings = list(sampler.readings)
    t, values = _series(readings, sensor.counter)
    integrate = counter_energy if sensor.counter else integrate_power
    idle_from = idle_start + settle_s
    idle_w = integrate(t, values, idle_from, idle_end) / (idle_end - idle_from)
    window = window_end - window_start
    active_j = integrate(t, values, window_start, window_end)
    active_w = active_j / window
    in_window = (t >= window_start) & (t <= window_end)
    samples = int(np.count_nonzero(in_window))
    idle_samples = int(np.count_nonzero((t >= idle_from) & (t <= idle_end)))
    if declared is None and _changes(values[in_window]) < MIN_UPDATES:
        return {"status": f"invalid: window too short for the sensor's update rate (the reading changed "
                          f"{_changes(values[in_window])} times in the {window:.3g} s window; lengthen window_s)"}
    if min(samples, idle_samples) < MIN_SAMPLES:
        return {"status": f"invalid: window too short for the sensor's update rate ({idle_samples} idle and "
                          f"{samples} window readings at {sampler.rate_hz:g} Hz; each needs {MIN_SAMPLES}: "
                          "lengthen idle_s and window_s)"}
    if sensor.counter:
        powers = np.diff(values[in_window]) / np.diff(t[in_window])
        rails = {name: np.array([r.rails_j[name] for r in readings]) for name in sensor.rails}
    else:
        powers = values[in_window]
        rails = {name: np.array([r.rails_w[name] for r in readings]) for name in sensor.rails}
    mean_power = float(np.mean(powers))

    def per_inference(watts: float) -> float:
        """A mean power over the window as mJ per call."""
        return watts * window / iterations * 1e3

    result = {
        "energy_per_inference_mj": per_inference(active_w),
        "energy_above_idle_per_inference_mj": per_inference(active_w - idle_w),
        "idle_w": idle_w,
        "active_w": active_w,
        "power_cv": float(np.std(powers, ddof=1) / mean_power) if len(powers) > 1 and mean_power else None,
        "rails_active_w": {name: integrate(t, series, window_start, window_end) / window
                           for name, series in rails.items()},
        "idle_s": idle_end - idle_from,
        "window_s": window,
        "iterations": iterations,
        "idle_samples": idle_samples,
        "samples": samples,
        "rate_hz": (len(t) - 1) / float(t[-1] - t[0]),
        "sensor_update_s": update_s,
        "sensor_update_source": "declared" if declared is not None else "observed",
    }
    cal = sensor.calibration
    if cal is not None:
        result["calibration"] = {
            **cal.as_dict(),
            "energy_per_inference_mj": per_inference(cal.apply(active_w)),
            "energy_above_idle_per_inference_mj": per_inference(cal.scale * (active_w - idle_w)),  # offset cancels
            "idle_w": cal.apply(idle_w),
            "active_w": cal.apply(active_w),
        }
    return result


def _lost(sampler: Sampler) -> dict:
    return {"status": f"unavailable: {sampler.error or 'sensor stopped delivering readings'}"}


def _series(readings: list, counter: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Reading times and the total (W for power sensors, cumulative J for counters) as arrays."""
    t = np.array([r.t_s for r in readings])
    values = np.array([r.energy_j if counter else r.total_w for r in readings], dtype=float)
    return t, values
