"""Studies: the shape all share, one file per family, and running them (workers, resumes)."""
