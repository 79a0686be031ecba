"""atoll.demo: ``atoll demo``, a workflow served by a local fleet of real processes on loopback."""
