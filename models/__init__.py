"""Shipped policies (issue 3). None yet."""
