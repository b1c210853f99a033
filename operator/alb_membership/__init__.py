"""alb-membership-operator: takes terminating pods out of Alibaba Cloud ALB server groups at once."""

__version__ = "0.1.0"
