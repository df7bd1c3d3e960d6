"""dampit.metrics: scores, error rates and the verification report.

- ``scoring``: trial scores (whole-utterance cosine, the closed-form
  multi-crop mean); ``asnorm``: adaptive symmetric score normalisation;
- ``error_rates``: EER, minDCF, DET curve, operating points;
- ``plots``: DET curve and score histogram PNGs;
- ``report``: ``write_report``, a scored trial list's metrics, plots and
  score file.
"""
