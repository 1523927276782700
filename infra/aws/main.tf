# One S3 bucket per run family for cloudckpt checkpoints, with the two identities that use it.
#
# Layout cloudckpt writes under s3://<bucket>/<run_prefix><run>/ (see infra/README.md):
#   step-000000000100/data/<save_id>/<n>.bin   data objects, written first
#   step-000000000100/manifest.json            commit record, written last, If-None-Match: *
#   step-000000000100/tier.json, archived/step-....json, pins/step-...
#
# Identities: "trainer" (training nodes: read, list, create objects; no delete) and "janitor"
# (retention, archival and GC: adds delete and storage-class changes). Neither may delete
# object versions, so versioning below is a real safety net against both.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  log_bucket  = "${var.bucket_name}-access-logs"
  bucket_arn  = "arn:${local.partition}:s3:::${var.bucket_name}"
  prefix_arn  = "${local.bucket_arn}/${var.run_prefix}*"
  s3_endpoint = "s3.${var.region}.amazonaws.com"

  offline_classes = ["GLACIER", "DEEP_ARCHIVE"]
  uses_offline    = anytrue([for t in var.transitions : contains(local.offline_classes, t.storage_class)])
}

# ---------------------------------------------------------------------------------------------
# Encryption key: a customer-managed KMS key with automatic rotation. The key policy delegates
# to IAM (the account root statement); the trainer/janitor policies below grant its use only
# through S3 in this region.
# ---------------------------------------------------------------------------------------------
resource "aws_kms_key" "checkpoints" {
  description             = "cloudckpt checkpoints in s3://${var.bucket_name}"
  enable_key_rotation     = true
  rotation_period_in_days = var.kms_rotation_period_days
  deletion_window_in_days = var.kms_deletion_window_days
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersKeyThroughIAM"
      Effect    = "Allow"
      Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

resource "aws_kms_alias" "checkpoints" {
  name          = "alias/cloudckpt-${var.bucket_name}"
  target_key_id = aws_kms_key.checkpoints.key_id
}

# ---------------------------------------------------------------------------------------------
# Checkpoint bucket
# ---------------------------------------------------------------------------------------------
resource "aws_s3_bucket" "checkpoints" {
  # checkov:skip=CKV_AWS_144:Cross-region replication doubles the cost of every checkpoint and lags behind the commit; checkpoints are regenerable and kept in-region next to the GPUs. Add a replication configuration where a regional outage must not lose a run.
  # checkov:skip=CKV2_AWS_62:Event notifications have no consumer here; cloudckpt discovers checkpoints by LIST + manifest reads, not events.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  rule {
    object_ownership = "BucketOwnerEnforced" # ACLs off: access is IAM + bucket policy only
  }
}

resource "aws_s3_bucket_public_access_block" "checkpoints" {
  bucket                  = aws_s3_bucket.checkpoints.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.checkpoints.arn
    }
    # One data key per bucket instead of a KMS call per object: a save writes hundreds of
    # 16 MiB objects in parallel, which would otherwise hit KMS request quotas.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "checkpoints" {
  bucket        = aws_s3_bucket.checkpoints.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3/${var.bucket_name}/"
}

