"""Fine-tuning the classifier on the cleaned, balanced manifest (issue #6)."""
