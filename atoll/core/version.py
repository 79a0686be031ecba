"""atoll's version, read from the installed distribution's metadata (pyproject.toml is its one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("atoll")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
