"""The bottom of the application: reading the slice store, and finding the sample data."""
