"""The ensemble of the best trials: selection, bundles on disk, and serving them."""
