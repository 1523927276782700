# One storage account + blob container per run family for cloudckpt checkpoints, with the two
# identities that use it.
#
# Layout cloudckpt writes under az://<container>/<run_prefix><run>/ (see infra/README.md):
#   step-000000000100/data/<save_id>/<n>.bin   data blobs, written first (staged blocks + commit)
#   step-000000000100/manifest.json            commit record, written last, If-None-Match: *
#   step-000000000100/tier.json, archived/step-....json, pins/step-...
#
# Identities: "trainer" (training nodes: read, list, create/overwrite blobs under the run
# prefix; no delete, no Set Blob Tier) and "janitor" (retention, archival, GC: adds delete and
# tier changes). Both are Entra ID identities: shared keys and SAS-by-account-key are off.

locals {
  resource_group_name = var.create_resource_group ? azurerm_resource_group.this[0].name : data.azurerm_resource_group.this[0].name
  resource_group_id   = var.create_resource_group ? azurerm_resource_group.this[0].id : data.azurerm_resource_group.this[0].id
  container_id        = "${azurerm_storage_account.this.id}/blobServices/default/containers/${azurerm_storage_container.checkpoints.name}"

  blobs     = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
  blob_path = "@Resource[${local.blobs}:path]"

  # Azure ABAC conditions (role-assignment conditions, version 2.0). Each block reads: "if the
  # request is one of these actions, it must satisfy this expression".
  #   1. read (not list), write, add[, delete]: the blob path is under run_prefix;
  #   2. list: the requested prefix is under run_prefix (a list without a prefix is refused);
  #   3. (trainer) Set Blob Tier: only outside run_prefix, where block 1 refuses every write:
  #      together, never. Tier changes are the janitor's.
  abac_path_actions = {
    trainer = ["read_not_list", "write", "add"]
    janitor = ["read_not_list", "write", "add", "delete"]
  }
  abac_action_clause = {
    read_not_list = "!(ActionMatches{'${local.blobs}/read'} AND NOT SubOperationMatches{'Blob.List'})"
    write         = "!(ActionMatches{'${local.blobs}/write'})"
    add           = "!(ActionMatches{'${local.blobs}/add/action'})"
    delete        = "!(ActionMatches{'${local.blobs}/delete'})"
  }
  abac_blocks = {
    for role, actions in local.abac_path_actions : role => concat(
      [
        "(\n (\n  ${join("\n  AND\n  ", [for a in actions : local.abac_action_clause[a]])}\n )\n OR\n (\n  ${local.blob_path} StringStartsWith '${var.run_prefix}'\n )\n)",
        "(\n (\n  !(ActionMatches{'${local.blobs}/read'} AND SubOperationMatches{'Blob.List'})\n )\n OR\n (\n  @Request[${local.blobs}:prefix] StringStartsWith '${var.run_prefix}'\n )\n)",
      ],
      role == "trainer" ? [
        "(\n (\n  !(ActionMatches{'${local.blobs}/write'} AND SubOperationMatches{'Blob.Write.Tier'})\n )\n OR\n (\n  ${local.blob_path} StringNotStartsWith '${var.run_prefix}'\n )\n)",
      ] : [],
    )
  }
  abac_condition = { for role, blocks in local.abac_blocks : role => join("\nAND\n", blocks) }

  # Principals per role: the identity this module creates, plus any extra object IDs.
  assignments = merge(
    { "trainer/module" = { role = "trainer", principal_id = azurerm_user_assigned_identity.trainer.principal_id, type = "ServicePrincipal" } },
    { "janitor/module" = { role = "janitor", principal_id = azurerm_user_assigned_identity.janitor.principal_id, type = "ServicePrincipal" } },
    { for id in var.trainer_principal_ids : "trainer/${id}" => { role = "trainer", principal_id = id, type = null } },
    { for id in var.janitor_principal_ids : "janitor/${id}" => { role = "janitor", principal_id = id, type = null } },
  )

  tier_actions_set = anytrue([for d in [var.tier_to_cool_after_days, var.tier_to_cold_after_days, var.tier_to_archive_after_days] : d != null])
}

resource "azurerm_resource_group" "this" {
  count    = var.create_resource_group ? 1 : 0
  name     = var.resource_group_name
  location = var.location
  tags     = var.tags
}

data "azurerm_resource_group" "this" {
  count = var.create_resource_group ? 0 : 1
  name  = var.resource_group_name
}

# ---------------------------------------------------------------------------------------------
# Optional customer-managed key
# ---------------------------------------------------------------------------------------------
data "azurerm_key_vault_key" "cmk" {
  count        = var.customer_managed_key == null ? 0 : 1
  name         = var.customer_managed_key.key_name
  key_vault_id = var.customer_managed_key.key_vault_id
}

