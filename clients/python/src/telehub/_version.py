"""The package's version (read by the build, pyproject.toml)."""

VERSION = "0.1.0"
