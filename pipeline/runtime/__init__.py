"""The runtime layer: the only part of the framework that imports Faust."""
