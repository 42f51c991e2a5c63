"""What every part of the engine shares: canonical tables, dataset loaders, splits, features, configs."""
