"""Where queued runs and jobs are trained: the local worker and its standby, the service's supervisor, the Ray executor, and GPU placement."""
