"""The `tokenflow` terminal client (installed as a console script by `make install`)."""
