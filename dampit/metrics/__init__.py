"""Verification scoring (``multicrop``, ``asnorm``), error rates
(``error_rates``), embedding stores and plots."""
