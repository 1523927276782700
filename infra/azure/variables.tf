variable "subscription_id" {
  description = "Subscription to deploy into (null: ARM_SUBSCRIPTION_ID or the Azure CLI default)."
  type        = string
  default     = null
}

variable "location" {
  description = "Azure region (put it next to the GPUs)."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group holding the account, identities and custom roles."
  type        = string
}

variable "create_resource_group" {
  description = "Create resource_group_name (false: it already exists)."
  type        = bool
  default     = true
}

variable "storage_account_name" {
  description = "Storage account name (3-24 lowercase letters and digits, globally unique). One account + container per run family."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name: 3-24 lowercase letters and digits."
  }
}

variable "container_name" {
  description = "Blob container for checkpoints; cloudckpt URIs are az://<container>/<run_prefix><run>."
  type        = string
  default     = "checkpoints"

  validation {
    condition     = can(regex("^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$", var.container_name))
    error_message = "container_name: 3-63 lowercase letters, digits and single hyphens."
  }
}

variable "run_prefix" {
  description = "Blob-name prefix under which runs live. Role assignments are confined to it by an ABAC condition."
  type        = string
  default     = "runs/"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.()-]+(/[A-Za-z0-9!_.()-]+)*/$", var.run_prefix))
    error_message = "run_prefix: non-empty, no leading slash, ends with \"/\", no wildcards or quotes."
  }
}

variable "replication_type" {
  description = "Account replication: ZRS keeps three synchronous copies across zones in the region. GZRS / RAGZRS add an asynchronous copy in the paired region (twice the storage cost, and it lags behind commits)."
  type        = string
  default     = "ZRS"

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "RAGRS", "GZRS", "RAGZRS"], var.replication_type)
    error_message = "replication_type: LRS, ZRS, GRS, RAGRS, GZRS or RAGZRS."
  }
}

variable "blob_soft_delete_days" {
  description = "Days a deleted (or overwritten) blob stays recoverable: the window to undo a wrong retention / GC decision, paid for as storage of everything deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.blob_soft_delete_days >= 1 && var.blob_soft_delete_days <= 365
    error_message = "blob_soft_delete_days must be between 1 and 365."
  }
}

variable "container_soft_delete_days" {
  description = "Days a deleted container stays recoverable."
  type        = number
  default     = 7

  validation {
    condition     = var.container_soft_delete_days >= 1 && var.container_soft_delete_days <= 365
    error_message = "container_soft_delete_days must be between 1 and 365."
  }
}

variable "blob_versioning_enabled" {
  description = "Keep previous blob versions on overwrite/delete (on top of soft delete). Off by default: cloudckpt never overwrites committed objects, and soft delete already covers deletes."
  type        = bool
  default     = false
}

variable "noncurrent_version_days" {
  description = "Days after which previous blob versions and snapshots are deleted by the lifecycle policy."
  type        = number
  default     = 7
}

variable "tier_to_cool_after_days" {
  description = "Move blobs under run_prefix to Cool this many days after their last modification (null: never). Cool is online: cloudckpt lists and loads as usual."
  type        = number
  default     = 30
}

variable "tier_to_cold_after_days" {
  description = "Move blobs under run_prefix to Cold after this many days (null: never). Cold is online."
  type        = number
  default     = 90
}

variable "tier_to_archive_after_days" {
  description = <<-EOT
    Move blobs under run_prefix to Archive after this many days (null: never, the default).
    Archive is OFFLINE and Azure lifecycle filters cannot exclude manifest.json (prefix and
    index-tag filters only), so archived manifests make their checkpoints invisible to cloudckpt
    until rehydrated. Prefer cloudckpt's ArchivePolicy(storage_class="Archive"), which moves
    data blobs only and records the tier. Set this only for prefixes nothing lists or loads.
  EOT
  type        = number
  default     = null
}

variable "network_default_action" {
  description = "Storage firewall default for requests not matched by allowed_subnet_ids / allowed_ip_ranges. Keep Deny."
  type        = string
  default     = "Deny"

  validation {
    condition     = contains(["Allow", "Deny"], var.network_default_action)
    error_message = "network_default_action: Allow or Deny."
  }
}

variable "allowed_subnet_ids" {
  description = "Subnets (with the Microsoft.Storage service endpoint) whose training nodes / janitor may reach the account."
  type        = list(string)
  default     = []
}

variable "allowed_ip_ranges" {
  description = "Public IPs / CIDRs (no private ranges) allowed through the storage firewall, e.g. the operator's egress for Terraform data-plane calls."
  type        = list(string)
  default     = []
}

variable "public_network_access_enabled" {
  description = "Keep the public endpoint (filtered by the firewall above). false requires private endpoints, which this module does not create (they need your VNet and private DNS zone)."
  type        = bool
  default     = true
}

variable "customer_managed_key" {
  description = <<-EOT
    Optional customer-managed key for the account: the ARM ID of a Key Vault (RBAC authorization,
    purge protection on) and the name of an RSA key in it (null = Microsoft-managed keys);
    infrastructure encryption adds a second, independent AES-256 layer in both cases. The module
    grants the account's system-assigned identity "Key Vault Crypto Service Encryption User" on
    the key and attaches it without a version, so key rotation is picked up automatically. The
    operator running Terraform needs read access to the key (e.g. Key Vault Crypto User).
  EOT
  type = object({
    key_vault_id = string
    key_name     = string
  })
  default = null
}

variable "log_analytics_workspace_id" {
  description = "Optional Log Analytics workspace receiving the blob service's StorageRead/StorageWrite/StorageDelete resource logs (null: no diagnostic setting)."
  type        = string
  default     = null
}

variable "trainer_principal_ids" {
  description = "Extra Entra object IDs (managed identities, service principals, groups) granted the trainer role, besides the trainer identity this module creates."
  type        = list(string)
  default     = []
}

variable "janitor_principal_ids" {
  description = "Extra Entra object IDs granted the janitor role, besides the janitor identity this module creates."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
