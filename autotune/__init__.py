"""The application: the CLI, the live run and its tuning loop, the dashboard, operator identity."""
