output "storage_account_name" {
  description = "Storage account name (AZURE_STORAGE_ACCOUNT_NAME for cloudckpt / adlfs)."
  value       = azurerm_storage_account.this.name
}

output "storage_account_id" {
  description = "Storage account resource ID."
  value       = azurerm_storage_account.this.id
}

output "container" {
  description = "Checkpoint container name."
  value       = azurerm_storage_container.checkpoints.name
}

output "run_root_uri" {
  description = "Prefix to hand to cloudckpt: append a run name, e.g. CheckpointManager(\"<run_root_uri>exp1\")."
  value       = "az://${azurerm_storage_container.checkpoints.name}/${var.run_prefix}"
}

output "blob_endpoint" {
  description = "Blob service endpoint of the account."
  value       = azurerm_storage_account.this.primary_blob_endpoint
}

output "trainer_identity" {
  description = "Trainer user-assigned managed identity: attach it to training VMs / VMSS / AKS workload identity; set AZURE_CLIENT_ID to client_id."
  value = {
    id           = azurerm_user_assigned_identity.trainer.id
    client_id    = azurerm_user_assigned_identity.trainer.client_id
    principal_id = azurerm_user_assigned_identity.trainer.principal_id
  }
}

output "janitor_identity" {
  description = "Janitor user-assigned managed identity (retention / archival / GC job)."
  value = {
    id           = azurerm_user_assigned_identity.janitor.id
    client_id    = azurerm_user_assigned_identity.janitor.client_id
    principal_id = azurerm_user_assigned_identity.janitor.principal_id
  }
}

output "trainer_role_definition_id" {
  description = "Custom role of the trainer (assign it with output abac_conditions.trainer to other principals)."
  value       = azurerm_role_definition.trainer.role_definition_resource_id
}

output "janitor_role_definition_id" {
  description = "Custom role of the janitor."
  value       = azurerm_role_definition.janitor.role_definition_resource_id
}

output "abac_conditions" {
  description = "The role-assignment conditions (version 2.0) that confine each role to the run prefix."
  value       = local.abac_condition
}
