"""Where and how the stages run: MLflow tracking, GPU slots, SLURM requests."""
