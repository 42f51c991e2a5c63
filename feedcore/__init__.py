"""What every part of the engine shares: canonical tables, dataset loaders, splits, features, configs,
the event log's record format and reader (`events`) and the offline metrics (`metrics`)."""
