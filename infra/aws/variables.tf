variable "region" {
  description = "AWS region of the bucket (put it next to the GPUs: cross-region checkpoint traffic is slow and billed)."
  type        = string
}

variable "bucket_name" {
  description = "Name of the checkpoint bucket (one bucket per run family). The access-log bucket is named \"<bucket_name>-access-logs\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,49}[a-z0-9]$", var.bucket_name)) && !can(regex("\\.\\.", var.bucket_name))
    error_message = "bucket_name: 3-51 characters (room for the \"-access-logs\" suffix), lowercase letters, digits, dots and hyphens."
  }
}

variable "run_prefix" {
  description = "Key prefix under which runs live; point cloudckpt at s3://<bucket>/<run_prefix><run-name>. Both roles are confined to it."
  type        = string
  default     = "runs/"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.'()-]+(/[A-Za-z0-9!_.'()-]+)*/$", var.run_prefix))
    error_message = "run_prefix: non-empty, no leading slash, ends with \"/\", no wildcards (\"*\", \"?\")."
  }
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete a bucket that still holds checkpoints. Leave false outside of experiments."
  type        = bool
  default     = false
}

variable "kms_deletion_window_days" {
  description = "Waiting period before a scheduled deletion of the checkpoint CMK takes effect (7-30)."
  type        = number
  default     = 30
}

variable "kms_rotation_period_days" {
  description = "Automatic rotation period of the checkpoint CMK (90-2560 days)."
  type        = number
  default     = 365
}

variable "noncurrent_version_expiration_days" {
  description = <<-EOT
    Days a noncurrent object version (left behind by a cloudckpt delete, a retention run or an
    in-place storage-class change) is kept before S3 expires it. This is the window in which a
    wrongly deleted checkpoint can still be recovered; it is also paid for: every checkpoint that
    retention removes keeps costing storage for this many days.
  EOT
  type        = number
  default     = 7

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Abort multipart uploads still incomplete this many days after initiation (an upload of a node that died mid-save). Must exceed the longest save."
  type        = number
  default     = 2

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "abort_incomplete_multipart_days must be at least 1."
  }
}

variable "transitions" {
  description = <<-EOT
    Age-based storage-class transitions of objects under run_prefix. S3 lifecycle filters only
    by literal prefix, tags and size, so these rules cannot single out step-*/data/ objects:
    manifests and metadata larger than transition_min_object_size_bytes move too. That is
    harmless for the instant-retrieval classes allowed by default (STANDARD_IA, ONEZONE_IA,
    INTELLIGENT_TIERING, GLACIER_IR). GLACIER and DEEP_ARCHIVE make objects unreadable until
    restored; a manifest moved there hides its checkpoint from cloudckpt, so they are refused
    unless allow_offline_transitions is set. Prefer cloudckpt's own ArchivePolicy for those
    tiers: it moves data objects only and records the tier.
  EOT
  type = list(object({
    days          = number
    storage_class = string
  }))
  default = [
    { days = 30, storage_class = "STANDARD_IA" },
    { days = 90, storage_class = "GLACIER_IR" },
  ]

  validation {
    condition = alltrue([for t in var.transitions : contains(
      ["STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"],
    t.storage_class)])
    error_message = "transitions: storage_class must be one of STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE."
  }

  validation {
    condition     = alltrue([for t in var.transitions : t.days >= (contains(["STANDARD_IA", "ONEZONE_IA"], t.storage_class) ? 30 : 0)])
    error_message = "transitions: S3 requires objects to be at least 30 days old before STANDARD_IA / ONEZONE_IA."
  }
}

variable "allow_offline_transitions" {
  description = "Permit GLACIER / DEEP_ARCHIVE in `transitions`. Only for buckets whose run_prefix holds nothing cloudckpt must list or load without a restore."
  type        = bool
  default     = false
}

variable "transition_min_object_size_bytes" {
  description = "Only objects larger than this are transitioned (keeps pins, tier.json and archive pointers, and most manifests, in STANDARD; S3 does not transition objects under 128 KiB by default anyway)."
  type        = number
  default     = 131072
}

variable "enforce_create_only_manifests" {
  description = <<-EOT
    Bucket-policy guard: deny PutObject / CompleteMultipartUpload / CopyObject onto
    <run_prefix>*/manifest.json unless the request carries If-None-Match (cloudckpt's commit
    always does). A zombie or buggy writer can then never replace a committed manifest, whatever
    its IAM rights. Turn off only to use `cloudckpt.save(..., overwrite=True)` under run_prefix.
  EOT
  type        = bool
  default     = true
}

variable "trainer_storage_classes" {
  description = "Storage classes a trainer may write with (x-amz-storage-class on PutObject / CreateMultipartUpload). Requests without the header (STANDARD) are always allowed."
  type        = list(string)
  default     = ["STANDARD", "INTELLIGENT_TIERING"]
}

variable "janitor_storage_classes" {
  description = "Storage classes the janitor may set (cloudckpt ArchivePolicy in place = CopyObject onto itself with a new class; STANDARD to bring a checkpoint back)."
  type        = list(string)
  default     = ["STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"]
}

variable "create_roles" {
  description = "Create the trainer and janitor IAM roles (and instance profiles). When false only the two managed policies are created; attach them to your own roles (EKS IRSA / Pod Identity, SageMaker, Batch)."
  type        = bool
  default     = true
}

variable "trusted_services" {
  description = "AWS service principals allowed to assume the roles (ec2.amazonaws.com for instance profiles, pods.eks.amazonaws.com for EKS Pod Identity, sagemaker.amazonaws.com, ...)."
  type        = list(string)
  default     = ["ec2.amazonaws.com"]
}

variable "trusted_role_arns" {
  description = "IAM principals (role ARNs) allowed to assume the roles, e.g. a CI role that runs the janitor."
  type        = list(string)
  default     = []
}

variable "access_log_retention_days" {
  description = "Days S3 server access logs are kept in the access-log bucket."
  type        = number
  default     = 90
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
