output "bucket" {
  description = "Checkpoint bucket name."
  value       = aws_s3_bucket.checkpoints.id
}

output "bucket_arn" {
  description = "Checkpoint bucket ARN."
  value       = aws_s3_bucket.checkpoints.arn
}

output "run_root_uri" {
  description = "Prefix to hand to cloudckpt: append a run name, e.g. CheckpointManager(\"<run_root_uri>exp1\")."
  value       = "s3://${aws_s3_bucket.checkpoints.id}/${var.run_prefix}"
}

output "kms_key_arn" {
  description = "ARN of the CMK encrypting the checkpoint bucket."
  value       = aws_kms_key.checkpoints.arn
}

output "access_log_bucket" {
  description = "Bucket receiving S3 server access logs of the checkpoint bucket."
  value       = aws_s3_bucket.access_logs.id
}

output "trainer_policy_arn" {
  description = "Managed policy for training nodes (attach it to your own role when create_roles = false)."
  value       = aws_iam_policy.trainer.arn
}

output "janitor_policy_arn" {
  description = "Managed policy for the retention / archival / GC job."
  value       = aws_iam_policy.janitor.arn
}

output "trainer_role_arn" {
  description = "Trainer role ARN (null when create_roles = false)."
  value       = one(aws_iam_role.trainer[*].arn)
}

output "janitor_role_arn" {
  description = "Janitor role ARN (null when create_roles = false)."
  value       = one(aws_iam_role.janitor[*].arn)
}

output "trainer_instance_profile" {
  description = "EC2 instance profile name for training nodes (null unless ec2.amazonaws.com is trusted)."
  value       = one(aws_iam_instance_profile.trainer[*].name)
}

output "janitor_instance_profile" {
  description = "EC2 instance profile name for the janitor (null unless ec2.amazonaws.com is trusted)."
  value       = one(aws_iam_instance_profile.janitor[*].name)
}