# The account's own (system-assigned) identity unwraps the key; it exists once the account does,
# so the key is attached in a second step (azurerm_storage_account_customer_managed_key).
resource "azurerm_role_assignment" "cmk" {
  count                = var.customer_managed_key == null ? 0 : 1
  scope                = data.azurerm_key_vault_key.cmk[0].resource_versionless_id
  role_definition_name = "Key Vault Crypto Service Encryption User"
  principal_id         = azurerm_storage_account.this.identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_storage_account_customer_managed_key" "this" {
  count              = var.customer_managed_key == null ? 0 : 1
  storage_account_id = azurerm_storage_account.this.id
  key_vault_id       = var.customer_managed_key.key_vault_id
  key_name           = var.customer_managed_key.key_name
  # no key_version: the account follows the key's latest version (automatic rotation)

  depends_on = [azurerm_role_assignment.cmk]
}

# ---------------------------------------------------------------------------------------------
# Storage account and container
# ---------------------------------------------------------------------------------------------
resource "azurerm_storage_account" "this" {
  # checkov:skip=CKV_AZURE_206:Checkpoints live next to the GPUs; ZRS keeps three synchronous zone-redundant copies. Geo-replication doubles the cost of every checkpoint and lags behind commits; set replication_type = "GZRS" where a regional outage must not lose a run.
  # checkov:skip=CKV_AZURE_59:Training nodes reach the account through VNet service endpoints / IP rules with the firewall defaulting to Deny (CKV_AZURE_35); a private-endpoint-only setup needs the caller's VNet and private DNS zone, set public_network_access_enabled = false then.
  # checkov:skip=CKV2_AZURE_33:Same reason as CKV_AZURE_59: private endpoints belong to the caller's network design; the firewall defaults to Deny.
  # checkov:skip=CKV_AZURE_33:No queues exist on this blob-only account. Classic queue logging (queue_properties) is a data-plane setting that needs shared keys and is unavailable with the provider's data_plane_available = false; blob-service resource logs go to the diagnostic setting below.
  name                     = var.storage_account_name
  resource_group_name      = local.resource_group_name
  location                 = var.location
  account_kind             = "StorageV2"
  account_tier             = "Standard"
  account_replication_type = var.replication_type
  access_tier              = "Hot"
  tags                     = var.tags

  # Transport and exposure
  https_traffic_only_enabled       = true
  min_tls_version                  = "TLS1_2"
  allow_nested_items_to_be_public  = false
  public_network_access_enabled    = var.public_network_access_enabled
  cross_tenant_replication_enabled = false
  allowed_copy_scope               = "AAD"

  # Identity: Entra ID (RBAC + ABAC) only. Training nodes use managed identities through
  # azure-identity's DefaultAzureCredential; no account keys, no key-signed SAS, no local users.
  shared_access_key_enabled       = false
  default_to_oauth_authentication = true
  local_user_enabled              = false
  sftp_enabled                    = false
  is_hns_enabled                  = false

  # Encryption at rest: always on (AES-256); infrastructure encryption adds a second layer with
  # a separate key. Optionally a customer-managed key for the service layer.
  infrastructure_encryption_enabled = true

  # System-assigned identity: used only to unwrap the optional customer-managed key.
  identity {
    type = "SystemAssigned"
  }

  # User-delegation SAS (the only kind left with keys off) valid for more than a day are logged.
  sas_policy {
    expiration_period = "01.00:00:00"
  }

  network_rules {
    default_action             = var.network_default_action
    bypass                     = ["AzureServices", "Logging", "Metrics"]
    ip_rules                   = var.allowed_ip_ranges
    virtual_network_subnet_ids = var.allowed_subnet_ids
  }

  blob_properties {
    versioning_enabled = var.blob_versioning_enabled

    # Deletes by cloudckpt (retention: manifest first, then data; GC) stay recoverable for
    # this long. Overwrites too (as soft-deleted snapshots).
    delete_retention_policy {
      days = var.blob_soft_delete_days
    }

    container_delete_retention_policy {
      days = var.container_soft_delete_days
    }
  }
}

resource "azurerm_storage_container" "checkpoints" {
  # checkov:skip=CKV2_AZURE_21:Checkov looks for azurerm_log_analytics_storage_insights (classic Storage Analytics), which authenticates with the account key, and keys are disabled here. Blob reads/writes/deletes are logged by the resource-log diagnostic setting below (StorageRead/StorageWrite/StorageDelete) when log_analytics_workspace_id is set.
  name                  = var.container_name
  storage_account_id    = azurerm_storage_account.this.id
  container_access_type = "private"
}

