variable "project_id" {
  description = "Project that owns the bucket, the custom roles and the service accounts."
  type        = string
}

variable "location" {
  description = "Bucket location: a region next to the GPUs (e.g. \"US-CENTRAL1\") or a dual/multi-region if runs move between regions."
  type        = string
}

variable "bucket_name" {
  description = "Name of the checkpoint bucket (one bucket per run family). The access-log bucket is named \"<bucket_name>-access-logs\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{1,49}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name: 3-51 characters (room for the \"-access-logs\" suffix), lowercase letters, digits, hyphens, underscores."
  }
}

variable "run_prefix" {
  description = "Object-name prefix under which runs live; point cloudckpt at gs://<bucket>/<run_prefix><run-name>. Both roles are confined to it."
  type        = string
  default     = "runs/"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.'()-]+(/[A-Za-z0-9!_.'()-]+)*/$", var.run_prefix))
    error_message = "run_prefix: non-empty, no leading slash, ends with \"/\", no wildcards or quotes."
  }
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete a bucket that still holds checkpoints. Leave false outside of experiments."
  type        = bool
  default     = false
}

variable "kms_key_name" {
  description = <<-EOT
    Optional Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K, same location as the
    bucket) used as the bucket's default CMEK. null = Google-managed encryption keys (AES-256,
    always on). The module grants the project's Cloud Storage service agent encrypt/decrypt on the
    key; trainers and the janitor need no KMS permission (the service encrypts on their behalf).
  EOT
  type        = string
  default     = null
}

variable "noncurrent_version_retention_days" {
  description = <<-EOT
    Days a noncurrent object generation (left behind by a cloudckpt delete, retention, GC or a
    storage-class rewrite) is kept before lifecycle deletes it: the window in which a wrongly
    deleted checkpoint can be restored, paid for as storage of everything retention removed.
  EOT
  type        = number
  default     = 7

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "soft_delete_retention_days" {
  description = "Bucket soft-delete window (0 disables; else 7-90). Applies on top of versioning: a noncurrent generation deleted by lifecycle stays restorable (and billed) this much longer."
  type        = number
  default     = 7

  validation {
    condition     = var.soft_delete_retention_days == 0 || (var.soft_delete_retention_days >= 7 && var.soft_delete_retention_days <= 90)
    error_message = "soft_delete_retention_days must be 0 or between 7 and 90."
  }
}

variable "data_transitions" {
  description = <<-EOT
    SetStorageClass lifecycle rules for checkpoint *data* objects: names under run_prefix ending
    in ".bin" (step-*/data/<save_id>/<n>.bin). Manifests, tier.json, pins and archive pointers
    never match. All GCS classes read instantly, so cloudckpt loads from any of them (retrieval
    fees and minimum storage durations of 30/90/365 days apply). List in increasing age, each
    class colder than the previous one.
  EOT
  type = list(object({
    age_days      = number
    storage_class = string
  }))
  default = [
    { age_days = 30, storage_class = "NEARLINE" },
    { age_days = 90, storage_class = "COLDLINE" },
  ]

  validation {
    condition     = alltrue([for t in var.data_transitions : contains(["NEARLINE", "COLDLINE", "ARCHIVE"], t.storage_class)])
    error_message = "data_transitions: storage_class must be NEARLINE, COLDLINE or ARCHIVE."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Age after which incomplete XML-API multipart uploads are aborted. cloudckpt (gcsfs) uses JSON resumable uploads instead, which GCS expires by itself one week after they start."
  type        = number
  default     = 2
}

variable "trainer_members" {
  description = "Extra IAM members granted the trainer role on the run prefix, besides the trainer service account this module creates (e.g. \"principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/S\")."
  type        = list(string)
  default     = []
}

variable "janitor_members" {
  description = "Extra IAM members granted the janitor role on the run prefix, besides the janitor service account this module creates."
  type        = list(string)
  default     = []
}

variable "workload_identity_ksas" {
  description = "GKE Workload Identity: Kubernetes service accounts (\"namespace/name\") allowed to act as the trainer / janitor service accounts. Keys: \"trainer\", \"janitor\"."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.workload_identity_ksas : contains(["trainer", "janitor"], k) && can(regex("^[a-z0-9-]+/[a-z0-9-]+$", v))])
    error_message = "workload_identity_ksas: keys \"trainer\" / \"janitor\", values \"namespace/name\"."
  }
}

variable "role_id_prefix" {
  description = "Prefix of the project custom-role IDs (letters, digits, underscores, dots). Custom role IDs must be unique per project and are reserved for 7 days after deletion."
  type        = string
  default     = "cloudckpt"
}

variable "access_log_retention_days" {
  description = "Days usage/storage logs are kept in the access-log bucket."
  type        = number
  default     = 90
}

variable "labels" {
  description = "Labels added to the buckets."
  type        = map(string)
  default     = {}
}
