"""Tests of the sidecar's HTTP/1.1 client: a package, so that its conftest (the event
loops to run on) is not the `conftest` module the sidecar's tests import from."""
