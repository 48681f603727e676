"""The run core: the loop, its store and request cache, runs, summaries and export."""
