"""The benchmark harness: grids of cells, the training loop, metrics, the results store and the leaderboard."""
