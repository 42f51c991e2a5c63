"""Evaluation: model comparison, online A/B analysis, off-policy estimates, and the simulated-user
harness. The offline metrics themselves (full-ranking HR@K / NDCG@K, AUC, GAUC, calibration) are pure
functions in `feedcore.metrics`, which training imports too.

- `stats`: Welch, delta method (jackknife and Student's t for small arms), Fieller intervals of
  relative changes, CUPED, sample-ratio mismatch, Holm and Benjamini–Hochberg, bootstrap helpers;
- `compare`: `feed eval compare A B`: two engines on the same held-out data, paired bootstrap, a
  primary metric gating the others;
- `ab`: `feed ab analyze`: an experiment from the service's event log: a primary metric read at
  alpha that gates the exploratory ones (Benjamini–Hochberg), CUPED with per-user pre-periods,
  guardrails as non-inferiority tests;
- `ope`: IPS / SNIPS / doubly robust from logs with propensities (exploring arms), bootstrap
  intervals, effective sample sizes and warnings, bias-aware clipped intervals;
- `ope_log`: those estimators on the service's own log: each exploring session's logged ranking
  gives any Plackett–Luce policy's propensities (another arm's value weights);
- `simulator`: `feed ab simulate`: simulated users (held-out real interactions) against a real server,
  and the true value of a policy on the pages it served (for checking OPE);
- `synthetic`: logs with a planted truth for validating all of the above;
- `report`: markdown + PNG reports written atomically.
"""
