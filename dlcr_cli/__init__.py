"""dlcr: the DLCR method for clothes-changing person re-identification, as one command-line tool."""

__version__ = "0.1.0"
