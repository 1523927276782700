terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Written and validated against 5.100. 6.x renames a few attributes this module reads
      # (aws_region.name); widen the pin only after a plan against it.
      version = ">= 5.100.0, < 6.0.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "managed-by" = "terraform", "app" = "cloudckpt" }, var.tags)
  }
}