resource "aws_s3_bucket_lifecycle_configuration" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id

  # Versioning must be on before noncurrent-version rules mean anything.
  depends_on = [aws_s3_bucket_versioning.checkpoints]

  # A node killed mid-save leaves a multipart upload whose parts are billed but invisible.
  # cloudckpt's GC (janitor) aborts those older than its grace period; this rule is the
  # backstop when no GC runs. Whole bucket: stale uploads are never useful anywhere.
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  # Deletes by cloudckpt (retention: manifest first, then data; GC of orphans) and in-place
  # storage-class changes leave noncurrent versions; expire them after the recovery window,
  # and clean up delete markers that no longer shadow anything. No rule here ever expires a
  # *current* object: which checkpoints live is cloudckpt's retention policy's decision alone.
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  # Age-based tiering under run_prefix (see var.transitions for why manifests cannot be
  # excluded). A static rule (checkov cannot see past mixed static/dynamic rule blocks): with
  # no transitions it is Disabled, and the noncurrent expiration (the same as the bucket-wide
  # rule above) gives it the action S3 requires of every rule.
  rule {
    id     = "tier-checkpoints-by-age"
    status = length(var.transitions) > 0 ? "Enabled" : "Disabled"
    filter {
      and {
        prefix                   = var.run_prefix
        object_size_greater_than = var.transition_min_object_size_bytes
      }
    }
    dynamic "transition" {
      for_each = var.transitions
      content {
        days          = transition.value.days
        storage_class = transition.value.storage_class
      }
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
  }

  lifecycle {
    precondition {
      condition     = var.allow_offline_transitions || !local.uses_offline
      error_message = "transitions uses GLACIER or DEEP_ARCHIVE: manifests under run_prefix would become unreadable and their checkpoints invisible to cloudckpt. Use cloudckpt's ArchivePolicy for those tiers, or set allow_offline_transitions = true."
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.checkpoints.arn, "${aws_s3_bucket.checkpoints.arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyOldTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.checkpoints.arn, "${aws_s3_bucket.checkpoints.arn}/*"]
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  # A committed manifest is never overwritten: PutObject and CompleteMultipartUpload onto
  # */manifest.json must carry If-None-Match (s3:ObjectCreationOperation is false for
  # CreateMultipartUpload / UploadPart / UploadPartCopy, which cannot carry the header and
  # are left alone). A plain CopyObject onto a manifest is refused as well.
  dynamic "statement" {
    for_each = var.enforce_create_only_manifests ? [1] : []
    content {
      sid     = "DenyManifestWritesWithoutIfNoneMatch"
      effect  = "Deny"
      actions = ["s3:PutObject"]
      principals {
        type        = "*"
        identifiers = ["*"]
      }
      resources = ["${aws_s3_bucket.checkpoints.arn}/${var.run_prefix}*/manifest.json"]
      condition {
        test     = "Null"
        variable = "s3:if-none-match"
        values   = ["true"]
      }
      condition {
        test     = "Bool"
        variable = "s3:ObjectCreationOperation"
        values   = ["true"]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "checkpoints" {
  bucket = aws_s3_bucket.checkpoints.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.checkpoints]
}

# ---------------------------------------------------------------------------------------------
# Access-log bucket (S3 server access logs of the checkpoint bucket)
# ---------------------------------------------------------------------------------------------
resource "aws_s3_bucket" "access_logs" {
  # checkov:skip=CKV_AWS_145:S3 server access logging can only deliver to a target bucket encrypted with SSE-S3 (AES256); SSE-KMS targets are not supported by the log delivery service.
  # checkov:skip=CKV_AWS_144:Access logs are kept for a bounded period in-region; cross-region replication of them is not needed.
  # checkov:skip=CKV2_AWS_62:Nothing consumes events of the access-log bucket.
  bucket        = local.log_bucket
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket                  = aws_s3_bucket.access_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket     = aws_s3_bucket.access_logs.id
  depends_on = [aws_s3_bucket_versioning.access_logs]

  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.access_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "access_logs" {
  statement {
    sid     = "S3ServerAccessLogDelivery"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    resources = ["${aws_s3_bucket.access_logs.arn}/s3/${var.bucket_name}/*"]
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.checkpoints.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.access_logs.arn, "${aws_s3_bucket.access_logs.arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket     = aws_s3_bucket.access_logs.id
  policy     = data.aws_iam_policy_document.access_logs.json
  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}

# Shared by both roles: list the run prefix and in-flight uploads, use the bucket's KMS key.
data "aws_iam_policy_document" "run_base" {
  # LIST under the run prefix only. s3:prefix also governs whether a GET/HEAD of a missing
  # key returns 404 (what cloudckpt's exists()/NotFound rely on) instead of 403: S3 evaluates
  # s3:ListBucket with the object key as the prefix for that decision.
  statement {
    sid       = "ListRunPrefix"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.run_prefix}*"]
    }
  }

  # Listing in-flight multipart uploads has no prefix condition key in IAM; it reveals only
  # key names of unfinished uploads in this bucket.
  statement {
    sid       = "ListMultipartUploads"
    actions   = ["s3:ListBucketMultipartUploads"]
    resources = [local.bucket_arn]
  }

  statement {
    sid       = "UseCheckpointKeyThroughS3"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.checkpoints.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_endpoint]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Trainer: what a training node running CheckpointManager(..., keep_last=None) needs.
# ---------------------------------------------------------------------------------------------
data "aws_iam_policy_document" "trainer" {
  source_policy_documents = [data.aws_iam_policy_document.run_base.json]

  statement {
    sid = "ReadRunObjects"
    actions = [
      "s3:GetObject", # GET, ranged GET, HEAD
      "s3:ListMultipartUploadParts",
      "s3:AbortMultipartUpload", # a failed streamed write aborts its own upload
    ]
    resources = [local.prefix_arn]
  }

  # PutObject covers PutObject, CreateMultipartUpload, UploadPart and CompleteMultipartUpload
  # (If-None-Match commits included). The storage-class condition keeps tiering a janitor job.
  statement {
    sid       = "WriteRunObjects"
    actions   = ["s3:PutObject"]
    resources = [local.prefix_arn]
    condition {
      test     = "StringEqualsIfExists"
      variable = "s3:x-amz-storage-class"
      values   = var.trainer_storage_classes
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Janitor: retention, archival (in-place storage-class change), GC. Adds DeleteObject and
# storage-class changes; still cannot delete object versions or touch bucket configuration.
# ---------------------------------------------------------------------------------------------
data "aws_iam_policy_document" "janitor" {
  source_policy_documents = [data.aws_iam_policy_document.run_base.json]

  statement {
    sid = "ManageRunObjects"
    actions = [
      "s3:GetObject",
      "s3:DeleteObject", # retention (manifest first, then data), GC of orphans, unpin
      "s3:ListMultipartUploadParts",
      "s3:AbortMultipartUpload", # GC of stale uploads
      "s3:RestoreObject",        # rehydrate GLACIER / DEEP_ARCHIVE checkpoints
    ]
    resources = [local.prefix_arn]
  }

  # CopyObject onto itself with a new StorageClass (ArchivePolicy in place), tier.json,
  # archived/ pointers. Only the configured storage classes.
  statement {
    sid       = "WriteRunObjectsAndTiers"
    actions   = ["s3:PutObject"]
    resources = [local.prefix_arn]
    condition {
      test     = "StringEqualsIfExists"
      variable = "s3:x-amz-storage-class"
      values   = var.janitor_storage_classes
    }
  }
}

resource "aws_iam_policy" "trainer" {
  name        = "cloudckpt-trainer-${var.bucket_name}"
  description = "cloudckpt training nodes: read/list/write s3://${var.bucket_name}/${var.run_prefix}, no delete"
  policy      = data.aws_iam_policy_document.trainer.json
}

resource "aws_iam_policy" "janitor" {
  name        = "cloudckpt-janitor-${var.bucket_name}"
  description = "cloudckpt retention/archival/GC: trainer rights plus delete and storage-class changes under s3://${var.bucket_name}/${var.run_prefix}"
  policy      = data.aws_iam_policy_document.janitor.json
}

data "aws_iam_policy_document" "assume" {
  dynamic "statement" {
    for_each = length(var.trusted_services) > 0 ? [1] : []
    content {
      sid     = "TrustedServices"
      actions = ["sts:AssumeRole", "sts:TagSession"]
      principals {
        type        = "Service"
        identifiers = var.trusted_services
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.trusted_role_arns) > 0 ? [1] : []
    content {
      sid     = "TrustedRoles"
      actions = ["sts:AssumeRole"]
      principals {
        type        = "AWS"
        identifiers = var.trusted_role_arns
      }
    }
  }
}

resource "aws_iam_role" "trainer" {
  count              = var.create_roles ? 1 : 0
  name               = "cloudckpt-trainer-${var.bucket_name}"
  description        = "cloudckpt training nodes for s3://${var.bucket_name}/${var.run_prefix}"
  assume_role_policy = data.aws_iam_policy_document.assume.json

  lifecycle {
    precondition {
      condition     = length(var.trusted_services) + length(var.trusted_role_arns) > 0
      error_message = "create_roles needs at least one of trusted_services / trusted_role_arns."
    }
  }
}

resource "aws_iam_role_policy_attachment" "trainer" {
  count      = var.create_roles ? 1 : 0
  role       = aws_iam_role.trainer[0].name
  policy_arn = aws_iam_policy.trainer.arn
}

resource "aws_iam_instance_profile" "trainer" {
  count = var.create_roles && contains(var.trusted_services, "ec2.amazonaws.com") ? 1 : 0
  name  = "cloudckpt-trainer-${var.bucket_name}"
  role  = aws_iam_role.trainer[0].name
}

resource "aws_iam_role" "janitor" {
  count              = var.create_roles ? 1 : 0
  name               = "cloudckpt-janitor-${var.bucket_name}"
  description        = "cloudckpt retention / archival / GC for s3://${var.bucket_name}/${var.run_prefix}"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

resource "aws_iam_role_policy_attachment" "janitor" {
  count      = var.create_roles ? 1 : 0
  role       = aws_iam_role.janitor[0].name
  policy_arn = aws_iam_policy.janitor.arn
}

resource "aws_iam_instance_profile" "janitor" {
  count = var.create_roles && contains(var.trusted_services, "ec2.amazonaws.com") ? 1 : 0
  name  = "cloudckpt-janitor-${var.bucket_name}"
  role  = aws_iam_role.janitor[0].name
}
