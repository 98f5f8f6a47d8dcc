"""PPO training and policy comparison (issue 3). Not built yet."""
