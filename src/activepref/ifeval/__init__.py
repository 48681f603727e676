"""Verifiable instructions in the style of IFEval (Zhou et al. 2023): each kind can be added to
a prompt as one sentence and checked on a response by a plain function, so a judge (or an
evaluation) gets an objective answer no model can fake.

``instructions.py`` holds the kinds (a ``Registry``: name -> how to phrase it, draw its
parameters, check it); ``scoring.py`` IFEval's four accuracies (prompt/instruction level,
strict/loose) and the oracle score built from them.
"""
