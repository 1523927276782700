# One GCS bucket per run family for cloudckpt checkpoints, with the two identities that use it.
#
# Layout cloudckpt writes under gs://<bucket>/<run_prefix><run>/ (see infra/README.md):
#   step-000000000100/data/<save_id>/<n>.bin   data objects, written first
#   step-000000000100/manifest.json            commit record, written last, ifGenerationMatch=0
#   step-000000000100/tier.json, archived/step-....json, pins/step-...
#
# Identities: "trainer" (training nodes: read, list, create objects; no delete, hence no
# overwrite either: GCS requires storage.objects.delete to replace an existing object) and
# "janitor" (retention, archival, GC: adds delete, which also covers the in-place rewrite that
# changes a storage class).

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

locals {
  log_bucket = "${var.bucket_name}-access-logs"

  # Custom role IDs allow [a-zA-Z0-9_.] and 64 characters.
  bucket_slug = length(var.bucket_name) <= 40 ? replace(var.bucket_name, "-", "_") : "${substr(replace(var.bucket_name, "-", "_"), 0, 33)}_${substr(sha1(var.bucket_name), 0, 6)}"
  # Service-account IDs allow 6-30 characters [a-z0-9-]: derive a stable short ID per bucket.
  sa_stem = "ckpt-${substr(sha1(var.bucket_name), 0, 8)}"

  # One condition serves both kinds of check a role binding meets: object operations carry
  # the object's resource name; objects.list is checked against the bucket and carries the
  # requested prefix as the objectListPrefix API attribute.
  prefix_condition = join(" || ", [
    "resource.name.startsWith(\"projects/_/buckets/${var.bucket_name}/objects/${var.run_prefix}\")",
    "api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${var.run_prefix}\")",
  ])

  # for_each keys must be known at plan time; the service-account emails are not until apply.
  trainer_members = merge({ "module-sa" = "serviceAccount:${google_service_account.trainer.email}" }, { for m in var.trainer_members : m => m })
  janitor_members = merge({ "module-sa" = "serviceAccount:${google_service_account.janitor.email}" }, { for m in var.janitor_members : m => m })

  # GCS SetStorageClass rules must move objects to a colder class: rule i applies to objects
  # still in STANDARD or in a class of an earlier rule.
  transition_rules = [for i, t in var.data_transitions : {
    age_days      = t.age_days
    storage_class = t.storage_class
    from          = concat(["STANDARD"], [for j, u in var.data_transitions : u.storage_class if j < i])
  }]
}

# ---------------------------------------------------------------------------------------------
# Optional CMEK: the Cloud Storage service agent must be able to use the key before the bucket
# names it as default.
# ---------------------------------------------------------------------------------------------
resource "google_kms_crypto_key_iam_member" "gcs_service_agent" {
  count         = var.kms_key_name == null ? 0 : 1
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# ---------------------------------------------------------------------------------------------
# Access-log bucket: GCS usage and storage logs of the checkpoint bucket.
# ---------------------------------------------------------------------------------------------
resource "google_storage_bucket" "access_logs" {
  # checkov:skip=CKV_GCP_62:This is the usage-log target; logging it into itself would loop. Data Access audit logs cover reads of it if needed.
  name                        = local.log_bucket
  project                     = var.project_id
  location                    = var.location
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = var.access_log_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 1
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }
}

# The usage-log writer identity documented for GCS usage logs.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

