"""Human annotation: people judge the pairs the ensemble is least sure about.

- :mod:`activepref.annotate.queue`: tasks, annotators and labels in the run's SQLite store
  (what the human and routed judges and the web app share);
- :mod:`activepref.annotate.agreement`: majority vote, Cohen's κ, Krippendorff's α;
- :mod:`activepref.annotate.render`: responses as escaped text with a safe Markdown subset;
- :mod:`activepref.annotate.app`: the web app (`activepref annotate RUN`).

The judges themselves (kinds ``human`` and ``routed``) live with the others, in
:mod:`activepref.judges.human`.
"""