# ---------------------------------------------------------------------------------------------
# Lifecycle management
#
# Uncommitted blocks (a node that died between Put Block and Put Block List) are not blobs:
# the service discards them one week after the last block was staged. There is nothing to
# abort and no rule for it; cloudckpt's GC has nothing to list there either.
#
# No rule deletes a current blob: which checkpoints live is cloudckpt's retention policy's
# decision alone. Tiering cannot exclude manifests (filters are prefix and index tags only),
# which is why Archive (offline) is off by default; Cool and Cold stay online.
# ---------------------------------------------------------------------------------------------
resource "azurerm_storage_management_policy" "this" {
  count              = local.tier_actions_set || var.blob_versioning_enabled ? 1 : 0
  storage_account_id = azurerm_storage_account.this.id

  dynamic "rule" {
    for_each = local.tier_actions_set ? [1] : []
    content {
      name    = "tier-checkpoints-by-age"
      enabled = true
      filters {
        blob_types   = ["blockBlob"]
        prefix_match = ["${var.container_name}/${var.run_prefix}"]
      }
      actions {
        base_blob {
          tier_to_cool_after_days_since_modification_greater_than    = var.tier_to_cool_after_days
          tier_to_cold_after_days_since_modification_greater_than    = var.tier_to_cold_after_days
          tier_to_archive_after_days_since_modification_greater_than = var.tier_to_archive_after_days
        }
      }
    }
  }

  dynamic "rule" {
    for_each = var.blob_versioning_enabled ? [1] : []
    content {
      name    = "expire-previous-versions"
      enabled = true
      filters {
        blob_types   = ["blockBlob"]
        prefix_match = ["${var.container_name}/"]
      }
      actions {
        version {
          delete_after_days_since_creation = var.noncurrent_version_days
        }
        snapshot {
          delete_after_days_since_creation_greater_than = var.noncurrent_version_days
        }
      }
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Blob-service resource logs (reads, writes, deletes) to Log Analytics
# ---------------------------------------------------------------------------------------------
resource "azurerm_monitor_diagnostic_setting" "blob" {
  count                      = var.log_analytics_workspace_id == null ? 0 : 1
  name                       = "cloudckpt-blob-logs"
  target_resource_id         = "${azurerm_storage_account.this.id}/blobServices/default"
  log_analytics_workspace_id = var.log_analytics_workspace_id

  enabled_log {
    category = "StorageRead"
  }
  enabled_log {
    category = "StorageWrite"
  }
  enabled_log {
    category = "StorageDelete"
  }
}

# ---------------------------------------------------------------------------------------------
# Identities, custom roles and prefix-conditioned role assignments on the container
# ---------------------------------------------------------------------------------------------
resource "azurerm_user_assigned_identity" "trainer" {
  name                = "${var.storage_account_name}-trainer"
  resource_group_name = local.resource_group_name
  location            = var.location
  tags                = var.tags
}

resource "azurerm_user_assigned_identity" "janitor" {
  name                = "${var.storage_account_name}-janitor"
  resource_group_name = local.resource_group_name
  location            = var.location
  tags                = var.tags
}

# Narrower than Storage Blob Data Contributor: no delete for the trainer, and neither role can
# delete blob versions, permanently delete soft-deleted blobs, change ACLs/ownership, or
# touch tags and immutability policies.
resource "azurerm_role_definition" "trainer" {
  name        = "cloudckpt trainer (${var.storage_account_name}/${var.container_name})"
  scope       = local.resource_group_id
  description = "cloudckpt training nodes: read, list and write checkpoint blobs; no delete."
  permissions {
    actions = ["Microsoft.Storage/storageAccounts/blobServices/containers/read"]
    data_actions = [
      "${local.blobs}/read",       # Get Blob (ranged), Get Blob Properties, List Blobs
      "${local.blobs}/write",      # Put Blob, Put Block, Put Block List (overwrite included)
      "${local.blobs}/add/action", # create a new blob
    ]
  }
  assignable_scopes = [local.resource_group_id]
}

resource "azurerm_role_definition" "janitor" {
  name        = "cloudckpt janitor (${var.storage_account_name}/${var.container_name})"
  scope       = local.resource_group_id
  description = "cloudckpt retention / archival / GC: trainer rights plus delete and Set Blob Tier."
  permissions {
    actions = ["Microsoft.Storage/storageAccounts/blobServices/containers/read"]
    data_actions = [
      "${local.blobs}/read",
      "${local.blobs}/write", # includes Set Blob Tier (suboperation Blob.Write.Tier)
      "${local.blobs}/add/action",
      "${local.blobs}/delete", # soft delete only; permanentDelete is not granted
    ]
  }
  assignable_scopes = [local.resource_group_id]
}

resource "azurerm_role_assignment" "data" {
  for_each           = local.assignments
  scope              = local.container_id
  role_definition_id = each.value.role == "trainer" ? azurerm_role_definition.trainer.role_definition_resource_id : azurerm_role_definition.janitor.role_definition_resource_id
  principal_id       = each.value.principal_id
  principal_type     = each.value.type
  description        = "cloudckpt ${each.value.role}: ${var.container_name}/${var.run_prefix} only"
  condition_version  = "2.0"
  condition          = local.abac_condition[each.value.role]
}
