"""The runtime: precision, devices and launchers, host-sync counting, progress bars."""
