"""Device side: ``runner.py`` is copied to the device and run there; it needs only numpy and the TVM runtime."""
