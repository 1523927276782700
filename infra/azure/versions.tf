terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.9+: azurerm_storage_container takes storage_account_id (created through Azure
      # Resource Manager) and the storage.data_plane_available feature exists, so nothing
      # needs shared keys or a path through the storage firewall.
      version = ">= 4.9.0, < 5.0.0"
    }
  }
}

provider "azurerm" {
  subscription_id = var.subscription_id # null: ARM_SUBSCRIPTION_ID / az login default

  features {
    storage {
      # Everything here is managed through Azure Resource Manager. Without this the provider
      # probes the account's queue / static-website data plane, which fails once shared keys
      # are off and the storage firewall denies the operator's address.
      data_plane_available = false
    }
  }

  # Shared keys are disabled on the account: should the provider ever call the data plane,
  # it must use Entra ID.
  storage_use_azuread = true
}
