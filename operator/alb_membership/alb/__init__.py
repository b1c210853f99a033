"""Everything that talks to the Alibaba Cloud ALB API (2020-06-16)."""
