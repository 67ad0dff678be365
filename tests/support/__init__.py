"""Shared test support (pytest plugins and helpers); see docs/testing-control-plane.md."""
