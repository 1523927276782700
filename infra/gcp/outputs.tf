output "bucket" {
  description = "Checkpoint bucket name."
  value       = google_storage_bucket.checkpoints.name
}

output "run_root_uri" {
  description = "Prefix to hand to cloudckpt: append a run name, e.g. CheckpointManager(\"<run_root_uri>exp1\")."
  value       = "gs://${google_storage_bucket.checkpoints.name}/${var.run_prefix}"
}

output "access_log_bucket" {
  description = "Bucket receiving usage and storage logs of the checkpoint bucket."
  value       = google_storage_bucket.access_logs.name
}

output "trainer_service_account" {
  description = "Email of the trainer service account (attach it to training VMs / node pools, or map a KSA to it)."
  value       = google_service_account.trainer.email
}

output "janitor_service_account" {
  description = "Email of the janitor service account (retention / archival / GC job)."
  value       = google_service_account.janitor.email
}

output "trainer_role" {
  description = "Custom role granted to trainers on the bucket (with the run-prefix condition)."
  value       = google_project_iam_custom_role.trainer.name
}

output "janitor_role" {
  description = "Custom role granted to the janitor on the bucket (with the run-prefix condition)."
  value       = google_project_iam_custom_role.janitor.name
}

output "prefix_condition" {
  description = "The IAM condition expression both bindings carry (reuse it for other members)."
  value       = local.prefix_condition
}
