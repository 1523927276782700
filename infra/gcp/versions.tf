terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.x: lifecycle conditions send age = 0 only when asked (send_age_if_zero), and
      # soft_delete_policy / public_access_prevention are available.
      version = ">= 6.0.0, < 7.0.0"
    }
  }
}

provider "google" {
  project = var.project_id
}
