"""PPO training, policy comparison and calibration of the rule-based policies, on simulated load."""
