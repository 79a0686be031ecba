"""atoll.cli: the ``atoll`` command for people, the roof of the house (see :mod:`atoll.cli.main`)."""
