"""The core: plain-data stages and the batch processor. Never imports Faust."""