# ---------------------------------------------------------------------------------------------
# Checkpoint bucket
# ---------------------------------------------------------------------------------------------
resource "google_storage_bucket" "checkpoints" {
  name                        = var.bucket_name
  project                     = var.project_id
  location                    = var.location
  storage_class               = "STANDARD"
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true # IAM only, no object ACLs (also required for IAM conditions)
  public_access_prevention    = "enforced"
  labels                      = var.labels

  # Deletes by cloudckpt (retention: manifest first, then data; GC) and storage-class rewrites
  # leave noncurrent generations; the lifecycle rule below removes them after the window.
  versioning {
    enabled = true
  }

  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_retention_days * 86400
  }

  # null: Google-managed encryption keys (AES-256), no configuration needed.
  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "gcs/${var.bucket_name}"
  }

  # Tier *data* objects only (.bin under run_prefix): manifests and metadata stay STANDARD, so
  # listing and restore never pay retrieval fees for them. No rule ever deletes a live object:
  # which checkpoints live is cloudckpt's retention policy's decision alone.
  dynamic "lifecycle_rule" {
    for_each = local.transition_rules
    content {
      condition {
        age                   = lifecycle_rule.value.age_days
        matches_prefix        = [var.run_prefix]
        matches_suffix        = [".bin"]
        matches_storage_class = lifecycle_rule.value.from
        with_state            = "LIVE"
      }
      action {
        type          = "SetStorageClass"
        storage_class = lifecycle_rule.value.storage_class
      }
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # XML-API multipart uploads (not used by cloudckpt/gcsfs, whose JSON resumable sessions are
  # not objects and expire by themselves a week after they start).
  lifecycle_rule {
    condition {
      age = var.abort_incomplete_multipart_days
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.gcs_service_agent]
}

# ---------------------------------------------------------------------------------------------
# Identities and custom roles, bound on the bucket with a run-prefix IAM condition.
# ---------------------------------------------------------------------------------------------
resource "google_service_account" "trainer" {
  project      = var.project_id
  account_id   = "${local.sa_stem}-trainer"
  display_name = "cloudckpt trainer for gs://${var.bucket_name}/${var.run_prefix}"
}

resource "google_service_account" "janitor" {
  project      = var.project_id
  account_id   = "${local.sa_stem}-janitor"
  display_name = "cloudckpt janitor for gs://${var.bucket_name}/${var.run_prefix}"
}

resource "google_project_iam_custom_role" "trainer" {
  project     = var.project_id
  role_id     = "${var.role_id_prefix}.${local.bucket_slug}.trainer"
  title       = "cloudckpt trainer (${var.bucket_name})"
  description = "Read, list and create checkpoint objects. No delete, so no overwrite."
  permissions = [
    "storage.objects.get",    # GET, ranged GET, metadata (exists/stat)
    "storage.objects.list",   # run listing
    "storage.objects.create", # simple and resumable uploads, ifGenerationMatch=0 commits
  ]
}

resource "google_project_iam_custom_role" "janitor" {
  project     = var.project_id
  role_id     = "${var.role_id_prefix}.${local.bucket_slug}.janitor"
  title       = "cloudckpt janitor (${var.bucket_name})"
  description = "Trainer rights plus delete: retention, GC, and storage-class rewrites (a rewrite replaces the object)."
  permissions = [
    "storage.objects.get",
    "storage.objects.list",
    "storage.objects.create",
    "storage.objects.delete",
  ]
}

resource "google_storage_bucket_iam_member" "trainer" {
  for_each = local.trainer_members
  bucket   = google_storage_bucket.checkpoints.name
  role     = google_project_iam_custom_role.trainer.name
  member   = each.value

  condition {
    title       = "cloudckpt-run-prefix"
    description = "Objects under ${var.run_prefix} and listings of that prefix only"
    expression  = local.prefix_condition
  }
}

resource "google_storage_bucket_iam_member" "janitor" {
  for_each = local.janitor_members
  bucket   = google_storage_bucket.checkpoints.name
  role     = google_project_iam_custom_role.janitor.name
  member   = each.value

  condition {
    title       = "cloudckpt-run-prefix"
    description = "Objects under ${var.run_prefix} and listings of that prefix only"
    expression  = local.prefix_condition
  }
}

# GKE Workload Identity: let a Kubernetes service account act as the trainer / janitor.
resource "google_service_account_iam_member" "workload_identity" {
  for_each           = var.workload_identity_ksas
  service_account_id = each.key == "trainer" ? google_service_account.trainer.name : google_service_account.janitor.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${each.value}]"
}
