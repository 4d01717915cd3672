"""Host side of running on a device: the run session, the runtime preflight, shipping the board package.

The code that runs *on* the device is the board package, ``harness/board``.
"""
