"""The non-forking RQ worker and the job it runs."""
