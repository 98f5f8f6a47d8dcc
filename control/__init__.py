"""Pure decisions: the guard, the rule-based policies (HPA, threshold, static) and the tuner that wraps every policy. No I/O."""
