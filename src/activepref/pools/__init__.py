"""Candidate pools: records, file readers, the built-in and synthetic pools."""
