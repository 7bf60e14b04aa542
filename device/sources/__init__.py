"""Stream sources: threads that read hardware or files and hand frames to pipelines."""
