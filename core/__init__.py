"""The foundation: configuration, the domain model and its pure primitives. Imports nothing else of the project."""
