"""How one request reaches a deployment, internal.

The HTTP transport, credentials, the pool of deployments, the quota limiter, the retry
policy and the token estimate.
"""
