"""NftDriver implementations: real (libnftables), in another namespace, and fake."""
