"""Live runs: generating candidates, embedding them, local models and the quickstart."""
