"""Evaluation: offline metrics and model comparison, online A/B analysis, off-policy estimates, and
the simulated-user harness.

- `metrics`: full-ranking HR@K / NDCG@K, AUC, GAUC, weighted AUC, calibration (pure functions);
- `stats`: Welch, delta method, CUPED, sample-ratio mismatch, bootstrap helpers;
- `compare`: `feed eval compare A B`: two engines on the same held-out data, paired bootstrap;
- `ab`: `feed ab analyze`: an experiment from the service's event log;
- `ope`: IPS / SNIPS / doubly robust from logs with propensities (exploring arms);
- `simulator`: `feed ab simulate`: simulated users (held-out real interactions) against a real server;
- `synthetic`: logs with a planted truth for validating all of the above;
- `report`: markdown + PNG reports written atomically.
"""
