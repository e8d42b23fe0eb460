"""Thin commands: parse options into settings, call a stage, write records and results."""
